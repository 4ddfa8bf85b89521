"""One check, one route: a layer's (or the functional API's) input enters each
module at most once on its way to the compiled kernels, and the backend
contract's ``check_forward`` is the one input check below the layer (the route
as bench/route_hops.py traces it: every call whose frame holds ``x``, a view,
a copy or a cast of it)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")
if pytest.importorskip("fastrnn.dispatch").resolve_backend("auto") != "cpu":
    pytest.skip("the compiled CPU kernels do not load here", allow_module_level=True)

_PATH = Path(__file__).resolve().parents[1] / "bench" / "route_hops.py"
_spec = importlib.util.spec_from_file_location("route_hops", _PATH)
route_hops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(route_hops)


@pytest.mark.parametrize("api", ["layer", "functional"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_reset_before"])
def test_training_forward_enters_no_module_twice(cell, api):
    # lstm: the packed LSTM; gru: the packed GRU or the loops (settings.packed_cells);
    # gru_reset_before: the BLAS-per-step loops
    hops, twice, _ = route_hops.route(cell, training=True, dtype=np.float32, api=api)
    assert twice == [], f"entered more than once: {twice}; route {hops}"
    into_contract = [fn for _, callee, fn in hops if callee == "contract"]
    assert into_contract == ["check_forward"], hops
    top = "layers" if api == "layer" else "functional"
    assert hops[0][1] == top and any(c.startswith("kernels.") for _, c, _ in hops)


def test_eval_forward_enters_no_module_twice():
    hops, twice, _ = route_hops.route("lstm", training=False, dtype=np.float32)
    assert twice == [], f"entered more than once: {twice}; route {hops}"
