"""The demo: synthetic mosaics with ground truth, a small U-Net trained on a few crops of separate scenes,
the segmentation job over the whole mosaic on local Ray, scores against the truth and a PNG preview.

Every scene has a recipe: how to draw it, the network and training budget that suit it, and its IoU and
object F1 targets. Training crops come from scenes drawn with other seeds than the evaluation mosaic, so
the scores are on pixels the network has never seen. The objects scored are the ones the job itself writes
with ``--objects``: grown back from the predicted interiors for a contour model (the nuclei), connected
components for a two-class one (the ships), both without the objects below the checkpoint's min_area.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import zarr
from PIL import Image
from scipy import ndimage

from unet.cli import EXIT_OK, add_debug_flag
from unet.demo.noise import Scene
from unet.demo.nuclei import nuclei_scene
from unet.demo.ships import ship_scene
from unet.errors import UNetError
from unet.nn.config import UNetConfig
from unet.train.data import Sample, data_hash, make_sample
from unet.train.loop import TrainConfig, fit
from unet.train.losses import LossConfig
from unet.train.metrics import Scores, score
from unet.train.recipe import Schedule

EVAL_SEED = 2                         # the evaluation mosaic's seed
TRAIN_SEED = 10                       # training scene i is drawn with seed TRAIN_SEED + i, never EVAL_SEED
QUICK_SIZE = 512                      # side of the --quick mosaic, pixels
PREVIEW = 512                         # side of the preview crop, pixels
OUTLINE = np.array([255, 220, 0], np.uint8)   # predicted outlines, yellow


@dataclass(frozen=True)
class Recipe:
    """How one scene is drawn, learnt and judged. ``draw(shape, seed, training)``: a training scene may be
    denser (more objects per crop) than the evaluation mosaic; ``crops`` training crops of ``crop`` px
    (one more is kept for validation) are cut from ``scenes`` training scenes of ``train_size`` px, so
    that the crops show the scene-to-scene variation (blur, illumination, sea state) of new scenes.
    ``steps`` and ``minutes``: the training budget, whichever ends first (on a quiet machine the steps);
    ``tile``, ``batch_size``, ``lr`` and ``schedule``: None for ``jobs/train.py``'s defaults.
    ``instance_method``: contour (interior and boundary classes) or components (foreground with gaps).
    ``class_balance``: weigh the classes by their inverse frequency (the paper's w_c; None: the training
    default); with rare objects it shifts the decision towards the objects and fattens them."""

    name: str
    draw: Callable[[tuple[int, int], int, bool], Scene]
    depth: int
    base_channels: int
    steps: int
    minutes: float | None
    instance_method: Literal["contour", "components"] = "contour"
    tile: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    schedule: Schedule = "cosine"
    crops: int = 6
    scenes: int = 3
    crop: int = 256
    train_size: int = 1024
    class_balance: bool | None = None
    iou_target: float = 0.9
    f1_target: float = 0.85


def _nuclei(shape: tuple[int, int], seed: int, training: bool) -> Scene:
    return nuclei_scene(shape, seed)


def _ships(shape: tuple[int, int], seed: int, training: bool) -> Scene:
    dense = max(1, round(shape[0] * shape[1] / 2**13))          # 16x the default: ships in every crop
    return ship_scene(shape, seed, n_ships=dense if training else None)


RECIPES = {
    # Touching nuclei: the contour recipe, with jobs/train.py's default tile, batch and schedule.
    "nuclei": Recipe("nuclei", _nuclei, depth=3, base_channels=16, steps=800, minutes=1.5),
    # Ships seldom touch: the two-class recipe as tuned before. Ships are ~3 % of a training crop, so w_c
    # would fatten them; one in five has a coloured deck, so more crops (and steps) than the nuclei need.
    "ships": Recipe("ships", _ships, depth=3, base_channels=16, steps=800, minutes=2.0,
                    instance_method="components", tile=188, batch_size=4, lr=3e-3, schedule="constant", crops=24,
                    class_balance=False, f1_target=0.8),
}


@dataclass(frozen=True)
class DemoConfig:
    """One demo run: the scenes, the evaluation mosaic's side, training steps (None: each recipe's own)."""

    out: Path = Path("demo-out")
    scenes: tuple[str, ...] = ("nuclei", "ships")
    size: int = 2048
    steps: int | None = None
    quick: bool = False

    def recipe(self, name: str) -> Recipe:
        recipe = RECIPES[name]
        if self.quick:
            recipe = replace(recipe, base_channels=8, steps=30, minutes=None, crops=2, crop=128, train_size=256,
                             batch_size=2)
        return replace(recipe, steps=self.steps, minutes=None) if self.steps is not None else recipe


@dataclass(frozen=True)
class SceneResult:
    """What the demo reports for one scene."""

    name: str
    shape: tuple[int, int]
    scores: Scores
    targets: tuple[float, float]   # foreground IoU, object F1
    seconds: dict[str, float]      # wall-clock seconds per phase: draw, train, segment, score
    preview: Path


def training_samples(recipe: Recipe) -> tuple[list[Sample], list[Sample]]:
    """``crops`` training crops and one validation crop, at distinct random cells of the training scenes."""
    side = recipe.train_size
    per_scene = (side // recipe.crop) ** 2
    if per_scene * recipe.scenes < recipe.crops + 1:
        raise UNetError(f"{recipe.name}: {recipe.crops + 1} crops of {recipe.crop} px do not fit "
                         f"{recipe.scenes} scene(s) of {side} px")
    scenes = [recipe.draw((side, side), TRAIN_SEED + i, True) for i in range(recipe.scenes)]
    cells = np.random.default_rng(TRAIN_SEED).choice(per_scene * recipe.scenes, recipe.crops + 1, replace=False)
    samples = [_crop_sample(scenes[cell // per_scene], recipe, int(cell % per_scene), f"{recipe.name}-{i}")
               for i, cell in enumerate(cells)]
    return samples[:-1], samples[-1:]


def _crop_sample(scene: Scene, recipe: Recipe, cell: int, name: str) -> Sample:
    per_row = scene.mask.shape[1] // recipe.crop
    y, x = (cell // per_row) * recipe.crop, (cell % per_row) * recipe.crop
    window = (slice(y, y + recipe.crop), slice(x, x + recipe.crop))
    image = scene.image[(..., *window)]                                        # (H, W) or (3, H, W)
    return make_sample(name, image, scene.instances[window], 2, instances=True)


def train_model(recipe: Recipe, train_set: list[Sample], val_set: list[Sample], checkpoint: Path,
                progress: bool) -> None:
    """Train the recipe's network on its crops with the paper's augmentation and border-weighted loss
    (Adam: faster than SGD with momentum 0.99 on a short budget)."""
    config = TrainConfig(out=checkpoint, instances=True, instance_method=recipe.instance_method,
                         class_names=("background", recipe.name),
                         network=UNetConfig(depth=recipe.depth, base_channels=recipe.base_channels),
                         tile=recipe.tile, batch_size=recipe.batch_size, steps=recipe.steps,
                         minutes=recipe.minutes, optimizer="adam", lr=recipe.lr,
                         schedule=recipe.schedule, loss=LossConfig(class_balance=recipe.class_balance),
                         seed=TRAIN_SEED, device="cpu", progress=progress)
    fit(config, train_set, val_set, data_hash([*train_set, *val_set]))


def write_mosaic(scene: Scene, folder: Path) -> Path:
    """The evaluation mosaic and its ground-truth instances as Zarr arrays; returns the image's path."""
    image_path = folder / "image.zarr"
    chunks = (512, 512) if scene.image.ndim == 2 else (3, 512, 512)
    zarr.create_array(image_path, data=scene.image, chunks=chunks, overwrite=True)
    zarr.create_array(folder / "truth.zarr", data=scene.instances, chunks=(512, 512), overwrite=True)
    return image_path


