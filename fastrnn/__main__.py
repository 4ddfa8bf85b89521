"""``python -m fastrnn``: the command line (see :mod:`fastrnn.cli`)."""
import sys

from .cli import main

sys.exit(main())
