"""The CUDA backend (:mod:`fastrnn.kernels.cuda`) against the NumPy reference.

Without a GPU these run in Numba's CUDA simulator, which must be switched on
before ``numba.cuda`` is first imported, so run them in their own process::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda.py

On a machine with a GPU the same command without the variable runs them on
the device. With neither, the module is skipped with the reason.

The simulator runs every thread as a Python thread (~0.1 s per launch of 64
threads), so shapes are tiny (T <= 3, B = 2, H = 5) and the block sizes are
shrunk (GEMM tile 4, 4 threads per pointwise block) so that they still span
several blocks. The persistent kernel runs with a single block there: the
simulator's grid barrier only synchronises within one block.
"""
import numpy as np
import pytest

from fastrnn import reference
from fastrnn.cells import CELLS, get_cell
from fastrnn.dispatch import Weights

try:
    from fastrnn.kernels import cuda as kc
    AVAILABLE, WHY = kc.available()
except ImportError as exc:  # pragma: no cover - depends on the install
    kc, AVAILABLE, WHY = None, False, f"fastrnn.kernels.cuda does not import: {exc}"

pytestmark = [pytest.mark.cuda_sim, pytest.mark.skipif(
    not AVAILABLE, reason=f"CUDA backend unavailable: {WHY} (in its own pytest process)")]

SIM = bool(kc is not None and kc.SIMULATOR)

from fastrnn.testing import assert_close as _close, cell_terms, rnn_terms  # noqa: E402

# tiny launch configuration: several blocks even for B*H = 10
# the time-parallel products (T*B = 6 rows) take the register-blocked GEMM, the
# per-step ones (B = 2 rows) the simple one; the persistent products are split
# over 2 groups of 4 lanes; the bias sums are one chunk (a single pass: the
# second pass over several chunks is test_cuda_edges.py's)
SMALL = dict(tile=4, threads=4, persistent_threads=8, persistent_lanes=4,
             persistent_units=None, shared_bytes=48 * 1024, strategy="per_step",
             gemm_blocking=(4, 4, 2, 2, 2), blocked_min_rows=4, use_cupy=False,
             colsum_block=(4, 2), colsum_rows=64)

CELL_NAMES = list(CELLS)
T, B, I, H = 3, 2, 3, 5


def make_problem(name, dtype, seed=0):
    """Random weights, inputs, initial state and output gradients for one cell."""
    rng = np.random.default_rng(seed)
    cell = get_cell(name)
    G = cell.gates

    def r(*shape):
        return (0.5 * rng.standard_normal(shape)).astype(dtype)

    peep = r(3, *cell.peephole_shape(H)) if cell.peephole else None
    w = Weights(r(G * H, I), r(G * H, H), r(G * H), r(G * H), peep)
    x = r(T, B, I) * 2
    h0 = r(B, H) * 2
    c0 = r(B, H) * 2 if cell.has_cell else None
    dy = r(T, B, H) * 2
    dh_n = r(B, H) * 2
    dc_n = r(B, H) * 2 if cell.has_cell else None
    return cell, w, x, h0, c0, dy, dh_n, dc_n


#: the longest chain of sums of any cell at this module's shape (four gates, a
#: second product, three activations a step, forward and backward): the bound
#: for comparisons that do not name their own (fastrnn.testing)
TERMS = rnn_terms(T, B, I, H, gates=4, approx_activations=3, products=2)


def assert_close(name, actual, expected, dtype, terms=TERMS, scale=1.0):
    """The device result against the reference within fastrnn.testing's bound
    (``scale``: the magnitude of the summed terms when larger than the result's)."""
    if expected is None:
        assert actual is None, f"{name}: expected None"
        return
    actual = kc.to_host(actual)
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    _close(actual, expected, terms, scale=scale, dtype=dtype, err_msg=name)


