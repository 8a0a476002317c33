"""--cog: a finished output's class image (and with --objects its instance image) also as Cloud-Optimized
GeoTIFFs, in the input's CRS and transform. The driver writes them after the Zarr output is complete and
records each in the output's ``unet`` attributes; a re-run leaves a recorded COG that is still there alone.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass

from unet.errors import UNetError, redact
from unet.io.cog import CogSpec, cog_exists, write_cog
from unet.io.georef import crs_name, level_transform
from unet.io.ome import class_colors
from unet.io.output import OutputSpec, read_unet_attrs, update_unet_attrs
from unet.io.urls import resolve_storage_options
from unet.job.prepare import PreparedJob
from unet.job.spec import BlockFailure


@dataclass(frozen=True)
class CogOutput:
    """One COG to write: where, and from which label image of the output."""

    cog: CogSpec
    image: OutputSpec
    kind: str  # "classes" or "instances"


def cog_outputs(job: PreparedJob, url: str, storage_options: dict) -> list[CogOutput]:
    """The COGs of ``job``: its classes at ``url``; with --objects its instances beside (NAME-instances.tif)."""
    source, out = job.source, job.spec.output
    transform, crs = level_transform(source.georef, source.scale), crs_name(source.georef)
    options = resolve_storage_options(url, storage_options)
    outputs = [CogOutput(CogSpec(url, transform, crs, class_colors(out.num_classes), options), out, "classes")]
    if job.spec.objects is not None:
        stem, suffix = posixpath.splitext(url)
        outputs.append(CogOutput(CogSpec(f"{stem}-instances{suffix}", transform, crs, None, options),
                                 job.spec.objects.instances, "instances"))
    return outputs


def write_cogs(job: PreparedJob, url: str, storage_options: dict) -> list[dict]:
    """Write the job's COGs that are not recorded as written and present; returns each one's record.
    A refused write is listed in ``job.failed`` (the Zarr output stays complete; a re-run writes it)."""
    out = job.spec.output
    done = {entry["url"]: entry for entry in (read_unet_attrs(out) or {}).get("cog", [])}
    records = []
    for target in cog_outputs(job, url, storage_options):
        name = redact(target.cog.url)
        if name in done and cog_exists(target.cog):
            records.append(done[name])
            continue
        try:
            size = write_cog(target.cog, target.image.url, target.image.storage_options)
        except (OSError, UNetError) as e:
            job.failed.append(BlockFailure(f"--cog {name}: {type(e).__name__}: {e}"))
            continue
        done[name] = {"url": name, "image": target.kind, "bytes": size,
                      "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        records.append(done[name])
        update_unet_attrs(out, cog=list(done.values()))
    return records
