"""U-Net segmentation of huge images: exact overlap-tile inference, training on few images, and a
resumable distributed batch job over Zarr mosaics.

``segment(SegmentOptions.of(INPUT, OUTPUT, CHECKPOINT)) -> Report`` runs the job; it is imported on first
use, so that ``from unet import UNet`` loads neither Ray nor the job.
"""

from typing import Any

from unet.errors import CheckpointError, UNetError
from unet.infer.predict import TilePredictor, predict_image
from unet.nn.checkpoint import load_checkpoint, save_checkpoint
from unet.nn.config import InputContract, UNetConfig
from unet.nn.model import UNet

__version__ = "0.1.0"

_JOB = {"segment": "unet.api", "SegmentOptions": "unet.job.options", "Report": "unet.job.report"}

__all__ = ["CheckpointError", "InputContract", "Report", "SegmentOptions", "TilePredictor", "UNet", "UNetConfig",
           "UNetError", "load_checkpoint", "predict_image", "save_checkpoint", "segment"]


def __getattr__(name: str) -> Any:
    """The job's names, imported on first use."""
    if name not in _JOB:
        raise AttributeError(f"module 'unet' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_JOB[name]), name)
