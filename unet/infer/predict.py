"""Overlap-tile prediction: any image, or any region of a huge one, without seams.

With a valid-padded network the result equals one forward pass over the whole mirror-padded image: tiles
sit on the pooling grid and each keeps its whole (valid) output. A same-padded network cannot be exact;
its tiles overlap by a halo and keep their centres.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import itertools
import threading
import time
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from unet.errors import UNetError
from unet.infer.tiling import Reader, read_mirrored, tile_origins
from unet.infer.tta import FLIPS, Flip, flips_for, mean_over_flips
from unet.nn.config import UNetConfig
from unet.nn.device import resolve_device
from unet.nn.model import UNet
from unet.nn.sizes import SizeArithmetic

SAME_PADDED_TTA = ("tta: this model is same-padded, so its tiles are not exact (with or without flips); "
                   "the flips are averaged all the same")
DEFAULT_CPU_BUDGET = 1 << 30     # bytes of activations per forward pass on CPU
MAX_AUTO_TILE = 2048             # no measured gain past this on CPU; GPUs get batches instead


class TilePredictor:
    """Runs a U-Net over tiles of a valid size on one device; loads nothing, owns the model's placement.

    ``amp`` (bf16 autocast) defaults to on for CUDA and off elsewhere. ``channels_last`` defaults to on
    everywhere: on CPU it doubled the 16-filter network's speed (``benchmarks/run.py``), and it is float32
    still. ``compile`` runs the network through ``torch.compile`` (worth it for long runs on a GPU: the
    first pass pays seconds to a minute of compilation). All of it works on CPU, which is how the tests
    exercise the GPU path.
    """

    def __init__(self, model: UNet, *, tile: int | None = None, batch_size: int | None = None,
                 device: str | torch.device | None = None, amp: bool | None = None,
                 channels_last: bool | None = None, memory_budget: int | None = None,
                 image_shape: tuple[int, int] | None = None, compile: bool = False):
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        self.amp = cuda if amp is None else amp
        self.channels_last = True if channels_last is None else channels_last
        self.config = model.config
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.network = torch.compile(self.model) if compile else self.model
        self.pooling_period = model.pooling_period
        self.memory_budget = memory_budget or _memory_budget(self.device)
        self._lock = OldestFirst()
        self._spent = threading.local()                          # forward time of each calling thread
        self._host = threading.local()                           # per thread: a pinned staging buffer (GPU)
        self._set_geometry(self._choose_tile(model, self.memory_budget, image_shape) if tile is None else tile,
                           batch_size)
        contract = model.config.input
        self._offset = torch.tensor(contract.offset, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        self._scale = torch.tensor(contract.scale, dtype=torch.float32, device=self.device).view(-1, 1, 1)

    def _set_geometry(self, tile: int, batch_size: int | None) -> None:
        self.tile = self.check_tile(self.model, tile)
        if self.config.padding == "valid":
            self.before, self.keep_offset = self.model.margin, 0
            self.out_tile = self.model.output_size(self.tile)
        else:  # same padding: drop a halo of context on each side of every tile
            self.before = self.keep_offset = _same_halo(self.model, self.tile)
            self.out_tile = self.tile - 2 * self.before
        # GPUs get batches of tiles sized to memory; on a CPU one tile a pass was measured fastest (4.5 Mpx/s
        # against 2.4 for batches of 5 on the 16-filter network: bigger activations fall out of cache)
        cuda = self.device.type == "cuda"
        self.batch_size = batch_size or (max(1, min(self.memory_budget // self.activation_bytes(self.tile), 64))
                                         if cuda else 1)

    def with_geometry(self, tile: int, batch_size: int | None = None) -> TilePredictor:
        """The same network on the same device (and the same device lock) with another tile and batch."""
        other = copy.copy(self)
        other._set_geometry(tile, batch_size)
        return other

    def activation_bytes(self, tile: int) -> int:
        return _activation_bytes(self.model, tile)

    # -- tile choice --------------------------------------------------------------------------------
    @staticmethod
    def check_tile(model: UNet, tile: int) -> int:
        """``tile`` itself if it is a valid input size for ``model`` whose output covers its pooling grid."""
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)):
            raise UNetError(f"tile: expected an integer number of pixels, found {tile!r}")
        tile = int(tile)
        valid = model.valid_input_sizes(1, tile + 4 * model.pooling_period + model.sizes.min_input)
        usable = [n for n in valid if _out_size(model, n) >= model.pooling_period]
        if tile not in usable:
            below = [str(n) for n in usable if n < tile][-1:] or ["none"]
            above = [n for n in usable if n > tile][:1]
            raise UNetError(f"tile: {tile} px is not a valid input size for this U-Net "
                            f"(depth {model.config.depth}, {model.config.padding} padding); "
                            f"nearest valid sizes: {below[0]} and {above[0]}")
        return tile

    @staticmethod
    def _choose_tile(model: UNet, budget: int, image_shape: tuple[int, int] | None) -> int:
        """The largest valid tile within the memory budget, no larger than the image needs."""
        candidates = [n for n, _ in tile_outputs(model, MAX_AUTO_TILE)]
        fitting = [n for n in candidates if _activation_bytes(model, n) <= budget] or candidates[:1]
        if image_shape is not None:
            need = max(image_shape)
            covering = [n for n in fitting if _out_size(model, n) >= need]
            if covering:
                return covering[0]
        return fitting[-1]

    # -- prediction ---------------------------------------------------------------------------------
    def predict_region(self, read: Reader, shape: tuple[int, int], rows: tuple[int, int],
                       cols: tuple[int, int]) -> np.ndarray:
        """Softmax probabilities (classes, h, w), float32, for the output rectangle rows x cols of an
        image of ``shape`` that ``read`` gives access to."""
        out = np.empty((self.config.num_classes, rows[1] - rows[0], cols[1] - cols[0]), np.float32)
        return self._predict_into(out, False, read, shape, rows, cols)

    def predict_classes(self, read: Reader, shape: tuple[int, int], rows: tuple[int, int],
                        cols: tuple[int, int]) -> np.ndarray:
        """``class_index`` of ``predict_region``, (h, w) uint8, taken on the device tile by tile: no float
        copy of the region is ever made, and only one byte per pixel leaves the device."""
        out = np.empty((1, rows[1] - rows[0], cols[1] - cols[0]), np.uint8)
        return self._predict_into(out, True, read, shape, rows, cols)[0]

    def _predict_into(self, out: np.ndarray, classes: bool, read: Reader, shape: tuple[int, int],
                      rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Paste each tile's probabilities (K, n, n), or its classes (1, n, n), into ``out`` (., h, w)."""
        ys = tile_origins(*rows, self.out_tile, self.pooling_period)
        xs = tile_origins(*cols, self.out_tile, self.pooling_period)
        wy, wx = ys[0] - self.before, xs[0] - self.before      # window origin in image coordinates
        ticket = self._lock.ticket()                            # this region's place in the device's queue
        window = read_mirrored(read, shape, *self.input_window(rows, cols))  # (C, wh, ww)
        check_pixels(window, self.config.in_channels)
        for batch in _batches(itertools.product(ys, xs), self.batch_size):
            tiles = np.stack([window[:, y - self.before - wy: y - self.before - wy + self.tile,
                                     x - self.before - wx: x - self.before - wx + self.tile]
                              for y, x in batch])                # (B, C, tile, tile)
            kept = self.forward(tiles, ticket, classes=classes)  # (B, K or 1, out_tile, out_tile)
            for (y, x), p in zip(batch, kept):
                _paste(out, p, (y - rows[0], x - cols[0]))
        return out

    def input_window(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The input rows and cols (image coordinates, may leave the image) that ``predict_region`` reads
        for the output rectangle rows x cols: the union of its tiles' inputs."""
        ys = tile_origins(*rows, self.out_tile, self.pooling_period)
        xs = tile_origins(*cols, self.out_tile, self.pooling_period)
        return ((ys[0] - self.before, ys[-1] - self.before + self.tile),
                (xs[0] - self.before, xs[-1] - self.before + self.tile))

    @torch.inference_mode()
    def forward(self, tiles: np.ndarray, ticket: int | None = None, classes: bool = False) -> np.ndarray:
        """Softmax probabilities (B, K, n, n) of the kept output of each raw (unnormalised) input tile, or
        with ``classes`` their ``class_index`` (B, 1, n, n) uint8, taken on the device. One call at a time:
        two threads that read or write blocks share the device, the region that came first first."""
        with self._lock.hold(self._lock.ticket() if ticket is None else ticket):
            wall, cpu = time.perf_counter(), time.thread_time()
            probs = self._forward(tiles, classes)
            spent = self._spent.__dict__
            spent["seconds"] = spent.get("seconds", 0.0) + time.perf_counter() - wall
            spent["cpu_seconds"] = spent.get("cpu_seconds", 0.0) + time.thread_time() - cpu
            return probs

    def take_time_spent(self) -> tuple[float, float]:
        """Seconds, and CPU seconds of the calling thread (all of it on one torch thread), that this thread's
        forward passes took since its last call: how busy the job kept the network."""
        spent = self._spent.__dict__
        return spent.pop("seconds", 0.0), spent.pop("cpu_seconds", 0.0)

    def _forward(self, tiles: np.ndarray, classes: bool) -> np.ndarray:
        x = self._to_device(tiles)                                # (B, C, tile, tile), stored dtype
        x = (x.to(torch.float32) - self._offset) / self._scale  # (B, C, tile, tile)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.network(x)                             # (B, K, h, w)
        k, n = self.keep_offset, self.out_tile
        logits = logits[..., k:k + n, k:k + n].float().contiguous()  # (B, K, n, n), channels first again
        probs = torch.softmax(logits, dim=1)                    # (B, K, out_tile, out_tile)
        if classes:
            return class_index_tensor(probs).cpu().numpy()      # (B, 1, n, n)
        return probs.cpu().numpy()

    def _to_device(self, tiles: np.ndarray) -> torch.Tensor:
        """The tiles on the device. On a GPU they go through a page-locked staging buffer kept per thread
        (allocating pinned memory per call costs more than the copy) with a non-blocking copy; the pass
        ends with a copy back to the host, so the buffer is free again when the thread's next call comes."""
        x = torch.from_numpy(np.ascontiguousarray(tiles))
        if self.device.type != "cuda":
            return x
        buffers = self._host.__dict__.setdefault("staging", {})
        key = (tuple(x.shape), x.dtype)
        if key not in buffers:
            buffers.clear()
            buffers[key] = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        staging = buffers[key].copy_(x)
        return staging.to(self.device, non_blocking=True)


class OldestFirst:
    """A lock that goes to the waiting holder of the lowest ticket. Two blocks in flight on one worker then
    run their forward passes one block after the other, so that one computes while the other reads or
    writes; a plain lock lets them alternate tile by tile, finish together and leave the device idle while
    both write and the next two read."""

    def __init__(self):
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._waiting: list[int] = []                          # heap of tickets
        self._busy = False

    def ticket(self) -> int:
        with self._cond:
            return next(self._tickets)

    @contextlib.contextmanager
    def hold(self, ticket: int):
        with self._cond:
            heapq.heappush(self._waiting, ticket)
            self._cond.wait_for(lambda: not self._busy and self._waiting[0] == ticket)
            heapq.heappop(self._waiting)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class FlipPredictor:
    """Test-time augmentation over a ``TilePredictor``: the mean of the probabilities of each flipped
    image, flipped back (``unet.infer.tta``); the same ``predict_region``/``predict_classes`` calls."""

    def __init__(self, predictor: TilePredictor, flips: Sequence[Flip] = FLIPS):
        self.base, self.flips = predictor, tuple(flips)

    def predict_region(self, read: Reader, shape: tuple[int, int], rows: tuple[int, int],
                       cols: tuple[int, int]) -> np.ndarray:
        """Mean softmax probabilities (K, h, w), float32, of the output rectangle rows x cols."""
        return mean_over_flips(self.flips, shape, rows, cols, lambda flip, fshape, frows, fcols:
                               self.base.predict_region(flip.reader(read, shape), fshape, frows, fcols))

    def predict_classes(self, read: Reader, shape: tuple[int, int], rows: tuple[int, int],
                        cols: tuple[int, int]) -> np.ndarray:
        """The most probable class (h, w) uint8 of the mean probabilities."""
        return class_index(self.predict_region(read, shape, rows, cols))


def predict_image(model: UNet, image: np.ndarray, *, tile: int | None = None, batch_size: int | None = None,
                  device: str | torch.device | None = None, amp: bool | None = None,
                  tta: bool | int = False) -> np.ndarray:
    """Softmax probabilities (classes, H, W), float32, of an (H, W) or (C, H, W) image of any size.

    ``tile`` is the network's input size (572 for the paper's tile); None picks the largest valid tile
    within a memory budget. The model's input normalisation is applied here. ``tta`` averages over flips:
    True (or 4) the horizontal and vertical mirrors, 8 the symmetries of the square; exact with a
    valid-padded model (a same-padded one is not exact with or without it, and is warned about).
    """
    image = as_chw(image, model.config.in_channels)
    flips = flips_for(tta)
    if len(flips) > 1 and model.config.padding != "valid":
        warnings.warn(SAME_PADDED_TTA, stacklevel=2)
    h, w = image.shape[1:]
    predictor = TilePredictor(model, tile=tile, batch_size=batch_size, device=device, amp=amp, image_shape=(h, w))
    return FlipPredictor(predictor, flips).predict_region(lambda r, c: image[:, r, c], (h, w), (0, h), (0, w))


def class_index(probs: np.ndarray) -> np.ndarray:
    """The most probable class (h, w) uint8 of (K, h, w) probabilities, the first one on ties: one pass per
    class, a few times faster than numpy's argmax along a leading axis."""
    labels = np.zeros(probs.shape[1:], np.uint8)                                 # (h, w)
    best = probs[0]
    for k in range(1, len(probs)):
        better = probs[k] > best
        np.copyto(labels, np.uint8(k), where=better)
        if k < len(probs) - 1:
            best = np.where(better, probs[k], best)
    return labels


def class_index_tensor(probs: torch.Tensor) -> torch.Tensor:
    """``class_index`` on the device: (B, K, h, w) probabilities to (B, 1, h, w) uint8, the first class on
    ties. One comparison per class: torch's ``argmax`` along the class axis of a (B, K, h, w) tensor took
    14 ms of a 90 ms forward pass (tile 476, 2 classes, 2 CPU threads); this takes 1."""
    labels = torch.zeros((probs.shape[0], 1, *probs.shape[2:]), dtype=torch.uint8, device=probs.device)
    best = probs[:, :1]                                                          # (B, 1, h, w)
    for k in range(1, probs.shape[1]):
        better = probs[:, k:k + 1] > best
        labels.masked_fill_(better, k)
        if k < probs.shape[1] - 1:
            best = torch.where(better, probs[:, k:k + 1], best)
    return labels


def as_chw(image: np.ndarray, channels: int) -> np.ndarray:
    """View an (H, W) or (C, H, W) array as (C, H, W), checking it against the model's channel count."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]                                      # (1, H, W)
    if image.ndim != 3:
        raise UNetError(f"image: expected a 2-D (H, W) or 3-D (C, H, W) array, found {image.ndim}-D "
                        f"with shape {image.shape}")
    if image.shape[0] != channels:
        raise UNetError(f"image: expected {channels} channel(s) as the model was trained on, "
                        f"found {image.shape[0]} (shape {image.shape}, channels first)")
    if 0 in image.shape:
        raise UNetError(f"image: expected a non-empty image, found shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.iscomplexobj(image):
        raise UNetError(f"image: expected a real-valued array, found dtype {image.dtype}")
    return image


def check_pixels(window: np.ndarray, channels: int) -> None:
    """Refuse NaN or infinite values: the network would spread them across a whole tile."""
    if window.shape[0] != channels:
        raise UNetError(f"image: expected {channels} channel(s), found {window.shape[0]}")
    if np.issubdtype(window.dtype, np.floating) and not np.isfinite(window).all():
        raise UNetError("image: expected finite values, found NaN or infinity; "
                        "fill or mask them before prediction")


def _paste(out: np.ndarray, probs: np.ndarray, at: tuple[int, int]) -> None:
    """Copy the part of a tile's output that falls inside ``out``, the tile's origin at ``at``."""
    y, x = at
    h, w = probs.shape[-2:]
    sy, sx = max(0, -y), max(0, -x)
    ey, ex = min(h, out.shape[1] - y), min(w, out.shape[2] - x)
    out[:, y + sy: y + ey, x + sx: x + ex] = probs[:, sy:ey, sx:ex]


def _batches(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def tile_outputs(model: UNet, hi: int) -> list[tuple[int, int]]:
    """(tile, output kept) for every usable tile up to ``hi``: valid, and keeping at least one period."""
    pairs = [(n, _out_size(model, n)) for n in model.valid_input_sizes(1, hi)]
    return [(n, out) for n, out in pairs if out >= model.pooling_period]


def _out_size(model: UNet, tile: int) -> int:
    if model.config.padding == "valid":
        return model.output_size(tile)
    return tile - 2 * _same_halo(model, tile)


def _same_halo(model: UNet, tile: int) -> int:
    """Context dropped per side by a same-padded network: the valid margin on the grid, at most a quarter
    of the tile so that half of every tile is kept."""
    valid_margin = SizeArithmetic(UNetConfig(depth=model.config.depth)).margins[0]
    halo = -(-valid_margin // model.pooling_period) * model.pooling_period
    return min(halo, tile // 4 // model.pooling_period * model.pooling_period)


def _activation_bytes(model: UNet, tile: int) -> int:
    """Rough peak activation memory of one tile: about eight maps of the first level's width alive."""
    return 4 * 8 * model.config.base_channels * tile * tile


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return DEFAULT_CPU_BUDGET
