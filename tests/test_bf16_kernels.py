"""The cpu backend's bfloat16 compute mode: the bf16 micro-kernels and the packed
bf16 LSTM against NumPy and the reference's bf16 mode (``fastrnn.reference``).

Bounds (tests/README.md): one step (T=1, given h0/c0) the two sides round the
same forward operands, so their outputs differ only in the order of float32
sums: ``cell_terms(..., approx=True)`` in float32. Over a sequence the two
sides' float32 ``h`` may round to neighbouring bf16 values (a flip of one bf16
ulp, at most ``2u`` relative with ``u = 2^-9``, in one operand), so each
product stage may differ by ``2u`` of its magnitude: the bound of
``bf16_terms``; the same holds for the gradients from the first step on (the
gate gradients are rounded after each side's own float32 arithmetic).
The native (``vdpbf16ps``) and the emulated products are compared the same way.
"""
import warnings

import numpy as np
import pytest

pytest.importorskip("numba")

from fastrnn import reference as ref  # noqa: E402
from fastrnn.bf16 import has_avx512_bf16, round_bf16  # noqa: E402
from fastrnn.cells import get_cell  # noqa: E402
from fastrnn.contract import Weights  # noqa: E402
from fastrnn.kernels import cpu  # noqa: E402
from fastrnn.testing import assert_close, bf16_terms, cell_terms  # noqa: E402

if cpu.packed_bf16 is None:  # pragma: no cover
    pytest.skip("the packed bf16 kernels did not import", allow_module_level=True)

from numba import njit  # noqa: E402

from fastrnn.kernels import packed_bf16 as pb  # noqa: E402
from fastrnn.kernels.bf16_simd import EMULATED, NATIVE, uk_bf16_gemm, vround_bf16  # noqa: E402

BF16 = "bfloat16"
native_only = pytest.mark.skipif(not has_avx512_bf16(), reason="no AVX512-BF16 on this CPU")
with cpu.configure(bf16_native=True, bf16_amx=True):
    #: whether the AMX route of the bf16 mode runs here (AMX-BF16 tiles granted)
    AMX = cpu.route_bf16(get_cell("lstm")) == "amx"
amx_only = pytest.mark.skipif(not AMX, reason="no AMX-BF16 tiles here")
MODES = [pytest.param(True, marks=native_only, id="native"), pytest.param(False, id="emulated")]
#: the settings that force each route of cpu.route_bf16
ROUTES = {"amx": dict(bf16_native=True, bf16_amx=True),
          "native": dict(bf16_native=True, bf16_amx=False),
          "emulated": dict(bf16_native=False), "reference": {}}


def _bits_ref(a):
    return (round_bf16(a).view(np.uint32) >> np.uint32(16)).astype(np.uint16)


@njit
def _vround(src, dst):
    for i in range(0, src.shape[0], 16):
        vround_bf16(src.ctypes.data + 4 * i, dst.ctypes.data + 2 * i)


def test_rounding_matches_round_bf16_bit_for_bit():
    rng = np.random.default_rng(0)
    special = np.array([0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x7F800000, 0xFF800000,
                        0x7F800001, 0xFFC00000, 0x7FBFFFFF, 0x3F808000, 0x3F818000, 0x3F807FFF,
                        0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0x3F800000], np.uint32)
    u = np.concatenate([special, rng.integers(0, 2**32, 16 * 4096, dtype=np.uint64)
                        .astype(np.uint32)])
    a = u.view(np.float32)
    want = _bits_ref(a)
    got = np.zeros_like(want)
    _vround(a, got)
    np.testing.assert_array_equal(got, want)          # the kernels' epilogue rounding
    np.testing.assert_array_equal(pb.to_bits(a), want)  # the drivers' (x, weights)


