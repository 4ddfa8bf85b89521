"""``python -m fastrnn.cli``: the same command as ``fastrnn`` and ``python -m fastrnn``."""
import sys

from . import main

sys.exit(main())
