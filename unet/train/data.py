"""Training data: a folder with ``images/`` and ``masks/`` of matching file stems, the validation split, the
input normalisation, and random training tiles.

Files are PNG, TIFF or NPY. A 2-D image is one channel; a 3-D one is channels-last when its last axis is
not longer than its first (PNG and most TIFFs: (H, W, C)), channels-first otherwise ((C, H, W)). Masks are
2-D integer class indices, or instance labels (0 = background) from which the class targets are derived
(``unet.train.targets``: by default interior and boundary classes).

Images smaller than a tile are mirrored (numpy's "reflect"), the same way prediction pads an image's
borders, so any image size can be trained on.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from unet.errors import UNetError
from unet.infer.tiling import read_mirrored
from unet.nn.config import InputContract
from unet.train.augment import AugmentConfig, augment
from unet.train.targets import Targets, TileTargets

SUFFIXES = (".png", ".tif", ".tiff", ".npy")


@dataclass(frozen=True)
class Sample:
    """One labelled image: image (C, H, W) in the file's dtype, mask (H, W) int64 class targets and, for
    instance data, the instance labels (H, W) int64 1..n the targets come from; ``sha256`` of both files."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray | None
    sha256: str


def load_folder(folder: str | Path, num_classes: int, instances: bool = False) -> list[Sample]:
    """Every image/mask pair of ``folder``, sorted by name, checked for consistency."""
    pairs = find_pairs(Path(folder))
    samples = [load_sample(name, image, mask, num_classes, instances) for name, image, mask in pairs]
    check_consistent(samples, Path(folder))
    return samples


def find_pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    """(stem, image path, mask path) for every stem, after checking that each image has a mask and back."""
    if not folder.is_dir():
        raise UNetError(f"data folder {folder}: not found; expected a folder with images/ and masks/")
    images, masks = (_files_by_stem(folder / sub) for sub in ("images", "masks"))
    for have, lack, kind, other in ((images, masks, "image", "mask"), (masks, images, "mask", "image")):
        orphans = sorted(have.keys() - lack.keys())
        if orphans:
            more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
            raise UNetError(f"{kind} {have[orphans[0]]}: has no {other}{more}; expected "
                            f"{folder / (other + 's') / orphans[0]} with one of the suffixes {', '.join(SUFFIXES)}")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def _files_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise UNetError(f"data folder {folder.parent}: expected a subfolder {folder.name}/, found none")
    files: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES):
        if path.stem in files:
            raise UNetError(f"{folder}: expected one file per name, found {files[path.stem].name} and {path.name}")
        files[path.stem] = path
    if not files:
        raise UNetError(f"{folder}: expected image files ({', '.join(SUFFIXES)}), found none")
    return files


def load_sample(name: str, image_path: Path, mask_path: Path, num_classes: int, instances: bool) -> Sample:
    """Read one pair of files and check and convert it as ``make_sample`` does."""
    image_bytes, mask_bytes = image_path.read_bytes(), mask_path.read_bytes()
    digest = hashlib.sha256(hashlib.sha256(image_bytes).digest() + hashlib.sha256(mask_bytes).digest())
    return make_sample(name, read_array(image_path, image_bytes, "image"), read_array(mask_path, mask_bytes, "mask"),
                       num_classes, instances, sha256=digest.hexdigest(), sources=(image_path, mask_path))


def make_sample(name: str, image: np.ndarray, mask: np.ndarray, num_classes: int, instances: bool = False,
                sha256: str | None = None, sources: tuple[str | Path, str | Path] | None = None,
                targets: Targets = Targets()) -> Sample:
    """Check an image (H, W), (H, W, C) or (C, H, W) and its mask and convert them to a Sample; instance
    masks are renumbered and get their class targets from ``targets`` (training re-derives them with its
    own). ``sha256`` defaults to a hash of the arrays and ``sources`` (named in error messages) to ``name``."""
    image_source, mask_source = sources or (name, name)
    image, mask = (np.asarray(a, np.uint8) if np.asarray(a).dtype == bool else np.asarray(a) for a in (image, mask))
    sha256 = sha256 or _array_hash(image, mask)
    image = channels_first(image, image_source)
    check_mask(mask, mask_source, image.shape[1:], num_classes, instances)
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise UNetError(f"image {image_source}: expected finite values, found NaN or infinity at {bad} pixels; "
                        "fill them before training")
    labels = relabel(mask) if instances else None
    mask = targets.classes(labels) if labels is not None else mask.astype(np.int64)
    return Sample(name, image, mask, labels, sha256)


