"""Segment a huge image with a trained U-Net on Ray: `python jobs/segment.py INPUT OUTPUT --checkpoint CKPT`.

On a cluster: `ray submit cluster.yaml jobs/segment.py -- INPUT OUTPUT --checkpoint CKPT`. See --help.
"""

import sys

from unet.api import main
from unet.cli import run

if __name__ == "__main__":
    sys.exit(run(main))