def check(name, dtype, lengths, reverse, training=True, **config):
    cell, w, x, h0, c0, dy, dh_n, dc_n = make_problem(name, dtype)
    lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    ref = reference.forward(cell, x, h0, c0, w, lengths, reverse, training)
    fwd = cell_terms(cell, T, B, I, H, dtype=dtype, approx=True, backward=False)
    full = cell_terms(cell, T, B, I, H, dtype=dtype, approx=True)
    fs = max(1.0, *(np.abs(a).max() for a in (h0, c0) if a is not None))
    up = max(fs, *(np.abs(a).max() for a in (dy, dh_n, dc_n) if a is not None))
    with kc.configure(**{**SMALL, **config}):
        out = kc.forward(cell, x, h0, c0, w, lengths, reverse, training)
        for what, a, e in zip(("y", "h_n", "c_n"), out[:3], ref[:3]):
            assert_close(what, a, e, dtype, fwd, fs)
        if not training:
            assert out[3] is None
            return out
        dref = reference.backward(cell, ref[3], dy, dh_n, dc_n)
        dout = kc.backward(cell, out[3], dy, dh_n, dc_n)
    for what, a, e in zip(("dx", "dh0", "dc0"), dout[:3], dref[:3]):
        assert_close(what, a, e, dtype, full, up)
    for field, a, e in zip(Weights._fields, dout[3], dref[3]):
        assert_close("d" + field, a, e, dtype, full, up)
    return out


# ----------------------------------------------------------------------------- per step
# each cell: float64 reverse with lengths, float32 forward with lengths, float64 plain
CASES = [(np.float64, [3, 1], True), (np.float32, [2, 3], False), (np.float64, None, False)]


@pytest.mark.parametrize("dtype,lengths,reverse", CASES,
                         ids=["f64-lengths-reverse", "f32-lengths", "f64-plain"])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_per_step_matches_reference(name, dtype, lengths, reverse):
    out = check(name, dtype, lengths, reverse)
    assert out[3].strategy == "per_step"


@pytest.mark.parametrize("name", CELL_NAMES)
def test_inference_matches_reference(name):
    check(name, np.float32, [1, 3], True, training=False)


def test_float32_reverse_without_lengths():
    check("lstm", np.float32, None, True)


# ----------------------------------------------------------------------------- persistent
@pytest.mark.parametrize("dtype,lengths,reverse,shared",
                         [(np.float64, [3, 1], True, True), (np.float32, [2, 3], False, False)],
                         ids=["f64-lengths-reverse-shared", "f32-lengths-global"])
@pytest.mark.parametrize("name", kc.PERSISTENT_CELLS if kc else [])
def test_persistent_matches_reference(name, dtype, lengths, reverse, shared):
    # shared=False: the weight slice does not "fit", so it is read from global memory
    out = check(name, dtype, lengths, reverse, strategy="persistent",
                shared_bytes=48 * 1024 if shared else 0)
    assert out[3].strategy == "persistent"


@pytest.mark.parametrize("name", ["lstm", "gru", "peephole_full"])
def test_persistent_inference(name):
    check(name, np.float32, [3, 2], True, training=False, strategy="persistent")


@pytest.mark.skipif(SIM, reason="the simulator's grid sync covers one block only")
@pytest.mark.parametrize("name", CELL_NAMES)
def test_persistent_several_blocks(name):
    out = check(name, np.float32, [2, 3], True, strategy="persistent", persistent_units=2,
                persistent_threads=32)
    assert out[3].strategy == "persistent"


@pytest.mark.skipif(not SIM, reason="simulator-only guard")
def test_persistent_refuses_several_blocks_in_simulator():
    with pytest.raises(ValueError, match="one block"):
        check("lstm", np.float64, None, False, strategy="persistent", persistent_units=2)


# ----------------------------------------------------------------------------- plumbing
def test_available_reports_a_reason(monkeypatch):
    # the simulator says so; a GPU needs no reason
    assert kc.available() == ((True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)") if SIM
                              else (True, ""))
    # without numba.cuda: unavailable, and the import error is the reason
    monkeypatch.setattr(kc, "cuda", None)
    monkeypatch.setattr(kc, "_IMPORT_ERROR", ImportError("no module named 'numba.cuda'"))
    assert kc.available() == (False, "numba.cuda cannot be imported (no module named 'numba.cuda')")


def test_every_cell_has_its_device_functions():
    # the per-cell tables follow the registry: one point per dependent product
    # (forward and backward), and the two-product cells' persistent products
    from fastrnn.kernels import cuda_persistent, cuda_points
    two = {name for name, spec in CELLS.items() if spec.products == 2}
    assert two == {"gru_reset_before", "peephole_full"}
    for name, spec in CELLS.items():
        rows, cols = cuda_persistent.step_products(spec)
        assert (len(cuda_points.FORWARD_STEPS[name]) == len(cuda_points.BACKWARD_STEPS[name]) == len(rows)
                == len(cols) == spec.products), name
    assert set(cuda_points.FORWARD_STEPS) == set(cuda_points.BACKWARD_STEPS) == set(CELLS)
    assert set(cuda_persistent.TWO_PRODUCTS) == set(kc.TWO_PHASE_CELLS) == two
    assert kc.PERSISTENT_CELLS == tuple(CELLS)


