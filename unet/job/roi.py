"""Regions of interest: a low-resolution mask (tissue, land, sea) of the parts of a mosaic worth segmenting.

The mask is a 2-D Zarr array, or a PNG/TIFF/JPEG image file, local or at any fsspec URL; any non-zero pixel
is of interest. It covers the whole mosaic and is stretched onto it, each axis on its own. A block that
holds no pixel of interest is not read or run: it is written as background (class 0; probability 1 for
class 0 when probabilities are written). A block that holds any is segmented whole: the mask chooses
blocks, it does not mask the output. The driver holds the mask, so it must stay small (MAX_PIXELS).
"""

from __future__ import annotations

import io
import math
import posixpath
from dataclasses import dataclass

import numpy as np

from unet.errors import UNetError, redact
from unet.files import read_small_file
from unet.io.source import metadata_errors
from unet.io.urls import fs_and_path, open_store
from unet.job.plan import Block

MAX_PIXELS = 1 << 26       # 64 Mpx: 64 MB of booleans in the driver
MAX_FILE_BYTES = 1 << 28   # 256 MB: no compressed image of MAX_PIXELS needs more
MAX_ASPECT_ERROR = 0.1     # relative difference of the two axes' scales beyond rounding


@dataclass(frozen=True)
class RegionOfInterest:
    """A boolean mask stretched over a mosaic of ``shape``."""

    mask: np.ndarray                # (mh, mw) bool
    shape: tuple[int, int]          # (H, W) of the mosaic

    def covers(self, block: Block) -> bool:
        """Whether any mask pixel that overlaps the block's rectangle is of interest."""
        (r0, r1), (c0, c1) = (self._span(span, axis) for axis, span in enumerate((block.rows, block.cols)))
        return bool(self.mask[r0:r1, c0:c1].any())

    def _span(self, span: tuple[int, int], axis: int) -> tuple[int, int]:
        """Mask pixels overlapping the mosaic pixels [start, stop) along ``axis``, rounded outwards."""
        n, size = self.mask.shape[axis], self.shape[axis]
        return span[0] * n // size, max(-(-span[1] * n // size), span[0] * n // size + 1)


def load_roi(url: str, storage_options: dict, shape: tuple[int, int]) -> RegionOfInterest:
    """Read and check the mask at ``url`` for a mosaic of ``shape``; UNetError (one line) if unusable."""
    name = f"--roi {redact(url)}"
    mask = _read_mask(url, storage_options, name)
    _check_aspect(mask.shape, shape, name)
    mask = mask != 0
    if not mask.any():
        raise UNetError(f"{name}: expected some non-zero pixels of interest, found none (nothing would be "
                        "segmented)")
    return RegionOfInterest(mask, (shape[0], shape[1]))


def _check_shape(shape: tuple[int, ...], name: str) -> None:
    """From the mask's metadata, before its pixels are read: 2-D and small enough for the driver."""
    if len(shape) != 2:
        raise UNetError(f"{name}: expected a 2-D mask (y, x), found {len(shape)}-D with shape {tuple(shape)}; "
                        "save one channel")
    if math.prod(shape) > MAX_PIXELS or 0 in shape:
        raise UNetError(f"{name}: expected a low-resolution mask of 1 to {MAX_PIXELS} pixels, found shape "
                        f"{tuple(shape)}; downsample it")


def _check_aspect(mask_shape: tuple[int, int], shape: tuple[int, int], name: str) -> None:
    """The mask must have the mosaic's proportions, up to rounding of its own size."""
    sy, sx = mask_shape[0] / shape[0], mask_shape[1] / shape[1]
    explained = abs(mask_shape[0] - shape[0] * sx) <= 1 or abs(mask_shape[1] - shape[1] * sy) <= 1
    if not explained and max(sy, sx) / min(sy, sx) > 1 + MAX_ASPECT_ERROR:
        raise UNetError(f"{name}: expected a mask with the proportions of the mosaic {shape[0]} x {shape[1]}, "
                        f"found {mask_shape[0]} x {mask_shape[1]} (scales {sy:.3g} and {sx:.3g} along y and x)")


def _read_mask(url: str, storage_options: dict, name: str) -> np.ndarray:
    """The mask's pixels: a Zarr array (a folder or prefix with zarr.json or .zarray), else an image file;
    its shape is checked from metadata before any pixel is read or decoded."""
    import zarr

    fs, path = fs_and_path(url, storage_options)
    path = path.rstrip("/")
    if any(fs.exists(posixpath.join(path, key)) for key in ("zarr.json", ".zarray")):
        with metadata_errors(name):
            node = zarr.open(store=open_store(url, storage_options, read_only=True), mode="r")
            if not isinstance(node, zarr.Array):
                raise UNetError(f"{name}: expected a Zarr array, found a group; point the URL at the array")
            _check_shape(node.shape, name)
            return np.asarray(node[...])
    data = read_small_file(url, storage_options, what=name, expected="a 2-D Zarr array or a PNG/TIFF/JPEG mask",
                           limit=MAX_FILE_BYTES)
    return _decode_image(data, name)


def _decode_image(data: bytes, name: str) -> np.ndarray:
    import tifffile
    from PIL import Image

    from unet.io.tiff import is_tiff_header

    try:
        if is_tiff_header(data):
            with tifffile.TiffFile(io.BytesIO(data)) as tiff:
                _check_shape(tiff.series[0].shape, name)
                return tiff.series[0].asarray()
        with Image.open(io.BytesIO(data)) as image:  # decodes nothing until asked
            bands = len(image.getbands())
            _check_shape((image.height, image.width, *([bands] if bands > 1 else [])), name)
            return np.asarray(image)
    except Image.DecompressionBombError:
        raise UNetError(f"{name}: expected a low-resolution mask of 1 to {MAX_PIXELS} pixels, found an image "
                        "far larger; downsample it") from None
    except UNetError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL and tifffile raise many types for corrupt files
        raise UNetError(f"{name}: expected a 2-D Zarr array or a PNG/TIFF/JPEG mask, found a file that is "
                        f"neither or cannot be decoded ({type(e).__name__})") from None
