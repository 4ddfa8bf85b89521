"""``fastrnn bench``: hands its options to :func:`fastrnn.bench.main`,
which parses them."""
from __future__ import annotations

import sys

from .parser import CLIError


def cmd_bench(rest):
    try:
        from .. import bench
    except ImportError as exc:
        raise CLIError(f"the benchmark module fastrnn.bench is not available ({exc})") from None
    if not hasattr(bench, "main"):
        raise CLIError("fastrnn.bench has no main(); the benchmark CLI is not installed")
    try:
        return bench.main(rest) or 0
    except KeyboardInterrupt:    # bench has stopped its busy processes on the way out
        print("fastrnn bench: interrupted", file=sys.stderr)
        return 130