def test_strategy_choice():
    lstm, gru_rb = get_cell("lstm"), get_cell("gru_reset_before")
    with kc.configure(strategy="auto", persistent_max_batch=4, persistent_max_hidden=16):
        assert kc.choose_strategy(lstm, 64, 8) == "per_step"
        assert kc.choose_strategy(lstm, 2, 32) == "per_step"      # H too large
        # the simulator never picks the grid-synchronised kernel implicitly
        assert kc.choose_strategy(lstm, 2, 8) == ("per_step" if SIM else "persistent")
    with kc.configure(strategy="persistent"):
        assert kc.choose_strategy(gru_rb, 1, 8) == "persistent"
    with kc.configure(strategy="per_step"):
        assert kc.choose_strategy(gru_rb, 1, 8) == "per_step"
    with pytest.raises(ValueError, match="strategy"):
        kc.configure(strategy="fast")
    with pytest.raises(ValueError, match="unknown"):
        kc.configure(blocks=3)
    with pytest.raises(ValueError, match="persistent_lanes"):
        kc.configure(persistent_lanes=3)


def test_device_arrays_in_and_out_and_inputs_untouched():
    from numba import cuda
    cell, w, x, h0, c0, dy, dh_n, dc_n = make_problem("lstm", np.float32, seed=1)
    host = [a.copy() for a in (x, h0, c0, dy, dh_n, dc_n)]
    dev = [cuda.to_device(a) for a in (x, h0, c0, dy, dh_n, dc_n)]
    wd = kc.to_device(w)
    with kc.configure(**SMALL):
        y, h, c, cache = kc.forward(cell, dev[0], dev[1], dev[2], wd, None, False, True)
        dx, dh0, dc0, dw = kc.backward(cell, cache, dev[3], dev[4], dev[5])
    for a in (y, h, c, dx, dh0, dc0, *dw[:4]):
        assert not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host")
    for before, d in zip(host, dev):
        np.testing.assert_array_equal(d.copy_to_host(), before)
    for before, d in zip(w[:4], wd[:4]):
        np.testing.assert_array_equal(d.copy_to_host(), before)
    ref = reference.forward(cell, x, h0, c0, w, None, False, False)
    assert_close("y", y, ref[0], np.float32)


@pytest.mark.parametrize("blocked", [False, True], ids=["simple", "blocked"])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False),
                                             (True, True)])
def test_gemm(trans_a, trans_b, blocked):
    rng = np.random.default_rng(2)
    M, N, K = 5, 6, 7           # not multiples of the tile: edge blocks are partial
    a = rng.standard_normal((K, M) if trans_a else (M, K))
    b = rng.standard_normal((N, K) if trans_b else (K, N))
    c0 = rng.standard_normal((M, N))
    bias = rng.standard_normal(N)
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b) + bias + c0
    from numba import cuda
    c = cuda.to_device(c0)
    # blocked: 8x4 tiles of C, 2x2 per thread, K in slices of 3 -> partial edges everywhere
    with kc.configure(tile=4, gemm_blocking=(8, 4, 3, 2, 2),
                      blocked_min_rows=1 if blocked else 10 ** 9):
        kc.device_gemm(cuda.to_device(a), cuda.to_device(b), c, bias=cuda.to_device(bias),
                 accumulate=True, trans_a=trans_a, trans_b=trans_b)
    np.testing.assert_allclose(c.copy_to_host(), expected, rtol=1e-12, atol=1e-12)


def test_default_launch_configuration():
    # the shipped block sizes (one block covers everything at this size)
    cell, w, x, h0, c0, dy, dh_n, dc_n = make_problem("gru", np.float64, seed=3)
    ref = reference.forward(cell, x, h0, c0, w, None, False, True)
    with kc.configure(strategy="per_step"):
        y, h, _, cache = kc.forward(cell, x, h0, c0, w, None, False, True)
        dx = kc.backward(cell, cache, dy, dh_n, None)[0]
    assert_close("y", y, ref[0], np.float64)
    assert_close("dx", dx, reference.backward(cell, ref[3], dy, dh_n, None)[0], np.float64,
                 scale=max(np.abs(dy).max(), np.abs(dh_n).max()))