@pytest.mark.parametrize("native", [pytest.param(True, marks=native_only), False])
def test_dot_product_probe_sums_its_products(native):
    # the peak probe of bench/bf16_lstm.py --peak: each round adds 1*1 + 1*1.0078125
    # (bf16 0x3F80 times 0x3F80 and 0x3F81) to each of PROBE_ACCS accumulators
    from fastrnn.kernels.bf16_simd import PROBE_ACCS, uk_dp_probe
    run = njit(lambda tag, n: uk_dp_probe(tag, n))
    for n in (1, 7):
        assert run(NATIVE if native else EMULATED, n) == PROBE_ACCS * n * 2.0078125


def _gemm_run(tag, MR, nv, a, w, KK, out):
    k = uk_bf16_gemm[MR]
    run = njit(lambda tag, ntag, a, w, KK, out: k(tag, ntag, a.ctypes.data, a.shape[1],
                                                  w.ctypes.data, KK, out.ctypes.data,
                                                  out.shape[1]))
    run(tag, (0,) * nv, a, w, KK, out)


@pytest.mark.parametrize("native", MODES)
@pytest.mark.parametrize("MR,NV,K", [(1, 1, 2), (6, 4, 38), (3, 2, 64)])
def test_micro_kernel_matches_numpy(native, MR, NV, K):
    """acc[r, v*16+j] = sum_k a[r,k] w[k, v*16+j] over k pairs, in both modes."""
    rng = np.random.default_rng(MR * 100 + K)
    a = rng.standard_normal((MR, K)).astype(np.float32)
    w = rng.standard_normal((K, 16 * NV)).astype(np.float32)
    ab = _bits_ref(a)
    wb = np.ascontiguousarray(_bits_ref(w).reshape(K // 2, 2, 16 * NV).transpose(0, 2, 1))
    out = np.full((MR, 16 * NV), np.nan, np.float32)
    _gemm_run(NATIVE if native else EMULATED, MR, NV, ab, wb, K // 2, out)
    want = round_bf16(a).astype(np.float64) @ round_bf16(w).astype(np.float64)
    scale = np.abs(round_bf16(a)).astype(np.float64) @ np.abs(round_bf16(w))
    assert_close(out, want, K, scale=float(scale.max()), dtype=np.float32)


# --------------------------------------------------------------------------- the LSTM
def _args(cell, T, B, I, H, rng):
    cell = get_cell(cell)
    k = 1 / np.sqrt(H)
    f = lambda *s, a=1.0: rng.uniform(-a, a, s).astype(np.float32)  # noqa: E731
    peep = f(3, H, a=k) if cell.peephole is not None else None
    w = Weights(f(4 * H, I, a=k), f(4 * H, H, a=k), f(4 * H, a=k), f(4 * H, a=k), peep)
    return f(T, B, I), f(B, H), f(B, H), w


def _run(backend_forward, backend_backward, cell, args, up, lengths, reverse):
    y, h, c, cache = backend_forward(cell, *args, lengths, reverse, True, compute_dtype=BF16)
    dx, dh0, dc0, dw = backend_backward(cell, cache, *up)
    out = dict(y=y, h_n=h, c_n=c, dx=dx, dh0=dh0, dc0=dc0, dw_ih=dw.w_ih, dw_hh=dw.w_hh,
               db_ih=dw.b_ih, db_hh=dw.b_hh)
    if dw.peep is not None:
        out["dpeep"] = dw.peep
    return out


FWD = ("y", "h_n", "c_n")


def _compare(got, want, terms_fwd, terms_all, dtype, keys=None):
    for k, v in want.items():
        if keys is None or k in keys:
            terms = terms_fwd if k in FWD else terms_all
            assert_close(got[k], v, terms, scale=1.0, dtype=dtype, err_msg=k)


CASES = [  # cell, T, B, I, H, lengths, reverse, route
    pytest.param("lstm", 5, 7, 5, 20, (5, 3, 5, 1, 2, 4, 5), True, "native", marks=native_only,
                 id="lstm-native-lengths-reverse-padded"),
    pytest.param("lstm", 4, 9, 6, 32, None, False, "native", marks=native_only, id="lstm-native"),
    # the peephole variants on the route this machine runs by default (one more
    # compile instead of three)
    # (50 rows: on the AMX route, its segment-blocked forward)
    pytest.param("peephole_diagonal", 4, 50, 3, 17, (4, 2, 3) * 16 + (1, 4), False, None,
                 id="peephole"),
    pytest.param("lstm", 5, 7, 5, 20, (5, 3, 5, 1, 2, 4, 5), True, "emulated",
                 id="lstm-emulated-lengths-reverse-padded"),
    pytest.param("lstm", 5, 19, 5, 20, (5, 3, 5, 1, 2, 4, 5) * 2 + (5,) * 5, True, "amx",
                 marks=amx_only, id="lstm-amx-lengths-reverse-padded"),
    pytest.param("lstm", 4, 9, 40, 32, None, False, "amx", marks=amx_only, id="lstm-amx"),
    # 50 rows, H = 64: the AMX forward and backward blocked by weight segments and row
    # pairs (32+ rows)
    pytest.param("lstm", 3, 50, 40, 64, (3, 1, 2) * 16 + (3, 3), False, "amx", marks=amx_only,
                 id="lstm-amx-segments-lengths"),
    pytest.param("peephole_diagonal", 3, 40, 3, 64, None, False, "amx", marks=amx_only,
                 id="peephole-amx-segments"),
]


@pytest.mark.parametrize("cell,T,B,I,H,lengths,reverse,route", CASES)
def test_lstm_matches_the_bf16_reference(cell, T, B, I, H, lengths, reverse, route):
    rng = np.random.default_rng(T * 1000 + B * 10 + H)
    spec = get_cell(cell)
    x, h0, c0, w = _args(cell, T, B, I, H, rng)
    lens = None if lengths is None else np.array(lengths)
    up = (rng.uniform(-1, 1, (T, B, H)).astype(np.float32),
          rng.uniform(-1, 1, (B, H)).astype(np.float32),
          rng.uniform(-1, 1, (B, H)).astype(np.float32))
    route = route or cpu.route_bf16(spec)
    with cpu.configure(**ROUTES[route]):
        assert cpu.route_bf16(spec) == route
        got = _run(cpu.forward, cpu.backward, spec, (x, h0, c0, w), up, lens, reverse)
        # one step from the same h0/c0: the same rounded operands on both sides
        got1 = _run(cpu.forward, cpu.backward, spec, (x[:1], h0, c0, w),
                    (up[0][:1], up[1], up[2]), None, False)
    want = _run(ref.forward, ref.backward, spec, (x, h0, c0, w), up, lens, reverse)
    want1 = _run(ref.forward, ref.backward, spec, (x[:1], h0, c0, w),
                 (up[0][:1], up[1], up[2]), None, False)
    # (the outputs; the gate gradients are float32 results of both sides' own sums
    # before they are rounded, so the gradients may already see a bf16 flip)
    _compare(got1, want1, cell_terms(spec, 1, B, I, H, approx=True, backward=False),
             None, np.float32, FWD)
    _compare(got1, want1, None, bf16_terms(spec, 1, B, I, H, approx=True), BF16,
             set(want1) - set(FWD))
    _compare(got, want, bf16_terms(spec, T, B, I, H, backward=False, approx=True),
             bf16_terms(spec, T, B, I, H, approx=True), BF16)
    # inference (no cache; chunks of 2 steps through its small buffers) computes the
    # training pass's forward numbers exactly
    with cpu.configure(infer_chunk_steps=2, **ROUTES[route]):
        y, h, c, cache = cpu.forward(spec, x, h0, c0, w, lens, reverse, False,
                                     compute_dtype=BF16)
    assert cache is None
    np.testing.assert_array_equal(y, got["y"])
    np.testing.assert_array_equal(h, got["h_n"])
    np.testing.assert_array_equal(c, got["c_n"])


@native_only
def test_the_routes_agree():
    spec = get_cell("lstm")
    T, B, I, H = 5, 7, 5, 20
    rng = np.random.default_rng(5)
    x, h0, c0, w = _args("lstm", T, B, I, H, rng)
    up = (np.ones((T, B, H), np.float32), np.ones((B, H), np.float32),
          np.ones((B, H), np.float32))
    routes = ["native", "emulated"] + (["amx"] if AMX else [])
    res = []
    for route in routes:
        with cpu.configure(**ROUTES[route]):
            res.append(_run(cpu.forward, cpu.backward, spec, (x, h0, c0, w), up, None, False))
    for r in res[1:]:
        _compare(r, res[0], bf16_terms(spec, T, B, I, H, backward=False, approx=True),
                 bf16_terms(spec, T, B, I, H, approx=True), BF16)


@pytest.mark.parametrize("route", [pytest.param("native", marks=native_only),
                                   pytest.param("amx", marks=amx_only), "emulated"])
def test_bitwise_the_same_on_one_and_two_threads(route):
    """The thread split depends on the shape only (rows or panels), on every route
    (B = 56: on the AMX route one thread's 56 rows run the segment-blocked forward,
    two threads' 28 the 16-row one)."""
    spec = get_cell("lstm")
    T, B, I, H = 6, 56, 8, 64
    rng = np.random.default_rng(6)
    x, h0, c0, w = _args("lstm", T, B, I, H, rng)
    up = (rng.uniform(-1, 1, (T, B, H)).astype(np.float32), h0, c0)
    res = []
    old = cpu.get_num_threads()
    try:
        for n, split in ((1, "rows"), (2, "rows"), (2, "panels")):
            cpu.set_num_threads(n)
            kw = dict(row_split_flops=0.0, two_thread_step_flops=0.0, oversubscribe=True,
                      row_split_bytes=(1 << 30) if split == "rows" else 0, **ROUTES[route])
            with cpu.configure(**kw):
                res.append(_run(cpu.forward, cpu.backward, spec, (x, h0, c0, w), up, None,
                                False))
    finally:
        cpu.set_num_threads(old)
    for r in res[1:]:
        for k in res[0]:
            np.testing.assert_array_equal(r[k], res[0][k], err_msg=k)


def test_nan_propagates_and_large_inputs_saturate():
    spec = get_cell("lstm")
    T, B, I, H = 3, 2, 4, 16
    x = np.zeros((T, B, I), np.float32)
    x[1, 0, 2] = np.nan
    x[:, 1] = 1e4
    w = Weights(np.ones((4 * H, I), np.float32), np.zeros((4 * H, H), np.float32),
                np.zeros(4 * H, np.float32), np.zeros(4 * H, np.float32), None)
    h0 = np.zeros((B, H), np.float32)
    c0 = np.full((B, H), 10.0, np.float32)
    y, h, c, cache = cpu.forward(spec, x, h0, c0, w, compute_dtype=BF16)
    y32, h32, c32, cache32 = cpu.forward(spec, x, h0, c0, w)
    # a NaN input does what it does in float32 (the kernels' clamped activations)
    for a, b in ((y, y32), (h, h32), (c, c32)):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    # row 1: every gate exactly 0/1, tanh(c >= 10) exactly 1
    assert (y[:, 1] == 1).all()
    dx, dh0, dc0, dw = cpu.backward(spec, cache, np.ones_like(y), h0, h0)
    assert (dx[:, 1] == 0).all()
    dx32 = cpu.backward(spec, cache32, np.ones_like(y), h0, h0)[0]
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(dx32))


def test_errors_and_routing():
    spec = get_cell("lstm")
    rng = np.random.default_rng(7)
    x, h0, c0, w = _args("lstm", 2, 2, 3, 16, rng)
    w64 = Weights(*(a.astype(np.float64) for a in w[:4]), None)
    with pytest.raises(ValueError, match="compute_dtype"):
        cpu.forward(spec, x.astype(np.float64), h0, c0, w64, compute_dtype=BF16)
    with pytest.raises(ValueError, match="compute_dtype"):
        cpu.forward(spec, x, h0, c0, w, compute_dtype="float16")
    from fastrnn.kernels import cuda
    with pytest.raises(ValueError, match="CPU backends only"):
        cuda.forward(spec, x, h0, c0, w, compute_dtype=BF16)
    line = cpu.describe_bf16()
    assert line.startswith("bfloat16 mode") and "\n" not in line
    word = {"amx": "AMX-BF16 tiles", "native": "vdpbf16ps", "emulated": "emulated",
            "reference": "reference"}[cpu.route_bf16(spec)]
    assert word in line
    # a cell without a bf16 kernel runs the reference's bf16 code (warned once)
    full = get_cell("peephole_full")
    g = w._replace(peep=rng.uniform(-0.25, 0.25, (3, 16, 16)).astype(np.float32))
    assert cpu.route_bf16(full) == "reference"
    cpu._warned.discard(("cell", "peephole_full"))
    with pytest.warns(RuntimeWarning, match="no bf16 kernel"):
        y, h, _, cache = cpu.forward(full, x, h0, c0, g, compute_dtype=BF16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cpu.forward(full, x, h0, c0, g, compute_dtype=BF16)
    yr, hr, _, cr = ref.forward(full, x, h0, c0, g, compute_dtype=BF16)
    np.testing.assert_array_equal(y, yr)
    dx = cpu.backward(full, cache, np.ones_like(y), h0, c0)[0]
    np.testing.assert_array_equal(dx, ref.backward(full, cr, np.ones_like(y), h0, c0)[0])


def test_weight_packing_is_the_same_on_one_and_two_threads():
    """pack_bf16 splits large weights (PACK_SPLIT elements and more) over the threads."""
    rng = np.random.default_rng(9)
    I, H = 64, 250
    w_ih = rng.standard_normal((4 * H, I)).astype(np.float32)
    w_hh = rng.standard_normal((4 * H, H)).astype(np.float32)
    b = np.zeros(4 * H, np.float32)
    assert w_ih.size + w_hh.size >= pb.PACK_SPLIT
    old = cpu.get_num_threads()
    try:
        cpu.set_num_threads(2)
        with cpu.configure(oversubscribe=True):
            for kmult in (2, 32):
                one = pb.pack_bf16(w_ih, w_hh, b, b, True, None, kmult, 1)
                two = pb.pack_bf16(w_ih, w_hh, b, b, True, None, kmult, 2)
                for k in ("up", "ub", "wb_ih", "wb_hh"):
                    np.testing.assert_array_equal(getattr(two, k), getattr(one, k), err_msg=k)
                # inference packs straight from the float32 weights: the same panels,
                # which are [W_ih 0 W_hh 0]ᵀ's bits by 16 units, gates side by side
                Ip, Kh, P = one.Ip, one.Kh, one.Hp // 16
                full = np.zeros((4, one.Hp, Ip + Kh), np.uint16)
                full[:, :H, :I] = pb.to_bits(w_ih).reshape(4, H, I)
                full[:, :H, Ip:Ip + H] = pb.to_bits(w_hh).reshape(4, H, H)
                want = full.reshape(4, P, 16, (Ip + Kh) // 2, 2).transpose(1, 3, 0, 2, 4)
                np.testing.assert_array_equal(one.up, want.reshape(one.up.shape))
                for t in (1, 2):
                    inf = pb.pack_bf16(w_ih, w_hh, b, b, False, None, kmult, t)
                    np.testing.assert_array_equal(inf.up, one.up)
    finally:
        cpu.set_num_threads(old)
