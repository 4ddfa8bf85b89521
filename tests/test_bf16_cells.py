"""The cpu backend's bf16 kernels of the GRU (both forms) and the tanh/ReLU RNN
(``kernels/packed_bf16_cells.py``, ``kernels/packed_bf16_gru_rb.py``,
``kernels/amx_bf16_cells.py``) against the reference's bf16 mode, on the AMX,
native (``vdpbf16ps``) and emulated routes, forward and backward, full and
random lengths, both directions, and through a stacked bidirectional layer.

Bounds as tests/test_bf16_kernels.py (tests/README.md): one step (T=1, same h0)
both sides round the same operands, so the outputs differ only in the order of
float32 sums (``cell_terms(..., approx=True)`` in float32); over a sequence, and
for the gradients from one step on, one side's float32 value may round to a
neighbouring bf16 value (one bf16 ulp, ``2u`` relative, ``u = 2^-9``) where it
enters a product: ``bf16_terms(..., approx=True)`` with ``dtype="bfloat16"``.
"""
import warnings

import numpy as np
import pytest

pytest.importorskip("numba")

from fastrnn import reference as ref  # noqa: E402
from fastrnn.bf16 import has_avx512_bf16  # noqa: E402
from fastrnn.cells import get_cell  # noqa: E402
from fastrnn.contract import Weights  # noqa: E402
from fastrnn.kernels import cpu  # noqa: E402
from fastrnn.testing import assert_close, bf16_terms, cell_terms  # noqa: E402

from _variants import make, random_state  # noqa: E402

if cpu.packed_bf16_cells is None:  # pragma: no cover
    pytest.skip("the packed bf16 GRU/RNN kernels did not import", allow_module_level=True)

BF16 = "bfloat16"
native_only = pytest.mark.skipif(not has_avx512_bf16(), reason="no AVX512-BF16 on this CPU")
#: the settings that force each route of cpu.route_bf16 for these cells
ROUTES = {"cells_amx": dict(bf16_native=True, bf16_amx=True),
          "cells_native": dict(bf16_native=True, bf16_amx=False),
          "cells_emulated": dict(bf16_native=False)}
with cpu.configure(**ROUTES["cells_amx"]):
    #: whether the AMX route runs here (AMX-BF16 tiles granted)
    AMX = cpu.route_bf16(get_cell("gru")) == "cells_amx"