@pytest.mark.skipif(SIM, reason="CuPy needs a real GPU")
@pytest.mark.parametrize("name", ["lstm", "gru_reset_before", "peephole_full"])
def test_cupy_gemm_path(name):
    pytest.importorskip("cupy")
    # every product through cuBLAS (cupy_min_rows=1), per-step ones included
    check(name, np.float32, [2, 3], True, use_cupy=True, cupy_min_rows=1)


def test_backward_needs_training_cache():
    cell = get_cell("rnn_tanh")
    with pytest.raises(ValueError, match="training=True"):
        kc.backward(cell, None, None, None, None)


@pytest.mark.parametrize("what", ["h0", "w_hh", "dtype", "peep", "lengths"])
def test_bad_arguments_are_named_before_any_kernel(what):
    cell, w, x, h0, c0, dy, dh_n, dc_n = make_problem("peephole_diagonal", np.float32)
    lengths = None
    if what == "h0":
        h0 = h0[:1]
    elif what == "w_hh":
        w = w._replace(w_hh=w.w_hh[:-1])
    elif what == "dtype":
        h0 = h0.astype(np.float64)
    elif what == "peep":
        w = w._replace(peep=None)
    elif what == "lengths":
        lengths = np.array([0, 3])
    with pytest.raises((ValueError, TypeError), match="h0|w_hh|peep|lengths"):
        kc.forward(cell, x, h0, c0, w, lengths, False, True)


def _gpu_check_module():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, path


def test_gpu_check_arguments_and_no_gpu_exit():
    import os
    import subprocess
    import sys
    gc, path = _gpu_check_module()
    args = gc.parse_args([])
    assert (args.batch, args.hidden, args.steps) == ([1, 8, 64, 256], [256, 1024], 100)
    assert gc.parse_args(["--smoke"]).steps <= 5
    with pytest.raises(SystemExit):
        gc.parse_args(["--cells", "transformer"])
    # with every GPU hidden and no simulator the script must stop at once and say why
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, str(path)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == gc.NO_GPU_EXIT, proc.stderr
    assert "no CUDA GPU" in proc.stderr and "Nothing was run" in proc.stderr


def test_non_contiguous_input_is_refused():
    from numba import cuda
    cell, w, x, h0, c0, dy, dh_n, dc_n = make_problem("rnn_tanh", np.float64)
    # every other column of a [B, 2H] device array: a strided [B, H] view on a
    # GPU and in the simulator alike (``.T`` of a device array is a contiguous
    # copy on a GPU and a view only in the simulator)
    wide = np.zeros((B, 2 * H))
    wide[:, ::2] = h0
    h0_s = cuda.to_device(wide)[:, ::2]
    assert tuple(h0_s.shape) == (B, H) and not h0_s.is_c_contiguous()
    with pytest.raises(ValueError, match="h0 must be C-contiguous"):
        kc.forward(cell, x, h0_s, c0, w, None, False, False)


def test_layer_end_to_end_on_the_real_kernels():
    # the layers' device path (stacking, both directions, dropout, batch_first,
    # lengths) over these kernels equals the NumPy backend
    from numba import cuda
    from _variants import make
    kw = dict(num_layers=2, bidirectional=True, dropout=0.3, batch_first=True,
              dtype=np.float64, seed=0)
    host = make("lstm", 3, 4, backend="numpy", **kw)
    dev = make("lstm", 3, 4, backend="cuda", **kw)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3))
    dy = rng.normal(size=(2, 5, 8))
    with kc.configure(**SMALL):
        y1, _ = host(x, lengths=[5, 3])
        y2, _ = dev(cuda.to_device(x), lengths=[5, 3])
        dx1, _ = host.backward(dy)
        dx2, _ = dev.backward(cuda.to_device(dy))
    terms = cell_terms("lstm", 5, 2, 3, 4, 2, 2, np.float64, approx=True)
    up = np.abs(dy).max()
    assert_close("y", y2, y1, np.float64, terms)
    assert_close("dx", dx2, dx1, np.float64, terms, up)
    for k in host.grads:
        assert_close(k, dev.grads[k], host.grads[k], np.float64, terms, up)
