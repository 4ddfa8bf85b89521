"""The fused CPU kernels (fastrnn.kernels.cpu) against the NumPy reference.

Every cell, float32 and float64, every option of the backend contract:
initial state, lengths (none, all equal, all different, padded), reverse,
training and inference. Outputs and all gradients are compared with
``fastrnn.reference`` within the error bound of ``fastrnn.testing`` (the
problem's sum lengths, the kernels' float32 activation error, the arrays'
magnitude).
Shapes are small so the suite stays fast on two cores; the kernels compile
once per dtype and are cached on disk (``cache=True``) for later sessions.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastrnn import reference
from fastrnn.cells import CELLS
from fastrnn.dispatch import Weights

cpu = pytest.importorskip("fastrnn.kernels.cpu")
if not cpu.available()[0]:  # pragma: no cover - depends on the install
    pytest.skip(f"cpu backend unavailable: {cpu.available()[1]}", allow_module_level=True)

from fastrnn.testing import assert_close as _close, cell_terms  # noqa: E402

DTYPES = [np.float32, np.float64]
CELL_NAMES = list(CELLS)


# --------------------------------------------------------------------------- helpers
def make_case(cell, T, B, I, H, dtype, rng, state=True):
    """Random weights, input and state for one layer and direction."""
    G = cell.gates
    s = 1.0 / np.sqrt(H)

    def u(*shape):
        return rng.uniform(-s, s, shape).astype(dtype)

    peep = None if cell.peephole is None else u(3, *cell.peephole_shape(H))
    w = Weights(u(G * H, I), u(G * H, H), u(G * H), u(G * H), peep)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    if state:
        h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
        c0 = (0.5 * rng.standard_normal((B, H))).astype(dtype) if cell.has_cell else None
    else:
        h0 = np.zeros((B, H), dtype)
        c0 = np.zeros((B, H), dtype) if cell.has_cell else None
    return x, h0, c0, w


def make_lengths(kind, T, B, rng):
    if kind == "none":
        return None
    if kind == "full":          # all equal to T, given explicitly
        return np.full(B, T, np.int64)
    if kind == "equal":         # all equal, shorter than T: a padded tail
        return np.full(B, max(1, T - 2), np.int64)
    if kind == "different":     # all different when B <= T
        return rng.permutation(np.arange(T, 0, -1))[:B].astype(np.int64) if B <= T \
            else rng.integers(1, T + 1, B).astype(np.int64)
    if kind == "random":
        return rng.integers(1, T + 1, B).astype(np.int64)
    raise ValueError(kind)


def assert_close(a, b, dtype, what, terms, scale=0.0):
    if b is None:
        assert a is None, f"{what}: expected None"
        return
    assert a is not None, f"{what}: got None"
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    assert a.dtype == np.dtype(dtype), f"{what}: dtype {a.dtype}"
    _close(a, b, terms, scale=scale, err_msg=what)


def check_against_reference(name, T, B, I, H, dtype, lengths_kind="none", reverse=False,
                            state=True, seed=0):
    """Forward (training and inference) and backward of the cpu kernels vs the reference."""
    cell = CELLS[name]
    rng = np.random.default_rng(seed)
    x, h0, c0, w = make_case(cell, T, B, I, H, dtype, rng, state)
    lengths = make_lengths(lengths_kind, T, B, rng)
    inputs = [a.copy() for a in (x, h0) + ((c0,) if c0 is not None else ()) + tuple(
        a for a in w if a is not None)]

    fwd = cell_terms(cell, T, B, I, H, dtype=dtype, approx=True, backward=False)
    full = cell_terms(cell, T, B, I, H, dtype=dtype, approx=True)
    # forward terms: activations (|.| <= 1) and the carried state
    fs = max(1.0, *(np.abs(a).max() for a in (h0, c0) if a is not None))
    y, h, c, cache = cpu.forward(cell, x, h0, c0, w, lengths, reverse, True)
    yr, hr, cr, cache_r = reference.forward(cell, x, h0, c0, w, lengths, reverse, True)
    assert_close(y, yr, dtype, "y", fwd, fs)
    assert_close(h, hr, dtype, "h_n", fwd, fs)
    assert_close(c, cr, dtype, "c_n", fwd, fs)
    if lengths is not None:  # padded steps are exactly zero
        t = np.arange(T)[:, None]
        assert not y[t >= lengths[None, :]].any(), "y at padded steps must be 0"

    # inference: same outputs, nothing cached
    yi, hi, ci, cache_i = cpu.forward(cell, x, h0, c0, w, lengths, reverse, False)
    assert cache_i is None
    assert_close(yi, yr, dtype, "y (inference)", fwd, fs)
    assert_close(hi, hr, dtype, "h_n (inference)", fwd, fs)
    assert_close(ci, cr, dtype, "c_n (inference)", fwd, fs)

    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dh = rng.standard_normal((B, H)).astype(dtype)
    dc = rng.standard_normal((B, H)).astype(dtype) if cell.has_cell else None
    dx, dh0, dc0, dw = cpu.backward(cell, cache, dy, dh, dc)
    # the gradients' terms are upstream gradients times derivatives and weights
    up = max(fs, *(np.abs(a).max() for a in (dy, dh, dc) if a is not None))
    dxr, dh0r, dc0r, dwr = reference.backward(cell, cache_r, dy, dh, dc)
    assert_close(dx, dxr, dtype, "dx", full, up)
    assert_close(dh0, dh0r, dtype, "dh0", full, up)
    assert_close(dc0, dc0r, dtype, "dc0", full, up)
    assert isinstance(dw, Weights)
    for field in Weights._fields:
        assert_close(getattr(dw, field), getattr(dwr, field), dtype, f"d{field}", full, up)

    # inputs untouched, outputs fresh
    after = [x, h0] + ([c0] if c0 is not None else []) + [a for a in w if a is not None]
    for before, now in zip(inputs, after):
        np.testing.assert_array_equal(before, now)
    for out in (y, h, c, dx, dh0, dc0) + tuple(dw):
        if out is not None:
            assert not any(np.shares_memory(out, a) for a in after)


# --------------------------------------------------------------------------- the grid
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths_kind", ["none", "full", "equal", "different"])
def test_options(name, dtype, reverse, lengths_kind):
    check_against_reference(name, T=6, B=4, I=3, H=5, dtype=dtype,
                            lengths_kind=lengths_kind, reverse=reverse)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 3, 2, 4), (5, 1, 3, 2), (4, 2, 1, 1),
                                   (7, 3, 5, 17), (3, 5, 9, 33)],
                         ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_edge_shapes(name, dtype, shape):
    T, B, I, H = shape
    check_against_reference(name, T, B, I, H, dtype, lengths_kind="random", reverse=False)
    check_against_reference(name, T, B, I, H, dtype, lengths_kind="none", reverse=True,
                            state=False, seed=1)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh", "peephole_full"])
def test_two_thread_gemm_path(monkeypatch, cpu_settings, name):
    """A batch and width large enough that the recurrent GEMM uses 2 BLAS threads.

    Runs the BLAS-per-step loops (``use_packed`` off: the packed kernels call no
    BLAS in their time loop; their own threads are tested in
    tests/test_packed_threads.py) with a cap of 2 threads, spies on the thread
    switch, and checks that the time loop's product (``2 B G H H`` FLOPs) ran
    with OpenBLAS set to 2 threads in training forward, inference and backward,
    and that the results still match the reference."""
    # one loop, not two halves
    cpu_settings(use_packed=False, num_threads=2, split_min_flops=float("inf"))
    uses, blas_set = [], []
    real_use, real_set = cpu.blas.Threads.use, cpu.blas.blas_set_threads

    def use(self, flops):
        n = real_use(self, flops)
        uses.append((flops, n))
        return n

    def set_threads(n):
        blas_set.append(n)
        return real_set(n)

    monkeypatch.setattr(cpu.blas.Threads, "use", use)
    monkeypatch.setattr(cpu.blas, "blas_set_threads", set_threads)
    B, H = 64, 160
    check_against_reference(name, T=3, B=B, I=8, H=H, dtype=np.float32,
                            lengths_kind="random", reverse=True)
    loop_flops = 2.0 * B * CELLS[name].gates * H * H
    assert uses.count((loop_flops, 2)) >= 3, uses   # forward, inference, backward loops
    assert 2 in blas_set, blas_set


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize("split", [True, False], ids=["split", "whole"])
def test_batch_split(cpu_settings, name, dtype, split):
    """Both ways of running the loops: two concurrent halves of the batch, or one
    (``use_packed`` off: the packed kernels would run these cells instead)."""
    cpu_settings(use_packed=False, split_min_flops=0.0 if split else float("inf"), num_threads=2)
    assert len(cpu.loops_driver.row_ranges(5, 3, 1.0)) == (2 if split else 1)
    for B in (2, 3, 5):
        check_against_reference(name, T=5, B=B, I=3, H=6, dtype=dtype, lengths_kind="random",
                                reverse=B == 3, seed=B)
        check_against_reference(name, T=4, B=B, I=2, H=3, dtype=dtype, seed=B + 10)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_inference_in_chunks(cpu_settings, name, dtype):
    """Inference runs the input product in chunks of steps (bounded workspace);
    forcing 2-step chunks must not change anything, in either direction (the
    loops: ``use_packed`` off; the packed kernels' chunks are tested in
    tests/test_packed_threads.py)."""
    cpu_settings(use_packed=False, chunk_rows=1, chunk_min_steps=2)
    assert cpu.loops_driver.chunk_steps(7, 3) == 2
    for kind, reverse in (("none", False), ("none", True), ("different", False),
                          ("different", True), ("equal", True)):
        check_against_reference(name, T=7, B=3, I=2, H=4, dtype=dtype, lengths_kind=kind,
                                reverse=reverse, seed=int(reverse))


def test_inference_workspace_does_not_grow_with_T():
    """Inference memory beyond the output y stays flat when T doubles."""
    import tracemalloc
    cell = CELLS["lstm"]
    rng = np.random.default_rng(7)
    extra = {}
    for training in (False, True):
        for T in (512, 1024):
            x, h0, c0, w = make_case(cell, T, 2, 3, 8, np.float64, rng)
            cpu.forward(cell, x, h0, c0, w, None, False, training)
            tracemalloc.start()
            y = cpu.forward(cell, x, h0, c0, w, None, False, training)[0]
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            extra[training, T] = peak - y.nbytes
    assert extra[False, 1024] < 1.2 * extra[False, 512] + 4096, extra
    assert extra[True, 1024] > 1.8 * extra[True, 512], extra   # training keeps O(T)


@given(name=st.sampled_from(CELL_NAMES), dtype=st.sampled_from(DTYPES),
       T=st.integers(1, 6), B=st.integers(1, 4), I=st.integers(1, 5), H=st.integers(1, 9),
       reverse=st.booleans(), lengths_kind=st.sampled_from(["none", "random"]),
       state=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_random_shapes(name, dtype, T, B, I, H, reverse, lengths_kind, state, seed):
    check_against_reference(name, T, B, I, H, dtype, lengths_kind, reverse, state, seed)


# --------------------------------------------------------------------------- contract details
def test_reverse_starts_at_last_valid_step():
    """Reverse with lengths: y[lengths[b]-1, b] is the first step, from h0."""
    cell = CELLS["rnn_tanh"]
    rng = np.random.default_rng(3)
    x, h0, _, w = make_case(cell, 5, 2, 3, 4, np.float64, rng)
    lengths = np.array([3, 5])
    y, h, _, _ = cpu.forward(cell, x, h0, None, w, lengths, True, False)
    for b, L in enumerate(lengths):
        first = np.tanh(x[L - 1, b] @ w.w_ih.T + w.b_ih + h0[b] @ w.w_hh.T + w.b_hh)
        np.testing.assert_allclose(y[L - 1, b], first, rtol=1e-12)
        np.testing.assert_allclose(h[b], y[0, b])


def test_accepts_noncontiguous_and_other_dtype_weights():
    cell = CELLS["lstm"]
    rng = np.random.default_rng(4)
    x, h0, c0, w = make_case(cell, 4, 3, 5, 6, np.float32, rng)
    xt = np.asfortranarray(x)
    w64 = Weights(*(a.astype(np.float64) for a in w[:4]), None)
    y1 = cpu.forward(cell, x, h0, c0, w, None, False, False)[0]
    y2 = cpu.forward(cell, xt, h0, c0, w64, None, False, False)[0]
    assert y2.dtype == np.float32
    # both compiled: the same kernels on converted copies of the same values
    _close(y1, y2, cell_terms(cell, 4, 3, 5, 6, approx=True, backward=False))


def test_errors():
    cell = CELLS["lstm"]
    with pytest.raises(ValueError, match="cache"):
        cpu.backward(cell, None, None, None, None)
    bogus = type(cell)("nope", 1, ("h",), "rnn")
    with pytest.raises(ValueError, match="nope"):
        cpu.forward(bogus, np.zeros((1, 1, 1)), np.zeros((1, 1)), None, None, None, False, False)
    x = np.zeros((2, 1, 1), np.int32)
    with pytest.raises(TypeError, match="x"):
        cpu.forward(cell, x, np.zeros((1, 1)), np.zeros((1, 1)), None, None, False, False)
    # shape guards in front of the compiled loops (the layers check first)
    rng = np.random.default_rng(6)
    x, h0, c0, w = make_case(cell, 4, 3, 2, 5, np.float64, rng)
    bad = [dict(h0=h0[:, :4]), dict(c0=c0[:2]), dict(w=w._replace(w_ih=w.w_ih[:, :1])),
           dict(w=w._replace(b_hh=w.b_hh[:-1])), dict(lengths=np.array([1, 5, 2])),
           dict(lengths=np.array([1, 2]))]
    for kw in bad:
        args = dict(h0=h0, c0=c0, w=w, lengths=None)
        args.update(kw)
        with pytest.raises(ValueError):
            cpu.forward(cell, x, args["h0"], args["c0"], args["w"], args["lengths"], False, True)
    y, h, c, cache = cpu.forward(cell, x, h0, c0, w, None, False, True)
    with pytest.raises(ValueError, match="dy"):
        cpu.backward(cell, cache, y[:, :2], h, c)
    with pytest.raises(ValueError, match="dc_n"):
        cpu.backward(cell, cache, y, h, None)


def test_threads_setting_and_numpy_state_restored():
    before = cpu.get_num_threads()
    try:
        with pytest.raises(ValueError):
            cpu.set_num_threads(0)
        cpu.set_num_threads(1)
        assert cpu.get_num_threads() == 1
        blas_before = cpu.blas.blas_get_threads() if cpu.blas.blas_get_threads else None
        check_against_reference("lstm", T=3, B=64, I=8, H=160, dtype=np.float32)
        if blas_before is not None:  # NumPy's own BLAS setting is left as it was
            assert cpu.blas.blas_get_threads() == blas_before
    finally:
        cpu.set_num_threads(before)
    assert cpu.get_num_threads() == before
    # and the kernels still agree with the reference once the setting is put back
    check_against_reference("lstm", T=3, B=2, I=3, H=4, dtype=np.float32, seed=5)


def test_settings_configure_sets_and_restores():
    """cpu.configure sets fields of the one settings object, restores them on exit,
    and rejects an unknown field or a bad value before changing anything."""
    s = cpu.settings
    before = (s.use_packed, s.split_min_flops, s.packed_dtypes)
    with cpu.configure(use_packed=False, split_min_flops=0.0, packed_dtypes=[np.float32]) as st:
        assert st is s and not s.use_packed and s.split_min_flops == 0.0
        assert s.packed_dtypes == {np.dtype(np.float32)}
        assert cpu.route(CELLS["lstm"], np.dtype(np.float32), True) == "loops"
    assert (s.use_packed, s.split_min_flops, s.packed_dtypes) == before
    for bad in (dict(nope=1), dict(vector_width=12), dict(num_threads=0),
                dict(use_packed=False, num_threads=1.5)):
        with pytest.raises(ValueError):
            cpu.configure(**bad)
    assert (s.use_packed, s.split_min_flops, s.packed_dtypes) == before


def test_available():
    ok, why = cpu.available()
    assert ok and why == ""


def test_packed_kernels_only_where_the_cpu_has_wide_vectors(monkeypatch, cpu_settings):
    """The packed kernels run where the CPU has AVX2 or AVX-512; elsewhere the
    BLAS-per-step loops do, and describe() (fastrnn info) says which."""
    packed = pytest.importorskip("fastrnn.kernels.packed")
    assert cpu.settings.use_packed == (packed.host_simd() is not None)
    assert packed.host_simd() in (None, "avx2", "avx512")
    text = cpu.describe()
    assert ("packed kernels" in text) == cpu.settings.use_packed, text
    monkeypatch.setattr(packed, "host_simd", lambda: None)
    assert "no AVX2" in cpu.describe()
    cpu_settings(use_packed=False)
    # the loops still give the reference's answer
    check_against_reference("lstm", 4, 3, 2, 5, np.float32)


def test_num_threads_from_the_environment(tmp_path):
    """FASTRNN_NUM_THREADS sets the kernels' thread cap at import; a bad value
    is ignored with a warning naming it."""
    import subprocess
    import sys
    code = ("import warnings, fastrnn; warnings.simplefilter('error'); "
            "print(fastrnn.get_num_threads())")
    env = dict(__import__("os").environ, FASTRNN_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=tmp_path)     # the installed package, not the checkout's
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr
    env["FASTRNN_NUM_THREADS"] = "two"
    out = subprocess.run([sys.executable, "-W", "always", "-c",
                          "import fastrnn.kernels.cpu as c; print(c.get_num_threads())"],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "FASTRNN_NUM_THREADS='two'" in out.stderr, out.stderr


def test_rows_switch_calls_the_member_of_the_row_count_and_the_last_above():
    """kernels.simd.rows_switch, the drivers' one call over a family of row-count
    micro-kernels: member ``mr`` for ``1 <= mr < len``, the last member above, the
    arguments passed on (cast to each member's own signature)."""
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    from fastrnn.kernels.simd import rows_switch

    def make(m):
        @intrinsic
        def uk(typingctx, out, k):
            def codegen(context, builder, sig, args):
                p = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
                builder.store(builder.add(args[1], ir.Constant(ir.IntType(64), 100 * m)),
                              builder.gep(p, [args[1]]))
                return context.get_dummy_value()
            return types.void(types.int64, types.int64), codegen
        return uk

    sw = rows_switch([None] + [make(m) for m in range(1, 4)])

    @njit
    def run(out):
        for mr in range(1, 6):
            sw(mr, (out.ctypes.data, np.int32(mr)))     # int32: cast to the member's int64

    out = np.zeros(6, np.int64)
    run(out)
    np.testing.assert_array_equal(out, [0, 101, 202, 303, 304, 305])
