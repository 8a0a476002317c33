"""The segmentation job: a Zarr (or TIFF) mosaic in, a stitched OME-Zarr label image out, on Ray.

Driver side only: it validates every input before writing anything, plans blocks lazily, hands block
coordinates (never pixels) to workers, builds the pyramid in rounds, and marks each output complete last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import fsspec
import numpy as np

from unet.cli import EXIT_OK, add_debug_flag, run
from unet.errors import UNetError
from unet.io.georef import affine_transform
from unet.io.output import OutputSpec, check_writable, done_keys, read_unet_attrs
from unet.io.source import Source, SourceSpec, open_source
from unet.io.urls import is_inside, parse_storage_options, redact, resolve_storage_options
from unet.job.actor import JobSpec
from unet.job.objects.driver import object_classes, objects_spec
from unet.job.plan import BlockPlan, check_block_size
from unet.job.pyramid import level_plan
from unet.job.roi import RegionOfInterest, load_roi
from unet.nn.checkpoint import load_checkpoint, read_checkpoint_bytes
from unet.nn.model import UNet

EXIT_PARTIAL = 3
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
    min_area: int = 0

    @property
    def block_size(self) -> int:
        """Default: 4 writing units a side, so that halos re-decode few neighbouring chunks."""
        return self.block or 4 * (self.shard or self.chunk)


@dataclass
class PreparedJob:
    """One INPUT -> OUTPUT pair, validated; nothing written yet."""

    spec: JobSpec
    source: Source
    plan: BlockPlan
    fingerprint: dict
    existing: dict | None
    done: set[str] = field(default_factory=set)
    failed: list[dict] = field(default_factory=list)
    pixels_done: int = 0
    roi: RegionOfInterest | None = None
    skipped: dict[str, int] = field(default_factory=lambda: {"empty": 0, "roi": 0})  # blocks not run, by reason
    label_name: str | None = None  # set when writing INPUT/labels/NAME of an OME-Zarr image
    object_counts: dict[str, int] | None = None  # --objects: objects per class, once merged

    @property
    def complete(self) -> bool:
        return (self.existing or {}).get("status") == "complete"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    g.add_argument("--objects", action="store_true", help="also label objects (8-connected pixels of one "
                   "class) with ids unique across the mosaic: OUTPUT/instances, objects.parquet, and "
                   "objects.geojson for georeferenced inputs")
    g.add_argument("--object-classes", metavar="C,C", help="classes whose pixels form objects, as indices or "
                                                           "the checkpoint's class names (default: all but 0)")
    g.add_argument("--min-area", type=int, default=0, metavar="PX", help="drop objects of fewer pixels "
                                                                          "(default 0: keep all)")
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
    a = build_parser().parse_args(argv)
    return SegmentOptions(
        pairs=_pairs(a), checkpoint=a.checkpoint, level=a.level, axes=a.axes, chunk=a.chunk, shard=a.shard,
        block=a.block, tile=a.tile, batch_size=a.batch_size, workers=a.workers, gpus_per_worker=a.gpus_per_worker,
        cpus_per_worker=a.cpus_per_worker, device=a.device, amp=a.amp, compile=a.compile, probabilities=a.probabilities,
        overwrite=a.overwrite, as_label=a.as_label, input_range=_range(a.input_range), roi=a.roi,
        storage_options=parse_storage_options(a.storage_option), dry_run=a.dry_run, report=a.report,
        block_timeout=a.block_timeout, max_retries=a.max_retries, progress=a.progress, **_object_options(a))


def _object_options(a: argparse.Namespace) -> dict:
    if not a.objects and (a.object_classes is not None or a.min_area):
        given = "--object-classes" if a.object_classes is not None else "--min-area"
        raise UNetError(f"{given}: expected together with --objects, found it alone; add --objects")
    if a.min_area < 0:
        raise UNetError(f"--min-area: expected a number of pixels >= 0, found {a.min_area}")
    return {"objects": a.objects, "object_classes": a.object_classes, "min_area": a.min_area}


def _pairs(a: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    if a.manifest:
        if a.input:
            raise UNetError("--manifest: expected either --manifest or INPUT OUTPUT, found both")
        pairs = tuple(read_manifest(a.manifest, parse_storage_options(a.storage_option)))
        if a.roi and len(pairs) > 1:
            raise UNetError(f"--roi: expected one input to cover, found a manifest of {len(pairs)} inputs; "
                            "run each input with its own --roi")
        return pairs
    if not a.input:
        raise UNetError("INPUT: expected an input image (or --manifest), found none")
    if a.as_label:
        if a.output:
            raise UNetError(f"--as-label {a.as_label}: expected no OUTPUT (it goes to INPUT/labels/NAME), "
                            f"found {redact(a.output)}")
        return ((a.input, ""),)  # the label location depends on the image's layout: see prepare_job
    if not a.output:
        raise UNetError("OUTPUT: expected an output location after INPUT, found none")
    return ((a.input, a.output),)


def _range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UNetError(f"--input-range: expected LO,HI (e.g. 0,65535), found {text!r}") from None
    if not hi > lo:
        raise UNetError(f"--input-range: expected LO < HI, found {text!r}")
    return lo, hi


def read_manifest(url: str, storage_options: dict) -> Iterator[tuple[str, str]]:
    try:
        with fsspec.open(url, "rt", **resolve_storage_options(url, storage_options)) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise UNetError(f"--manifest {redact(url)}: file not found") from None
    pairs = []
    for number, line in enumerate(lines, start=1):
        words = line.split("#")[0].split()
        if not words:
            continue
        if len(words) != 2:
            raise UNetError(f"--manifest {redact(url)} line {number}: expected 'INPUT OUTPUT', "
                            f"found {len(words)} field(s)")
        pairs.append((words[0], words[1]))
    if not pairs:
        raise UNetError(f"--manifest {redact(url)}: expected at least one 'INPUT OUTPUT' line, found none")
    return iter(pairs)


# -- preparing a job: validation only, nothing written ---------------------------------------------

def prepare_job(opts: SegmentOptions, pair: tuple[str, str], model: UNet, checkpoint_sha: str,
                class_names: Sequence[str]) -> PreparedJob:
    in_url, out_url = pair
    so_in = resolve_storage_options(in_url, opts.storage_options)
    so_out = resolve_storage_options(out_url, opts.storage_options)
    source = open_source(SourceSpec(in_url, opts.level, opts.axes, storage_options=so_in))
    check_contract(source, model, opts.input_range)
    if opts.as_label:
        if not source.is_ome:
            raise UNetError(f"--as-label: expected an OME-Zarr image as INPUT, found {redact(in_url)} "
                            "(a plain array or TIFF has no labels/ group)")
        out_url = "/".join(p for p in (in_url.rstrip("/"), source.ome_path, "labels", opts.as_label) if p)
        so_out = so_in
    if not opts.as_label and is_inside(out_url, in_url):
        raise UNetError(f"OUTPUT {redact(out_url)}: expected a location outside INPUT {redact(in_url)}, "
                        "found it inside (use --as-label NAME to write labels into an OME-Zarr image)")
    check_block_size(opts.block_size, opts.chunk, opts.shard)
    out = OutputSpec(out_url, source.shape, opts.chunk, opts.shard, model.config.num_classes,
                     opts.probabilities, storage_options=so_out)
    objects = (objects_spec(out, object_classes(opts.object_classes, class_names), opts.min_area,
                            affine_transform(source.georef) is not None) if opts.objects else None)
    fingerprint = {"checkpoint_sha256": checkpoint_sha, "input": redact(in_url), "level": opts.level or 0,
                   "axes": opts.axes, "shape": list(source.shape), "chunk": opts.chunk, "shard": opts.shard,
                   "block": opts.block_size, "probabilities": opts.probabilities,
                   "input_range": list(opts.input_range) if opts.input_range else None,
                   "objects": objects.fingerprint if objects else None,
                   "roi": redact(opts.roi) if opts.roi else None}
    roi = load_roi(opts.roi, resolve_storage_options(opts.roi, opts.storage_options), source.shape) \
        if opts.roi else None
    existing = read_unet_attrs(out)
    if existing is not None and not opts.overwrite:
        _check_resumable(out_url, existing, fingerprint)
    existing = None if opts.overwrite else existing
    return PreparedJob(JobSpec(source.spec, out, opts.input_range, objects), source,
                       level_plan(out, 0, opts.block_size), fingerprint, existing,
                       label_name=opts.as_label, roi=roi, object_counts=(existing or {}).get("objects"))


def check_contract(source: Source, model: UNet, input_range: tuple[float, float] | None) -> None:
    """The input must have the channels, and the dtype, that the model was trained on."""
    contract, name = model.config.input, redact(source.spec.url)
    if source.channels != contract.channels:
        raise UNetError(f"input {name}: expected {contract.channels} channel(s) as the checkpoint was trained "
                        f"on, found {source.channels} (shape {source.shape}, check --axes)")
    trained = np.dtype(contract.dtype)
    if input_range is None and np.issubdtype(trained, np.integer) and source.dtype != trained:
        raise UNetError(f"input {name}: expected dtype {trained} as the checkpoint was trained on, found "
                        f"{source.dtype}; pass --input-range LO,HI to rescale it")
    if input_range is not None and contract.value_range is None:
        raise UNetError("--input-range: the checkpoint records no trained value range to rescale onto")


def _check_resumable(url: str, existing: dict, fingerprint: dict) -> None:
    if not existing:
        raise UNetError(f"OUTPUT {redact(url)}: expected a new location or an output of this job, found "
                        "something else there; pass --overwrite to replace it")
    before = existing.get("fingerprint", {})
    differs = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
    if differs:
        raise UNetError(f"OUTPUT {redact(url)}: expected an output of the same checkpoint and options to "
                        f"resume, found one that differs in {', '.join(differs)}; pass --overwrite to replace it")


# -- the run ----------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; returns the exit code (0 complete, 2 bad input, 3 some blocks failed)."""
    from unet.job.driver import run_jobs

    opts = parse_options(sys.argv[1:] if argv is None else argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    data = read_checkpoint_bytes(opts.checkpoint, resolve_storage_options(opts.checkpoint, opts.storage_options))
    model, metadata = load_checkpoint(data, name=redact(opts.checkpoint))
    sha = hashlib.sha256(data).hexdigest()
    class_names = list(metadata.get("class_names") or [f"class {k}" for k in range(model.config.num_classes)])
    jobs = [prepare_job(opts, pair, model, sha, class_names) for pair in opts.pairs]
    if opts.dry_run:
        print_plan(jobs, model, opts)
        return EXIT_OK
    for job in jobs:
        if not job.complete:
            check_writable(job.spec.output)
            job.done = done_keys(job.spec.output) if job.existing is not None else set()
            job.pixels_done = sum(b.pixels for b in job.plan if b.key in job.done)
    todo = [job for job in jobs if not job.complete]
    stats = run_jobs(todo, opts, data, class_names, provenance(opts, model, sha, started)) if todo else {}
    report = build_report(jobs, stats)
    if opts.report:
        write_report(opts.report, report, jobs)
    print(summary_line(report), file=sys.stderr)
    return EXIT_PARTIAL if report["failed_blocks"] else EXIT_OK


def provenance(opts: SegmentOptions, model: UNet, checkpoint_sha: str, started: str) -> dict:
    """What produced the output, without secrets: storage options are never recorded."""
    import ray
    import torch
    import zarr

    from unet import __version__

    options = {k: v for k, v in vars(opts).items() if k not in ("storage_options", "pairs", "checkpoint")}
    return {"started_at": started, "checkpoint": redact(opts.checkpoint), "checkpoint_sha256": checkpoint_sha,
            "model": model.config.to_dict(), "options": json.loads(json.dumps(options, default=str)),
            "versions": {"unet": __version__, "torch": torch.__version__, "zarr": zarr.__version__,
                         "ray": ray.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}}


def print_plan(jobs: list[PreparedJob], model: UNet, opts: SegmentOptions) -> None:
    """The plan of a dry run: blocks, tiles, margin overhead and estimated FLOPs; no pixel is read."""
    from unet.infer.predict import TilePredictor
    from unet.infer.tiling import tile_origins
    from unet.job.plan import network_flops

    predictor = TilePredictor(model, tile=opts.tile, device="cpu")
    flops = network_flops(model, predictor.tile)
    for job in jobs:
        h, w = job.source.shape
        n_tiles = 1
        for axis in (0, 1):
            n_tiles *= sum(len(tile_origins(*span, predictor.out_tile, predictor.grid))
                           for span in job.plan.spans(axis))
        overhead = predictor.tile ** 2 / predictor.out_tile ** 2 - 1
        print(f"{redact(job.spec.source.url)} -> {redact(job.spec.output.url)}\n"
              f"  image {h} x {w} px, {job.source.channels} channel(s), {job.source.dtype}\n"
              f"  blocks: {len(job.plan)} of {job.plan.block} px ({job.plan.grid[0]} x {job.plan.grid[1]})\n"
              f"  tiles: {n_tiles} of {predictor.tile} px in -> {predictor.out_tile} px out "
              f"(margin overhead {overhead:.0%}), {flops / 1e9:.1f} GFLOP each, {n_tiles * flops / 1e12:.2f} TFLOP total\n"
              f"  output levels: {len(job.spec.output.level_shapes)}, chunk {opts.chunk}"
              + (f", shard {opts.shard}" if opts.shard else "")
              + ("  [already complete]" if job.complete else ""))


def build_report(jobs: list[PreparedJob], stats: dict) -> dict:
    outputs = [{"input": redact(j.spec.source.url), "output": redact(j.spec.output.url),
                "status": "complete" if j.complete or not j.failed else "incomplete",
                "shape": list(j.source.shape), "blocks": len(j.plan), "blocks_skipped_empty": j.skipped["empty"],
                "blocks_outside_roi": j.skipped["roi"], "failed": j.failed,
                **({"objects": j.object_counts} if j.object_counts is not None else {})} for j in jobs]
    return {"outputs": outputs, "failed_blocks": sum(len(j.failed) for j in jobs),
            "blocks_skipped_empty": sum(j.skipped["empty"] for j in jobs),
            "blocks_outside_roi": sum(j.skipped["roi"] for j in jobs), **stats}


def write_report(path: str, report: dict, jobs: list[PreparedJob]) -> None:
    """The JSON report, and a PNG quicklook of each finished output's lowest level beside it."""
    from unet.io.quicklook import save_quicklook
    from unet.job.driver import lowest_level

    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    stem = os.path.splitext(path)[0]
    for index, job in enumerate(jobs):
        if not job.failed:
            save_quicklook(lowest_level(job), f"{stem}.png" if len(jobs) == 1 else f"{stem}-{index}.png")


def summary_line(report: dict) -> str:
    done = sum(o["status"] == "complete" for o in report["outputs"])
    rate = f", {report['mpx_per_s']:.2f} Mpx/s" if "mpx_per_s" in report else ""
    failed = f", {report['failed_blocks']} block(s) failed" if report["failed_blocks"] else ""
    counts = Counter()
    for output in report["outputs"]:
        counts.update(output.get("objects", {}))
    objects = ", objects: " + ", ".join(f"{n} {name}" for name, n in counts.items()) if counts else ""
    return f"unet: {done}/{len(report['outputs'])} output(s) complete{rate}{failed}{objects}"


if __name__ == "__main__":
    sys.exit(run(main))