def _array_hash(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def read_array(path: Path, data: bytes, kind: str) -> np.ndarray:
    """Decode PNG, TIFF or NPY bytes; palette PNG images become RGB, palette masks stay indices."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(io.BytesIO(data), allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            array = tifffile.imread(io.BytesIO(data))
        else:
            with Image.open(io.BytesIO(data)) as im:
                array = np.asarray(im.convert("RGB") if kind == "image" and im.mode == "P" else im)
    except Exception as e:  # each decoder raises its own types: report them all as bad input
        raise UNetError(f"{kind} {path}: cannot be read as {suffix[1:].upper()} ({type(e).__name__}: {e})") from None
    return array


def channels_first(array: np.ndarray, path: str | Path) -> np.ndarray:
    """(C, H, W) view of a 2-D or 3-D image as decoded from a file, whose channels may come last (see the
    module docstring); ``unet.infer.predict.as_chw`` takes arrays that are channels-first already."""
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise UNetError(f"image {path}: expected integer or float pixels, found dtype {array.dtype}")
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise UNetError(f"image {path}: expected a non-empty 2-D or 3-D array, found shape {array.shape}")
    if array.ndim == 2:
        return array[None]                                      # (1, H, W)
    return np.moveaxis(array, -1, 0) if array.shape[-1] <= array.shape[0] else array  # (C, H, W)


def check_mask(mask: np.ndarray, path: str | Path, shape: tuple[int, int], num_classes: int, instances: bool) -> None:
    """Refuse masks that are not 2-D integer labels of the image's size within the class range."""
    if mask.ndim != 2:
        raise UNetError(f"mask {path}: expected a 2-D array of labels, found shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise UNetError(f"mask {path}: expected integer labels, found dtype {mask.dtype}")
    if mask.shape != tuple(shape):
        raise UNetError(f"mask {path}: expected the image's size {shape[0]}x{shape[1]}, "
                        f"found {mask.shape[0]}x{mask.shape[1]}")
    if mask.size and mask.min() < 0:
        raise UNetError(f"mask {path}: expected labels >= 0, found {mask.min()}")
    if not instances and mask.size and mask.max() >= num_classes:
        raise UNetError(f"mask {path}: expected class indices 0..{num_classes - 1} ({num_classes} classes), "
                        f"found {mask.max()}; pass --classes {mask.max() + 1}, or --instances for instance labels")


def check_consistent(samples: Sequence[Sample], folder: Path) -> None:
    """All images of a training run share their channel count and dtype."""
    first = samples[0]
    for s in samples[1:]:
        if (s.image.shape[0], s.image.dtype) != (first.image.shape[0], first.image.dtype):
            raise UNetError(f"data folder {folder}: expected every image like {first.name} "
                            f"({first.image.shape[0]} channel(s), {first.image.dtype}), found {s.name} with "
                            f"{s.image.shape[0]} channel(s), {s.image.dtype}")


def relabel(instances: np.ndarray) -> np.ndarray:
    """Instance labels renumbered 1..n in order of their values, 0 kept as background: (H, W) int64."""
    values, inverse = np.unique(instances, return_inverse=True)
    return (inverse.reshape(instances.shape) + (values[0] != 0)).astype(np.int64)


def split_validation(samples: Sequence[Sample], fraction: float,
                     rng: np.random.Generator) -> tuple[list[Sample], list[Sample]]:
    """A random ``fraction`` of the samples for validation, the rest for training; at least one sample
    must stay for training. When the fraction rounds to no whole image (one or two images at the default
    0.2), that fraction of every image is held out instead: see ``hold_out_strips``."""
    n_val = int(round(fraction * len(samples))) if fraction > 0 else 0
    if fraction > 0 and n_val == 0:
        return hold_out_strips(samples, fraction)
    if n_val >= len(samples):
        raise UNetError(f"validation split: {fraction:g} of {len(samples)} image(s) leaves none for training; "
                        "add images, lower --val-fraction, or pass --val-dir")
    order = rng.permutation(len(samples))
    val = set(order[:n_val].tolist())
    return ([s for i, s in enumerate(samples) if i not in val], [s for i, s in enumerate(samples) if i in val])


def hold_out_strips(samples: Sequence[Sample], fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Each image cut across its longer axis: the last ``fraction`` of it (at least one pixel) for
    validation, the rest for training. No label of a validation strip is trained on."""
    train, val = [], []
    for s in samples:
        axis = int(s.mask.shape[1] > s.mask.shape[0])           # 0: rows, 1: columns
        n = s.mask.shape[axis]
        if n < 2:
            raise UNetError(f"validation split: image {s.name} is {n} pixel(s) across, too small to hold out "
                            f"{fraction:g} of it; pass --val-dir or --val-fraction 0")
        cut = n - min(n - 1, max(1, round(fraction * n)))
        train.append(_part(s, axis, 0, cut))
        val.append(_part(s, axis, cut, n))
    return train, val


def _part(s: Sample, axis: int, start: int, stop: int) -> Sample:
    """Rows (axis 0) or columns (axis 1) ``start:stop`` of a sample, named after them."""
    index = (slice(start, stop), slice(None)) if axis == 0 else (slice(None), slice(start, stop))
    name = f"{s.name}[{start}:{stop}, :]" if axis == 0 else f"{s.name}[:, {start}:{stop}]"
    instances = None if s.instances is None else s.instances[index]
    digest = hashlib.sha256(f"{s.sha256}{name}".encode()).hexdigest()
    return Sample(name, s.image[(slice(None), *index)], s.mask[index], instances, digest)


def data_hash(samples: Sequence[Sample]) -> str:
    """SHA-256 over the names and file contents of ``samples``, independent of their order."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: (s.name, s.sha256)):
        h.update(f"{s.name}\0{s.sha256}\n".encode())
    return h.hexdigest()


def input_contract(images: Sequence[np.ndarray]) -> InputContract:
    """The normalisation of the training images, per channel: offset = mean, scale = standard deviation
    (1 for a constant channel). The dtype is the images'; the value range is the dtype's full range for
    integers and the observed minimum and maximum for floats."""
    total = sum(im.shape[1] * im.shape[2] for im in images)
    mean = sum(im.sum(axis=(1, 2), dtype=np.float64) for im in images) / total               # (C,)
    var = sum(((im - mean[:, None, None]) ** 2).sum(axis=(1, 2)) for im in images) / total   # (C,)
    std = np.where(var > 0, np.sqrt(var), 1.0)
    dtype = images[0].dtype
    if np.issubdtype(dtype, np.integer):
        value_range = (float(np.iinfo(dtype).min), float(np.iinfo(dtype).max))
    else:
        value_range = (float(min(im.min() for im in images)), float(max(im.max() for im in images)))
    return InputContract(channels=images[0].shape[0], dtype=str(dtype), value_range=value_range,
                         offset=tuple(mean.tolist()), scale=tuple(std.tolist()))


class TileSampler:
    """Random training tiles: the normalised, augmented input (C, T, T) and the target and weights of its
    output (h, w), the centre of the tile cropped by the network's margins. Each sample's labels (its
    instances, else its class mask) and ``border`` weights (H, W) are augmented with the image, and
    ``targets`` turns them into the tile's class target and weights."""

    def __init__(self, samples: Sequence[Sample], border: Sequence[np.ndarray], contract: InputContract,
                 tile: int, margins: tuple[int, int], augmentation: AugmentConfig, targets: TileTargets):
        self.samples, self.border, self.targets = list(samples), list(border), targets
        self.labels = [s.instances if s.instances is not None else s.mask for s in self.samples]
        self.tile, self.margins, self.augmentation = tile, margins, augmentation
        self.out = tile - margins[0] - margins[1]
        self.offset = np.asarray(contract.offset, np.float32)[:, None, None]   # (C, 1, 1)
        self.scale = np.asarray(contract.scale, np.float32)[:, None, None]     # (C, 1, 1)
        rotation = int(np.ceil(tile * (np.sqrt(2) - 1) / 2)) if augmentation.rotate else 0
        self.context = rotation + augmentation.context + 4      # + spline support around the window
        areas = np.array([s.mask.size for s in self.samples], np.float64)
        self.p = areas / areas.sum()

    @property
    def pixels(self) -> int:
        """Training pixels: an epoch is this many output pixels."""
        return sum(s.mask.size for s in self.samples)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One tile from an image drawn in proportion to its area, at a uniformly random position."""
        i = rng.choice(len(self.samples), p=self.p)
        h, w = self.samples[i].mask.shape
        oy, ox = (int(rng.integers(min(0, n - self.out), max(0, n - self.out) + 1)) for n in (h, w))
        window = self._window(i, oy - self.margins[0] - self.context, ox - self.margins[0] - self.context)
        image, labels, border = augment(*window, rng, self.augmentation, crop=self.context)  # (C, T, T), ...
        assert border is not None, "a weight map goes in, so one comes out"
        target, weights = self.targets(labels, border)          # (T, T) each
        keep = (slice(self.margins[0], self.margins[0] + self.out),) * 2
        return image, target[keep], weights[keep]               # (C, T, T), (h, w), (h, w)

    def batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``size`` tiles stacked: (B, C, T, T) float32, (B, h, w) int64, (B, h, w) float32."""
        images, masks, weights = zip(*(self.sample(rng) for _ in range(size)))
        return np.stack(images), np.stack(masks), np.stack(weights)

    def _window(self, i: int, y: int, x: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tile's window with context at (y, x), mirrored at the image borders, image normalised."""
        s, n = self.samples[i], self.tile + 2 * self.context
        shape, rows, cols = s.mask.shape, (y, y + n), (x, x + n)
        image = read_mirrored(lambda r, c: s.image[:, r, c], shape, rows, cols)         # (C, n, n)
        labels, border = (read_mirrored(lambda r, c: a[None, r, c], shape, rows, cols)[0]
                          for a in (self.labels[i], self.border[i]))                   # (n, n) each
        return (image.astype(np.float32) - self.offset) / self.scale, labels, border
