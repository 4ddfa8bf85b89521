"""Shared checks for the packed CPU kernels (tests/test_packed_*.py).

Each case runs ``fastrnn.kernels.cpu.forward``/``backward`` in float32 or
float64 on the packed path (training and inference) and compares everything
with the float64 NumPy reference within the error bound of ``fastrnn.testing``
for that dtype. Fixtures force each path: the 256-bit (AVX2) variant, two
threads on any step size (``cpu.settings.two_thread_step_flops = 0``, no back-off to
one thread), and each dtype.
"""
import numpy as np
import pytest

from fastrnn import reference
from fastrnn.cells import CELLS
from fastrnn.dispatch import Weights

cpu = pytest.importorskip("fastrnn.kernels.cpu")
if not cpu.available()[0]:  # pragma: no cover - depends on the install
    pytest.skip(f"cpu backend unavailable: {cpu.available()[1]}", allow_module_level=True)
packed = pytest.importorskip("fastrnn.kernels.packed")
plan = pytest.importorskip("fastrnn.kernels.plan")

from fastrnn.testing import assert_close, cell_terms, make_lengths, make_weights  # noqa: E402

#: (T, B, I, H): B=1; B not a multiple of the micro-kernel rows (6 / 3); H below,
#: equal to and not a multiple of the vector width; several forward panels and
#: several backward (4-vector) panels, the last one narrower
SHAPES = [(5, 1, 3, 5), (4, 7, 4, 16), (6, 13, 5, 20), (3, 8, 6, 70), (4, 2, 2, 130)]

#: (lengths kind, reverse, random h0): full, all different and unsorted, equal and
#: padded; forward and reverse; zero and random initial state
OPTIONS = [("none", False, True), ("different", True, True), ("different", False, False),
           ("equal", True, False), ("none", True, True)]


@pytest.fixture(params=[None, 8], ids=["vw-auto", "vw8"])
def vector_width(request, cpu_settings):
    cpu_settings(vector_width=request.param)
    return packed.vector_width()


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture(params=[1, "panels", "rows"], ids=["1thr", "2thr-panels", "2thr-rows"])
def threads(request, monkeypatch, cpu_settings):
    """One thread, or two threads from the smallest step on (never backing off),
    sharing each step's panels or splitting the batch rows (the LSTM's plan)."""
    monkeypatch.setattr(plan, "backoff", {"until": 0.0, "span": 0.05})
    if request.param != 1:
        rows = request.param == "rows"
        cpu_settings(two_thread_step_flops=0, split_gemm_flops=0, late_wait=2.0, num_threads=2,
                     row_split_bytes=1 << 40 if rows else -1, row_split_flops=0)
        assert plan.nthreads(2, 1.0, 2) == 2
    else:
        cpu_settings(num_threads=1)
    return request.param


def check_case(name, T, B, I, H, lengths_kind, reverse, state, seed=0, saved_type=None,
               dtype=np.float32):
    cell = CELLS[name]
    rng = np.random.default_rng(seed)
    w = make_weights(cell, I, H, rng, dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((B, H)) if state else np.zeros((B, H))).astype(dtype)
    c0 = (0.5 * rng.standard_normal((B, H)) if state else np.zeros((B, H))).astype(dtype) \
        if cell.has_cell else None
    # the reference runs in float64 on exactly the same values
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    w64 = Weights(*[f64(a) for a in w])
    x64, h064, c064 = f64(x), f64(h0), f64(c0)
    lengths = make_lengths(lengths_kind, T, B, rng)
    what = (f"{name} {np.dtype(dtype).name} T{T} B{B} I{I} H{H} lengths={lengths} "
            f"reverse={reverse}")

    y, h, c, cache = cpu.forward(cell, x, h0, c0, w, lengths, reverse, True)
    if saved_type is not None:
        assert isinstance(cache.saved, saved_type), f"{what}: not on the packed path"
    yr, hr, cr, cache_r = reference.forward(cell, x64, h064, c064, w64, lengths, reverse, True)

    fwd = cell_terms(cell, T, B, I, H, dtype=dtype, approx=True, backward=False)
    full = cell_terms(cell, T, B, I, H, dtype=dtype, approx=True)
    fs = max(1.0, *(np.abs(a).max() for a in (h0, c0) if a is not None))

    def close(a, b, label, terms=fwd, scale=fs):
        if b is None:
            assert a is None, f"{what}: {label}"
            return
        assert a.dtype == dtype and a.shape == b.shape, f"{what}: {label}"
        # against the float64 reference: the bound in the kernels' dtype
        assert_close(a, b, terms, scale=scale, dtype=dtype, err_msg=f"{what}: {label}")

    close(y, yr, "y")
    close(h, hr, "h_n")
    close(c, cr, "c_n")
    if lengths is not None:
        t = np.arange(T)[:, None]
        assert not y[t >= lengths[None, :]].any(), f"{what}: y at padded steps must be 0"

    yi, hi, ci, cache_i = cpu.forward(cell, x, h0, c0, w, lengths, reverse, False)
    assert cache_i is None
    # the same kernel with and without saving: bitwise the same outputs
    np.testing.assert_array_equal(yi, y, err_msg=f"{what}: y (inference)")
    np.testing.assert_array_equal(hi, h, err_msg=f"{what}: h_n (inference)")
    if c is not None:
        np.testing.assert_array_equal(ci, c, err_msg=f"{what}: c_n (inference)")

    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dh = rng.standard_normal((B, H)).astype(dtype)
    dc = rng.standard_normal((B, H)).astype(dtype) if cell.has_cell else None
    dx, dh0, dc0, dw = cpu.backward(cell, cache, dy, dh, dc)
    dxr, dh0r, dc0r, dwr = reference.backward(cell, cache_r, f64(dy), f64(dh), f64(dc))
    up = max(fs, *(np.abs(a).max() for a in (dy, dh, dc) if a is not None))
    close(dx, dxr, "dx", full, up)
    close(dh0, dh0r, "dh0", full, up)
    close(dc0, dc0r, "dc0", full, up)
    for field in ("w_ih", "w_hh", "b_ih", "b_hh"):
        close(getattr(dw, field), getattr(dwr, field), f"d{field}", full, up)
    assert dw.peep is None


def check_all_options(name, shape, saved_type, seed=0, dtype=np.float32):
    T, B, I, H = shape
    for k, (kind, reverse, state) in enumerate(OPTIONS):
        check_case(name, T, B, I, H, kind, reverse, state, seed=seed + k, saved_type=saved_type,
                   dtype=dtype)
