"""The job's options: one frozen ``SegmentOptions`` for a whole run, built by the command line's parser
(``parse_options``) or directly from Python (``SegmentOptions.of``) and checked the same way."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from unet.cli import ArgumentParser, add_debug_flag
from unet.errors import UNetError, redact, remember_argv_secrets
from unet.io.urls import check_storage_options, check_url, parse_storage_options
from unet.job.limits import check_options
from unet.job.manifest import read_manifest

DEFAULT_CHUNK = 1024


@dataclass(frozen=True)
class SegmentOptions:
    """The command line, as parsed; one frozen value for the whole run."""

    pairs: tuple[tuple[str, str], ...]
    checkpoint: str
    level: int | None = None
    axes: str | None = None
    chunk: int = DEFAULT_CHUNK
    shard: int | None = None
    block: int | None = None
    tile: int | None = None
    batch_size: int | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    device: str | None = None
    amp: bool | None = None
    compile: bool = False
    probabilities: bool = False
    overwrite: bool = False
    as_label: str | None = None
    input_range: tuple[float, float] | None = None
    roi: str | None = None
    storage_options: dict = field(default_factory=dict, repr=False)
    dry_run: bool = False
    report: str | None = None
    block_timeout: float = 1800.0
    max_retries: int = 2
    progress: bool | None = None
    objects: bool = False
    object_classes: str | None = None  # as given; resolved against the checkpoint's classes in prepare_job
    min_area: int | None = None  # None: the checkpoint's min_area (from its training objects), else 0
    tta: int = 1  # test-time flips averaged: 1 (none), 4 (mirrors) or 8 (the square's symmetries)
    cog: str | None = None  # also write the class image as a Cloud-Optimized GeoTIFF here

    def __post_init__(self) -> None:
        """Every option's range (``unet.job.limits``), and what no single option shows on its own."""
        check_options(self)
        if not self.objects and (self.object_classes is not None or self.min_area is not None):
            given = "--object-classes" if self.object_classes is not None else "--min-area"
            raise UNetError(f"{given}: expected together with --objects, found it alone; add --objects")
        if self.min_area is not None and self.min_area < 0:
            raise UNetError(f"--min-area: expected a number of pixels >= 0, found {self.min_area}")
        for flag, value in (("--roi", self.roi), ("--cog", self.cog)):
            if value and len(self.pairs) > 1:
                raise UNetError(f"{flag}: expected one input to cover, found a manifest of {len(self.pairs)} "
                                f"inputs; run each input with its own {flag}")
        if self.tta not in (1, 4, 8):
            raise UNetError(f"--tta: expected 4 or 8 flips (1: none), found {self.tta}")
        if self.input_range is not None:
            lo, hi = self.input_range
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise UNetError(f"--input-range: expected finite LO,HI, found '{lo:g},{hi:g}'")
            if not hi > lo:
                raise UNetError(f"--input-range: expected LO < HI, found '{lo:g},{hi:g}'")
        if self.as_label is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.as_label):
            raise UNetError(f"--as-label: expected a name of letters, digits, '.', '_' or '-' (it names a folder "
                            f"in INPUT/labels), found {self.as_label[:40]!r}")

    @classmethod
    def of(cls, input: str | os.PathLike, output: str | os.PathLike, checkpoint: str | os.PathLike,
           **options: Any) -> SegmentOptions:
        """One INPUT -> OUTPUT pair, the other options by name: ``SegmentOptions.of(in, out, ckpt, chunk=512)``."""
        return cls(pairs=((os.fspath(input), os.fspath(output)),), checkpoint=os.fspath(checkpoint), **options)

    @property
    def block_size(self) -> int:
        """Default: 4 writing units a side, so that halos re-decode few neighbouring chunks."""
        return self.block or 4 * (self.shard or self.chunk)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="segment.py",
        description="Segment a huge 2-D image (Zarr array, OME-Zarr, TIFF/SVS; local, s3:// or any fsspec URL) "
                    "with a trained U-Net on a Ray cluster, and write the stitched labels as an OME-Zarr label "
                    "image. Re-running the same command resumes an interrupted run.",
        epilog="example: python jobs/segment.py slide.zarr slide-labels.zarr --checkpoint model.safetensors\n"
               "exit codes: 0 complete, 2 bad input (nothing written), 3 some blocks failed (see --report)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", help="input image: Zarr array/group, OME-Zarr, or TIFF (path or URL)")
    p.add_argument("output", nargs="?", help="output OME-Zarr group to create or resume (path or URL)")
    p.add_argument("--checkpoint", required=True, help="trained model (.safetensors; path or URL)")
    p.add_argument("--manifest", help="file (path or URL) with one 'INPUT OUTPUT' pair per line, instead of "
                                      "INPUT OUTPUT: many images in one run with one worker pool")
    g = p.add_argument_group("input")
    g.add_argument("--level", type=int, help="pyramid level of the input to segment (default 0)")
    g.add_argument("--axes", help="axes of a plain array: yx, cyx or yxc (OME-Zarr and TIFF know theirs)")
    g.add_argument("--input-range", help="LO,HI: rescale this input from [LO, HI] to the value range the "
                                         "model was trained on (e.g. 0,65535 for uint16 on a uint8 model)")
    g.add_argument("--roi", metavar="URL", help="low-resolution mask of the regions worth segmenting (2-D "
                                                "Zarr array or PNG/TIFF/JPEG; non-zero = of interest), "
                                                "stretched over the input; blocks with no pixel of interest "
                                                "are written as background (class 0) without being run")
    g = p.add_argument_group("output")
    g.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="output chunk size in pixels (default 1024)")
    g.add_argument("--shard", type=int, help="output shard size in pixels (a multiple of --chunk)")
    g.add_argument("--probabilities", action="store_true", help="also write float16 softmax probabilities")
    g.add_argument("--as-label", metavar="NAME", help="write into INPUT/labels/NAME of an OME-Zarr image "
                                                      "(OUTPUT is then omitted)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output")
    g.add_argument("--objects", action="store_true", help="also label objects with ids unique across the "
                   "mosaic (a contour checkpoint's interiors grown over their boundaries, else 8-connected "
                   "pixels of one class): OUTPUT/instances, objects.parquet, and objects.geojson for "
                   "georeferenced inputs")
    g.add_argument("--object-classes", metavar="C,C", help="classes whose pixels form objects, as indices or "
                                                           "the checkpoint's class names (default: all but 0)")
    g.add_argument("--min-area", type=int, metavar="PX", help="drop objects of fewer pixels (default: the "
                   "checkpoint's min_area, chosen from its training objects; 0 keeps all)")
    g.add_argument("--cog", metavar="PATH", help="also write the class image as a Cloud-Optimized GeoTIFF "
                   "(path or URL, .tif), in the input's CRS, once the output is complete; with --objects "
                   "also the instance image as PATH-instances.tif")
    g.add_argument("--tta", type=int, nargs="?", const=4, default=1, choices=(4, 8), metavar="4|8",
                   help="test-time flips: average the probabilities of the horizontally and vertically "
                        "mirrored images (4), or of all 8 symmetries of the square (--tta 8); exact, and "
                        "4 or 8 times the network's work")
    g = p.add_argument_group("execution")
    g.add_argument("--block", type=int, help="pixels per block side, a multiple of the chunk (or shard); "
                                             "default 4 chunks")
    g.add_argument("--tile", type=int, help="network input size in pixels (572 for the paper's tile); "
                                            "default: the largest valid tile within memory")
    g.add_argument("--batch-size", type=int, help="tiles per forward pass (default: by memory)")
    g.add_argument("--workers", type=int, help="number of workers (default: one per GPU, else one per "
                                               "--cpus-per-worker cores)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (default 0: CPU)")
    g.add_argument("--cpus-per-worker", type=float, help="CPU cores per worker (default: 4, or all if fewer)")
    g.add_argument("--device", help="torch device for workers (default: cuda if the worker has a GPU)")
    g.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile (pays off on long GPU runs; slow start)")
    g.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                   help="float32 on GPU instead of bf16 autocast (bit-exact seams)")
    g.add_argument("--block-timeout", type=float, default=1800.0, help="seconds before a block is retried")
    g.add_argument("--max-retries", type=int, default=2, help="retries of a block that raised an error")
    g.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec storage option, repeatable (e.g. client_kwargs.endpoint_url=http://...)")
    g = p.add_argument_group("reporting")
    g.add_argument("--dry-run", action="store_true", help="print the plan and exit without reading pixels")
    g.add_argument("--report", help="write the run's summary as JSON here (and a PNG quicklook beside it)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="plain log lines instead of a progress bar")
    add_debug_flag(p)
    return p


def parse_options(argv: Sequence[str]) -> SegmentOptions:
    """The command line as one frozen value; every URL and option checked, nothing opened but the manifest.
    Secrets in ``argv`` are noted first, so that even a parse error that echoes one is redacted."""
    remember_argv_secrets(argv)
    a = build_parser().parse_args(argv)
    storage_options = parse_storage_options(a.storage_option)
    check_storage_options(storage_options)
    check_url(a.checkpoint, "--checkpoint")
    for flag, url in (("--roi", a.roi), ("--cog", a.cog)):
        if url:
            check_url(url, flag, output=flag == "--cog")
    return SegmentOptions(
        pairs=_pairs(a, storage_options), checkpoint=a.checkpoint, level=a.level, axes=a.axes, chunk=a.chunk, shard=a.shard,
        block=a.block, tile=a.tile, batch_size=a.batch_size, workers=a.workers, gpus_per_worker=a.gpus_per_worker,
        cpus_per_worker=a.cpus_per_worker, device=a.device, amp=a.amp, compile=a.compile, probabilities=a.probabilities,
        overwrite=a.overwrite, as_label=a.as_label, input_range=_range(a.input_range), roi=a.roi,
        storage_options=storage_options, dry_run=a.dry_run, report=a.report,
        block_timeout=a.block_timeout, max_retries=a.max_retries, progress=a.progress, objects=a.objects,
        object_classes=a.object_classes, min_area=a.min_area, tta=a.tta, cog=a.cog)


def _pairs(a: argparse.Namespace, storage_options: dict) -> tuple[tuple[str, str], ...]:
    if a.manifest:
        if a.input:
            raise UNetError("--manifest: expected either --manifest or INPUT OUTPUT, found both")
        check_url(a.manifest, "--manifest")
        return read_manifest(a.manifest, storage_options)
    if not a.input:
        raise UNetError("INPUT: expected an input image (or --manifest), found none")
    check_url(a.input, "INPUT")
    if a.as_label:
        if a.output:
            raise UNetError(f"--as-label {a.as_label}: expected no OUTPUT (it goes to INPUT/labels/NAME), "
                            f"found {redact(a.output)}")
        return ((a.input, ""),)  # the label location depends on the image's layout: see prepare_job
    if not a.output:
        raise UNetError("OUTPUT: expected an output location after INPUT, found none")
    check_url(a.output, "OUTPUT", output=True)
    return ((a.input, a.output),)


def _range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UNetError(f"--input-range: expected LO,HI (e.g. 0,65535), found {text[:40]!r}") from None
    return lo, hi

