"""Storage: open inputs (Zarr, OME-Zarr, TIFF; local, s3:// or any fsspec URL), handle URLs and options."""

from unet.io.source import Source, SourceSpec, open_source
from unet.io.urls import fs_and_path, is_inside, parse_storage_options, resolve_storage_options, same_store

__all__ = ["Source", "SourceSpec", "fs_and_path", "is_inside", "open_source", "parse_storage_options",
           "resolve_storage_options", "same_store"]
