"""``python -m fastrnn.bench``: :func:`fastrnn.bench.main` with the process's
arguments, and its exit status."""
import sys

from . import main

try:
    sys.exit(main())
except KeyboardInterrupt:     # the busy processes were stopped on the way out
    print("fastrnn bench: interrupted", file=sys.stderr)
    sys.exit(130)