amx_only = pytest.mark.skipif(not AMX, reason="no AMX-BF16 tiles here")
FWD = ("y", "h_n")
GATES = {"gru": 3, "gru_reset_before": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _args(cell, T, B, I, H, rng):
    G = GATES[cell]
    k = 1 / np.sqrt(H)
    f = lambda *s, a=1.0: rng.uniform(-a, a, s).astype(np.float32)  # noqa: E731
    w = Weights(f(G * H, I, a=k), f(G * H, H, a=k), f(G * H, a=k), f(G * H, a=k), None)
    return f(T, B, I), f(B, H), w


def _run(fwd, bwd, spec, x, h0, w, up, lengths, reverse):
    y, h, _, cache = fwd(spec, x, h0, None, w, lengths, reverse, True, compute_dtype=BF16)
    dx, dh0, _, dw = bwd(spec, cache, *up)
    return dict(y=y, h_n=h, dx=dx, dh0=dh0, dw_ih=dw.w_ih, dw_hh=dw.w_hh, db_ih=dw.b_ih,
                db_hh=dw.b_hh)


def _compare(got, want, terms_fwd, terms_all, dtype, keys):
    for k in keys:
        assert_close(got[k], want[k], terms_fwd if k in FWD else terms_all, scale=1.0,
                     dtype=dtype, err_msg=k)


A, N, E = "cells_amx", "cells_native", "cells_emulated"
CASES = [  # cell, T, B, I, H, lengths, reverse, route
    pytest.param("gru", 5, 7, 5, 20, (5, 3, 5, 1, 2, 4, 5), True, N, marks=native_only,
                 id="gru-native-lengths-reverse-padded"),
    pytest.param("gru", 4, 9, 6, 64, None, False, N, marks=native_only, id="gru-native-nv4"),
    pytest.param("gru", 5, 7, 5, 20, (5, 3, 5, 1, 2, 4, 5), False, E,
                 id="gru-emulated-lengths-padded"),
    pytest.param("gru_reset_before", 5, 7, 5, 20, (5, 3, 5, 1, 2, 4, 5), True, N,
                 marks=native_only, id="gru_reset_before-native-lengths-reverse-padded"),
    pytest.param("gru_reset_before", 4, 9, 6, 64, None, False, E,
                 id="gru_reset_before-emulated-nv4"),
    pytest.param("rnn_tanh", 5, 7, 5, 20, (4, 3, 5, 1, 2, 4, 5), True, N, marks=native_only,
                 id="rnn_tanh-native-lengths-reverse-padded"),
    pytest.param("rnn_tanh", 4, 9, 6, 32, None, True, E, id="rnn_tanh-emulated-reverse"),
    pytest.param("rnn_relu", 4, 9, 7, 32, None, False, N, marks=native_only,
                 id="rnn_relu-native"),
    # AMX: row blocks of 16 (B > 16); H = 96: output panels of 3 vectors
    pytest.param("gru", 5, 19, 5, 20, (5, 3, 5, 1, 2, 4, 5) * 2 + (5,) * 5, True, A,
                 marks=amx_only, id="gru-amx-lengths-reverse-padded"),
    pytest.param("gru", 3, 18, 40, 96, None, False, A, marks=amx_only, id="gru-amx-nv3"),
    pytest.param("rnn_tanh", 4, 17, 33, 32, None, True, A, marks=amx_only,
                 id="rnn_tanh-amx-reverse"),
    pytest.param("rnn_relu", 5, 19, 5, 20, (5, 3, 5, 1, 2, 4, 5) * 2 + (5,) * 5, False, A,
                 marks=amx_only, id="rnn_relu-amx-lengths-padded"),
    pytest.param("rnn_relu", 5, 7, 5, 20, (5, 3, 5, 1, 2, 4, 5), True, E,
                 id="rnn_relu-emulated-lengths-reverse-padded"),
]


@pytest.mark.parametrize("cell,T,B,I,H,lengths,reverse,route", CASES)
def test_cell_matches_the_bf16_reference(cell, T, B, I, H, lengths, reverse, route):
    rng = np.random.default_rng(T * 1000 + B * 10 + H)
    spec = get_cell(cell)
    x, h0, w = _args(cell, T, B, I, H, rng)
    lens = None if lengths is None else np.array(lengths)
    up = (rng.uniform(-1, 1, (T, B, H)).astype(np.float32),
          rng.uniform(-1, 1, (B, H)).astype(np.float32))
    with cpu.configure(**ROUTES[route]):
        assert cpu.route_bf16(spec) == route
        got = _run(cpu.forward, cpu.backward, spec, x, h0, w, up, lens, reverse)
        got1 = _run(cpu.forward, cpu.backward, spec, x[:1], h0, w, (up[0][:1], up[1]), None,
                    False)
    want = _run(ref.forward, ref.backward, spec, x, h0, w, up, lens, reverse)
    want1 = _run(ref.forward, ref.backward, spec, x[:1], h0, w, (up[0][:1], up[1]), None,
                 False)
    # one step: the same rounded operands on both sides (the gate gradients are
    # float32 results of each side's own arithmetic before they are rounded)
    _compare(got1, want1, cell_terms(spec, 1, B, I, H, approx=True, backward=False), None,
             np.float32, FWD)
    _compare(got1, want1, None, bf16_terms(spec, 1, B, I, H, approx=True), BF16,
             set(want1) - set(FWD))
    _compare(got, want, bf16_terms(spec, T, B, I, H, backward=False, approx=True),
             bf16_terms(spec, T, B, I, H, approx=True), BF16, want)
    # inference (no cache; chunks of 2 steps through its small operand buffer)
    # computes the training pass's forward numbers exactly
    with cpu.configure(infer_chunk_steps=2, **ROUTES[route]):
        y, h, c, cache = cpu.forward(spec, x, h0, None, w, lens, reverse, False,
                                     compute_dtype=BF16)
    assert cache is None and c is None
    np.testing.assert_array_equal(y, got["y"])
    np.testing.assert_array_equal(h, got["h_n"])


@native_only
@pytest.mark.parametrize("cell", ["gru", "gru_reset_before", "rnn_tanh"])
def test_native_and_emulated_agree(cell):
    spec = get_cell(cell)
    T, B, I, H = 5, 7, 5, 20
    x, h0, w = _args(cell, T, B, I, H, np.random.default_rng(5))
    up = (np.ones((T, B, H), np.float32), np.ones((B, H), np.float32))
    res = []
    for route in (N, E) + ((A,) if AMX and cell != "gru_reset_before" else ()):
        with cpu.configure(**ROUTES[route]):
            res.append(_run(cpu.forward, cpu.backward, spec, x, h0, w, up, None, False))
    for r in res[1:]:
        _compare(r, res[0], bf16_terms(spec, T, B, I, H, backward=False, approx=True),
                 bf16_terms(spec, T, B, I, H, approx=True), BF16, res[0])


@pytest.mark.parametrize("cell", ["gru", "gru_reset_before", "rnn_relu"])
def test_bitwise_the_same_on_one_and_two_threads(cell):
    """The thread split depends on the shape only (rows or panels)."""
    spec = get_cell(cell)
    T, B, I, H = 6, 16, 8, 32
    x, h0, w = _args(cell, T, B, I, H, np.random.default_rng(6))
    up = (np.random.default_rng(7).uniform(-1, 1, (T, B, H)).astype(np.float32), h0)
    res = []
    old = cpu.get_num_threads()
    try:
        for n, split in ((1, "rows"), (2, "rows"), (2, "panels")):
            cpu.set_num_threads(n)
            kw = dict(row_split_flops=0.0, two_thread_step_flops=0.0, oversubscribe=True,
                      row_split_bytes=(1 << 30) if split == "rows" else 0)
            with cpu.configure(**kw):
                res.append(_run(cpu.forward, cpu.backward, spec, x, h0, w, up, None, False))
    finally:
        cpu.set_num_threads(old)
    for r in res[1:]:
        for k in res[0]:
            np.testing.assert_array_equal(r[k], res[0][k], err_msg=k)


@pytest.mark.parametrize("variant", ["gru", "gru_reset_before", "rnn_tanh"])
def test_stacked_bidirectional_layer_matches_the_bf16_reference(variant):
    """Through the layer: two layers, both directions, random lengths, an initial
    state; the cpu layer runs the bf16 kernels and no reference warning fires."""
    kw = dict(num_layers=2, bidirectional=True, compute_dtype=BF16, seed=0)
    lay_ref = make(variant, 3, 20, backend="numpy", **kw)
    lay_cpu = make(variant, 3, 20, backend="cpu", **kw)
    rng = np.random.default_rng(1)
    T, B, H = 6, 5, 20
    x = rng.normal(size=(T, B, 3)).astype(np.float32)
    state = random_state(lay_ref, B, rng)
    lengths = np.array([6, 1, 4, 6, 3])
    dy = rng.normal(size=(T, B, 2 * H)).astype(np.float32)
    ds = rng.normal(size=state.shape).astype(np.float32)
    outs = []
    with warnings.catch_warnings():      # the reference route would warn
        warnings.filterwarnings("error", message=".*no bf16 kernel")
        for layer in (lay_ref, lay_cpu):
            y, st = layer(x, state, lengths)
            dx, d0 = layer.backward(dy, ds)
            outs.append((y, st, dx, d0, layer.grads))
    assert cpu.route_bf16(lay_cpu.cell) in (A, N, E)
    (y1, s1, dx1, d01, g1), (y2, s2, dx2, d02, g2) = outs
    spec = lay_ref.cell
    # the second layer's inputs are the first's outputs (2H wide): the larger I
    fwd = bf16_terms(spec, T, B, 2 * H, H, 2, 2, backward=False, approx=True)
    full = bf16_terms(spec, T, B, 2 * H, H, 2, 2, approx=True)
    fs = max(1.0, float(np.abs(state).max()))
    upg = max(fs, float(np.abs(dy).max()), float(np.abs(ds).max()))
    assert_close(y2, y1, fwd, scale=fs, dtype=BF16, err_msg="y")
    assert_close(s2, s1, fwd, scale=fs, dtype=BF16, err_msg="state")
    assert_close(d02, d01, full, scale=upg, dtype=BF16, err_msg="dstate")
    assert_close(dx2, dx1, full, scale=upg, dtype=BF16, err_msg="dx")
    for k in g1:
        assert_close(g2[k], g1[k], full, scale=upg, dtype=BF16, err_msg=k)


@pytest.mark.parametrize("cell", ["gru", "gru_reset_before", "rnn_tanh", "rnn_relu"])
def test_routed_to_kernels_without_the_reference_warning(cell):
    spec = get_cell(cell)
    x, h0, w = _args(cell, 2, 2, 3, 32, np.random.default_rng(8))
    want = E if not has_avx512_bf16() else A if AMX and cell != "gru_reset_before" else N
    assert cpu.route_bf16(spec) == want
    cpu._warned.discard(("cell", cell))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no bf16 kernel")
        y, h, _, cache = cpu.forward(spec, x, h0, None, w, compute_dtype=BF16)
    assert cache.backward.__name__ == "_backward_bf16_cells"
    assert ("cell", cell) not in cpu._warned
    line = cpu.describe_bf16()
    assert "GRU (both forms) and RNN on packed bf16 kernels" in line and "\n" not in line
    # forcing the emulated products off a CPU that has them warns nothing either
    with cpu.configure(bf16_native=False), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu.route_bf16(spec) == E
        cpu.forward(spec, x, h0, None, w, compute_dtype=BF16)
        assert "emulated products" in cpu.describe_bf16()


def test_nan_and_large_inputs_saturate():
    """A NaN input does in the bf16 kernels what the float32 kernels of the cell do
    (their clamped activations; the reset-before GRU's float32 path is the BLAS
    loop, whose scalar activations keep the NaN: there the NaN must stay in its
    row), and saturated units give exactly 1 (gradient 0)."""
    T, B, I, H = 3, 2, 4, 32
    x = np.zeros((T, B, I), np.float32)
    x[1, 0, 2] = np.nan
    x[:, 1] = 1e4
    h0 = np.zeros((B, H), np.float32)
    for cell in ("gru", "gru_reset_before", "rnn_tanh"):
        spec = get_cell(cell)
        G = GATES[cell]
        w = Weights(np.ones((G * H, I), np.float32), np.zeros((G * H, H), np.float32),
                    np.zeros(G * H, np.float32), np.zeros(G * H, np.float32), None)
        if G == 3:   # z -> 0 (its input weights negative): h' = n = tanh(big) = 1
            w.w_ih[H:2 * H] = -1
        y, h, _, cache = cpu.forward(spec, x, h0, None, w, compute_dtype=BF16)
        y32, _, _, cache32 = cpu.forward(spec, x, h0, None, w)
        dx = cpu.backward(spec, cache, np.ones_like(y), h0)[0]
        dx32 = cpu.backward(spec, cache32, np.ones_like(y), h0)[0]
        if cell != "gru_reset_before":
            np.testing.assert_array_equal(np.isnan(y), np.isnan(y32))
            np.testing.assert_array_equal(np.isnan(dx), np.isnan(dx32))
        assert (y[:, 1] == 1).all() and (y32[:, 1] == 1).all(), cell
        assert (dx[:, 1] == 0).all(), cell
        assert np.isfinite(y[0]).all() and np.isfinite(dx[:, 1]).all(), cell
