"""U-Net segmentation of huge images: exact overlap-tile inference, training on few images, and a
resumable distributed batch job over Zarr mosaics.

``segment(SegmentOptions.of(INPUT, OUTPUT, CHECKPOINT)) -> Report`` runs the job.
"""

from typing import TYPE_CHECKING, Any

from unet.errors import CheckpointError, UNetError

if TYPE_CHECKING:  # the job's names (segment, SegmentOptions, Report) stay untyped here: the layers allow it
    from unet.infer.predict import TilePredictor, predict_image
    from unet.nn.checkpoint import load_checkpoint, save_checkpoint
    from unet.nn.config import InputContract, UNetConfig
    from unet.nn.model import UNet

__version__ = "0.1.0"

# Every name but the errors is imported on first use, so that a command line (``unet.cli``) starts
# without waiting for torch, and ``from unet import UNet`` loads neither Ray nor the job.
_LAZY = {"segment": "unet.api", "SegmentOptions": "unet.job.options", "Report": "unet.job.report",
         "TilePredictor": "unet.infer.predict", "predict_image": "unet.infer.predict",
         "load_checkpoint": "unet.nn.checkpoint", "save_checkpoint": "unet.nn.checkpoint",
         "InputContract": "unet.nn.config", "UNetConfig": "unet.nn.config", "UNet": "unet.nn.model"}

__all__ = ["CheckpointError", "InputContract", "Report", "SegmentOptions", "TilePredictor", "UNet", "UNetConfig",
           "UNetError", "load_checkpoint", "predict_image", "save_checkpoint", "segment"]


def __getattr__(name: str) -> Any:
    """The package's names, imported on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'unet' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
