"""Segment a huge image with a trained U-Net on Ray: `python jobs/segment.py INPUT OUTPUT --checkpoint CKPT`.

On a cluster: `ray submit cluster.yaml jobs/segment.py -- INPUT OUTPUT --checkpoint CKPT`. See --help.
"""

import sys

from unet.job import startup

if __name__ == "__main__":
    startup.begin(sys.argv[1:])  # Ray comes up while the driver imports torch and validates the inputs

from unet.api import main  # noqa: E402
from unet.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(main))
