"""``python -m cpvt`` (and ``torchrun -m cpvt train ...``)."""

import sys

from .cli import main

sys.exit(main())
