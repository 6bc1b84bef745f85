"""``python -m pixelgen.cli`` (e.g. under ``torchrun -m pixelgen.cli sample ...``)."""

import sys

from pixelgen.cli import main

sys.exit(main())
