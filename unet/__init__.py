"""U-Net segmentation of huge images: exact overlap-tile inference, training on few images, and a
resumable distributed batch job over Zarr mosaics."""

from unet.errors import CheckpointError, UNetError
from unet.infer.predict import TilePredictor, predict_image
from unet.nn.checkpoint import load_checkpoint, save_checkpoint
from unet.nn.model import InputContract, UNet, UNetConfig

__version__ = "0.1.0"

__all__ = ["CheckpointError", "InputContract", "TilePredictor", "UNet", "UNetConfig", "UNetError",
           "load_checkpoint", "predict_image", "save_checkpoint"]