def segment_mosaic(image: Path, output: Path, checkpoint: Path) -> tuple[np.ndarray, np.ndarray]:
    """Run the segmentation job with ``--objects`` over the whole mosaic on (local) Ray; returns its class
    image and its objects (H, W), as written to OUTPUT/0 and OUTPUT/instances/0."""
    from unet.api import segment
    from unet.job.options import SegmentOptions

    report = segment(SegmentOptions.of(image, output, checkpoint, chunk=256, block=1024, overwrite=True,
                                       progress=False, objects=True))
    if not report.complete:
        raise RuntimeError(f"segmentation job: expected a complete output, found {report.failed_blocks} failed blocks")
    return (np.asarray(zarr.open_array(output / "0", mode="r")[:]),
            np.asarray(zarr.open_array(output / "instances" / "0", mode="r")[:]))


def save_preview(scene: Scene, objects: np.ndarray, path: Path) -> None:
    """A crop of the image (where the truth is densest) with the predicted objects' outlines: just outside
    them, and on the pixels where two objects touch."""
    y, x = _busiest_window(scene.mask, PREVIEW)
    window = (slice(y, y + PREVIEW), slice(x, x + PREVIEW))
    image = scene.image[(..., *window)]
    rgb = np.stack([image] * 3) if image.ndim == 2 else image                # (3, h, w)
    rgb = _stretch(rgb).transpose(1, 2, 0).copy()                            # (h, w, 3)
    ids = objects[window].astype(np.int64)
    hi = ndimage.maximum_filter(ids, size=3)
    lo = ndimage.minimum_filter(np.where(ids > 0, ids, hi.max() + 1), size=3)
    outline = np.where(ids > 0, (hi > ids) | (lo < ids), hi > 0)   # outside: bright objects stay visible
    rgb[outline] = OUTLINE
    Image.fromarray(rgb).save(path)


