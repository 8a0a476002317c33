"""The README's first command: `python jobs/demo.py [--out DIR] [--scene nuclei|ships|both] [--size N]
[--steps N] [--quick]`.

Draws synthetic mosaics with ground truth (touching fluorescent nuclei; ships at sea), trains a small U-Net
on a few crops of separate scenes, segments each whole mosaic with the Ray job, prints IoU, Dice and object
F1 against the truth and writes a PNG preview per scene. See --help.
"""

import sys

from unet.cli import run
from unet.demo.run import main

if __name__ == "__main__":
    sys.exit(run(main))
