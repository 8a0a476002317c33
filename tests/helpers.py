"""Helpers the test modules share (not a test module: no test module imports another). Fixtures live in
conftest.py; the bad-input tables in cases.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from PIL import Image
from scipy import ndimage

from unet import SegmentOptions, UNet, predict_image, segment as segment_job
from unet.api import main
from unet.infer.instances import InstanceMethod, grow_seeds
from unet.cli import run
from unet.job.report import Report

EIGHT = np.ones((3, 3), dtype=bool)


# --- the segmentation job -------------------------------------------------------------------------------------

def run_segment(input: Any, output: Any, checkpoint: Any, **options: Any) -> Report:
    """The job through its Python entry point, ``unet.segment``, without a progress bar."""
    return segment_job(SegmentOptions.of(input, output, checkpoint, progress=False, **options))


def segment(*argv: Any) -> int:
    """The job as its command line runs it, in-process: the exit code (one-line errors on stderr)."""
    return run(main, [*map(str, argv), "--no-progress"])


def reference_labels(model: UNet, image: np.ndarray) -> np.ndarray:
    return predict_image(model, image).argmax(axis=0)


def growth_across_seams(classes: np.ndarray, block: int, method: InstanceMethod) -> int:
    """Pixels whose nearest seed pixel lies in another block: grow the seed pixels' block numbers."""
    rows, cols = np.indices(classes.shape) // block
    seed_block = np.where(classes == method.interior, rows * 10**6 + cols + 1, 0)
    nearest = grow_seeds(seed_block, classes == method.boundary, method.grow)
    return int(((nearest > 0) & (nearest != rows * 10**6 + cols + 1)).sum())


def ray_worker_pids(name: str, ancestor: int | None = None) -> list[int]:
    """Pids of Ray actor processes titled ``ray::NAME`` that descend from ``ancestor`` (by default this test
    process, whose child is the session cluster's raylet): never those of another Ray session on the machine."""
    found = subprocess.run(["pgrep", "-f", f"ray::{name}"], capture_output=True, text=True).stdout
    return [pid for pid in map(int, found.split()) if _descends(pid, ancestor or os.getpid())]


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])  # the parent's pid
        except FileNotFoundError:  # exited meanwhile
            return False
    return False


def write_ome_image(path: Path, image: np.ndarray) -> None:
    """A one-level OME-NGFF 0.5 image with a pixel size, as an imaging pipeline would write it."""
    group = zarr.create_group(str(path))
    group.create_array("0", data=image, chunks=(64, 64), dimension_names=("y", "x"))
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.25]}]}]}]}


# --- objects: whole-image references --------------------------------------------------------------------------

def whole_image_reference(classes: np.ndarray, object_classes=(1, 2), min_area: int = 0) -> np.ndarray:
    """Connected components of the whole image in memory, per class, small ones removed."""
    instances, count = np.zeros(classes.shape, dtype=np.int64), 0
    for c in object_classes:
        labelled, n = ndimage.label(classes == c, structure=EIGHT)
        instances[labelled > 0] = labelled[labelled > 0] + count
        count += n
    areas = np.bincount(instances.ravel())
    instances[(areas < min_area)[instances] & (instances > 0)] = 0
    return instances


def by_first_pixel(instances: np.ndarray) -> np.ndarray:
    """Renumber ids 1..N in raster order of each object's first pixel."""
    ids, first = np.unique(instances.ravel(), return_index=True)
    ordered = ids[np.argsort(first)]
    ordered = ordered[ordered > 0]
    renumber = np.zeros(instances.max() + 1, dtype=np.int64)
    renumber[ordered] = np.arange(1, len(ordered) + 1)
    return renumber[instances]


def assert_same_objects(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to a bijection of ids that keeps 0 as background; and equal once numbered by first pixel."""
    pairs = np.unique(np.stack([got.ravel(), expected.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    assert ((pairs[0] == 0) == (pairs[1] == 0)).all()
    np.testing.assert_array_equal(got, by_first_pixel(expected))


def reference_table(classes: np.ndarray, prob: np.ndarray, instances: np.ndarray) -> dict:
    """The table computed from whole-image arrays with scipy.ndimage, rows in id order."""
    ids = np.arange(1, instances.max() + 1)
    boxes = ndimage.find_objects(instances)
    centroids = np.array(ndimage.center_of_mass(np.ones_like(instances), instances, ids)).reshape(-1, 2)
    return {"class": np.array([classes[b][instances[b] == i][0] for i, b in zip(ids, boxes)]),
            "area_px": ndimage.sum_labels(np.ones_like(instances), instances, ids),
            "centroid_y": centroids[:, 0], "centroid_x": centroids[:, 1],
            "bbox_y0": [b[0].start for b in boxes], "bbox_x0": [b[1].start for b in boxes],
            "bbox_y1": [b[0].stop for b in boxes], "bbox_x1": [b[1].stop for b in boxes],
            "mean_probability": ndimage.mean(prob, instances, ids)}


# --- training data ---------------------------------------------------------------------------------------------

def disks(rng: np.random.Generator, h: int, w: int, n: int = 5, touching: bool = False):
    """Bright disks on dark noise: image uint8 (H, W) and instance labels (H, W); with ``touching`` the
    disks come in pairs that share an edge."""
    yy, xx = np.mgrid[:h, :w]
    instances = np.zeros((h, w), np.uint16)
    for i in range(n):
        cy, cx, r = rng.uniform(8, h - 8), rng.uniform(8, w - 8), rng.uniform(5, 9)
        instances[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 2 * i + 1
        if touching:
            instances[(yy - cy) ** 2 + (xx - cx - 2 * r) ** 2 < r * r] = 2 * i + 2
    image = np.clip(40 + 150 * (instances > 0) + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)
    return image, instances


def write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)


def make_folder(root: Path, n: int = 3, size: tuple[int, int] = (64, 72), seed: int = 0,
                instances: bool = False, suffix: str = ".png") -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, labels = disks(rng, *size, touching=instances)
        write(root / "images" / f"img{i}{suffix}", image)
        write(root / "masks" / f"img{i}{suffix}", labels if instances else (labels > 0).astype(np.uint8))
    return root


def nan_image(root: Path) -> None:
    image = np.ones((30, 30), np.float32)
    image[3, 4] = np.nan
    write(root / "images" / "img0.npy", image)
    write(root / "masks" / "img0.npy", np.zeros((30, 30), np.uint8))
    (root / "images" / "img0.png").unlink()
    (root / "masks" / "img0.png").unlink()