def _busiest_window(mask: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left corner of the ``side`` window, on a half-window grid, with the most foreground pixels."""
    step = max(1, side // 2)
    corners = [(y, x) for y in range(0, max(1, mask.shape[0] - side + 1), step)
               for x in range(0, max(1, mask.shape[1] - side + 1), step)]
    return max(corners, key=lambda c: int(mask[c[0]:c[0] + side, c[1]:c[1] + side].sum()))


def _stretch(image: np.ndarray) -> np.ndarray:
    """uint8 display of an image, its 0.5 to 99.5 percentiles stretched to the full range."""
    lo, hi = np.percentile(image, (0.5, 99.5))
    return np.clip((image.astype(np.float32) - lo) * (255 / max(hi - lo, 1)), 0, 255).astype(np.uint8)


def run_scene(config: DemoConfig, name: str) -> SceneResult:
    """Draw, train, segment, score and preview one scene under ``config.out / name``, timing each phase."""
    recipe, folder = config.recipe(name), config.out / name
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint, preview, clock = folder / "model.safetensors", config.out / f"{name}-preview.png", Stopwatch()
    with clock("draw"):
        train_set, val_set = training_samples(recipe)
        scene = recipe.draw((config.size, config.size), EVAL_SEED, False)
        image = write_mosaic(scene, folder)
    log(f"{name}: training a depth-{recipe.depth} U-Net ({recipe.base_channels} base channels) on "
        f"{recipe.crops} crops of {recipe.crop} px, {recipe.steps} steps"
        + (f" (at most {recipe.minutes:g} min)" if recipe.minutes is not None else ""))
    with clock("train"):
        train_model(recipe, train_set, val_set, checkpoint, progress=not config.quick)
    log(f"{name}: segmenting the {config.size} x {config.size} evaluation mosaic on Ray")
    with clock("segment"):
        labels, objects = segment_mosaic(image, folder / "labels.zarr", checkpoint)
    with clock("score"):
        scores = score((labels > 0).astype(np.int64), scene.mask, 2, scene.instances, objects)
        save_preview(scene, objects, preview)
    return SceneResult(name, scene.mask.shape, scores, (recipe.iou_target, recipe.f1_target), clock.seconds,
                       preview)


class Stopwatch:
    """Wall-clock seconds per named phase: ``with clock("train"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def log(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


def run_demo(config: DemoConfig) -> list[SceneResult]:
    """Every scene of ``config``, on the running Ray cluster or a quiet local one started here."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    config.out.mkdir(parents=True, exist_ok=True)
    return [run_scene(config, name) for name in config.scenes]


def results_table(results: list[SceneResult]) -> str:
    """One row per scene: foreground IoU and Dice, object precision, recall and F1, and the seconds each
    phase took (drawing the scenes and writing the mosaic, training, the segmentation job, scoring)."""
    rows = ["scene   mosaic      fg IoU  fg Dice  obj P   obj R   obj F1  draw s  train s  segment s  score s",
            "------  ----------  ------  -------  ------  ------  ------  ------  -------  ---------  -------"]
    for r in results:
        o, t = r.scores.objects, r.seconds
        assert o is not None, "the demo's scenes score objects"
        rows.append(f"{r.name:<6}  {r.shape[0]:>4} x {r.shape[1]:<4}  {r.scores.foreground_iou:6.3f}  "
                    f"{r.scores.foreground_dice:7.3f}  {o.precision:6.3f}  {o.recall:6.3f}  {o.f1:6.3f}  "
                    f"{t['draw']:6.0f}  {t['train']:7.0f}  {t['segment']:9.0f}  {t['score']:7.0f}")
    return "\n".join(rows)


def warnings(results: list[SceneResult]) -> list[str]:
    """A line for every scene whose foreground IoU or object F1 misses its target."""
    lines = []
    for r in results:
        assert r.scores.objects is not None, "the demo scores objects"
        for what, found, target in (("foreground IoU", r.scores.foreground_iou, r.targets[0]),
                                    ("object F1", r.scores.objects.f1, r.targets[1])):
            if found < target:
                lines.append(f"warning: {r.name}: {what} {found:.3f} is below the target {target:.2f}; "
                             "train longer (--steps) or on more crops")
    return lines


def parse_config(argv: Sequence[str]) -> DemoConfig:
    p = argparse.ArgumentParser(prog="demo.py", description="Synthetic mosaics -> train a small U-Net on a "
                                "few crops -> segment the whole mosaic on local Ray -> scores and PNG previews.")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default demo-out/)")
    p.add_argument("--scene", choices=["nuclei", "ships", "both"], default="both")
    p.add_argument("--size", type=int, help="side of each evaluation mosaic in pixels (default 2048)")
    p.add_argument("--steps", type=int, help="training steps per scene (default: each scene's own)")
    p.add_argument("--quick", action="store_true", help="a tiny run in well under a minute (for tests)")
    add_debug_flag(p)
    a = p.parse_args(argv)
    size = a.size or (QUICK_SIZE if a.quick else DemoConfig.size)
    if size < PREVIEW // 2 or (a.steps is not None and a.steps < 1):
        raise UNetError(f"--size/--steps: expected a size >= {PREVIEW // 2} and steps >= 1, "
                        f"found {size} and {a.steps}")
    scenes = ("nuclei", "ships") if a.scene == "both" else (a.scene,)
    return DemoConfig(out=a.out, scenes=scenes, size=size, steps=a.steps, quick=a.quick)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; prints the scores table, and a warning line per scene below its IoU target."""
    config = parse_config(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    results = run_demo(config)
    print(results_table(results))
    for line in warnings(results):
        print(line)
    print(f"demo: {time.perf_counter() - start:.0f} s; outputs and previews in {config.out}/")
    return EXIT_OK
