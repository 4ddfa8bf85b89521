"""The AMX products after the bf16 LSTM's backward loop (:mod:`fastrnn.kernels.amx_gemm`)
against NumPy on bf16 values: the products of bf16 values are exact in float32, so
the float32 sums may differ only in their order (``cell_terms``-style bound
``2 * gamma_K * sum |a||b|``; here: ``assert_close`` with ``K`` terms and the scale
of the absolute products). Shapes small, but past one block of the weight
gradient's k blocking (``KB`` chunks of 32) and with ragged edges."""
import numpy as np
import pytest

pytest.importorskip("numba")

from fastrnn.kernels import cpu  # noqa: E402
from fastrnn.testing import assert_close  # noqa: E402

if cpu.packed_bf16 is None:  # pragma: no cover
    pytest.skip("the packed bf16 kernels did not import", allow_module_level=True)

from fastrnn.kernels import amx_bf16  # noqa: E402

if not amx_bf16.available():
    pytest.skip("no AMX-BF16 tiles here", allow_module_level=True)

from fastrnn.kernels import amx_gemm as ag  # noqa: E402
from fastrnn.kernels.packed_bf16 import aligned, from_bits, to_bits  # noqa: E402


def _close(got, a, b, K):
    want = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    assert_close(got, want, K, scale=float(scale.max()), dtype=np.float32)


def test_pack_a_steps_is_the_transpose_in_tiles():
    rng = np.random.default_rng(0)
    n, B, Bx, F = 7, 5, 9, 48                     # 35 rows: one full chunk and a ragged one
    src = rng.integers(0, 1 << 16, (n, Bx, F + 16)).astype(np.uint16)[:, :B, :F]
    R = n * B
    out = aligned((F // 16, 2, 16, 32), np.uint16)
    ag.pack_a_steps(src, B, out)
    want = np.zeros((F, 64), np.uint16)
    want[:, :R] = src.reshape(R, F).T
    np.testing.assert_array_equal(out, want.reshape(F // 16, 16, 2, 32).transpose(0, 2, 1, 3))


def test_weight_gradient_over_several_k_blocks():
    """dWᵀ = [x h]ᵀ dg with K = 2 * KB * 32 + 40 (three k blocks, the last ragged), the
    columns split in two ranges as the tasks do, transposed into the parameters' layout."""
    rng = np.random.default_rng(1)
    I, Ip, H, Hp = 20, 32, 24, 32                 # padded x and h widths and units
    Nx, GH = Ip + Hp, 4 * Hp
    n, B = 2 * ag.KB + 2, 20                      # K = n*B rows
    R = n * B
    x = to_bits(rng.standard_normal((n, B, Nx)).astype(np.float32))
    g = to_bits(rng.standard_normal((R, GH)).astype(np.float32))
    vt = aligned(ag.vnni_shape(n, B, GH), np.uint16)
    ag.pack_b_steps(g[None], R, vt, 0, GH)
    at = aligned((Nx // 16, vt.shape[1] // 16, 16, 32), np.uint16)
    ag.pack_a_steps(x, B, at)
    ct = aligned((GH // 16, Nx // 16, 16, 16), np.float32, zero=False)
    dw_ih = np.empty((4 * H, I), np.float32)
    dw_hh = np.empty((4 * H, H), np.float32)
    for j0, j1 in ((0, 64), (64, GH)):
        ag.dwt_gemm(at, vt, ct, I, Ip, H, Hp, dw_ih, dw_hh, j0, j1)
    a, b = from_bits(g).T, from_bits(x).reshape(R, Nx)           # dW = dgᵀ [x h]
    units = (np.arange(4)[:, None] * Hp + np.arange(H)[None]).reshape(-1)
    _close(dw_ih, a[units], b[:, :I], R)
    _close(dw_hh, a[units], b[:, Ip:Ip + H], R)


@pytest.mark.parametrize("B", [8, 20])
def test_dx_and_dh0_read_the_gate_gradients_in_place(B):
    """dx = dg W_ih over rows that do not fill whole tiles; dh0 = dg_0 U from U's panels."""
    from fastrnn.kernels.packed_bf16 import pack_bf16
    rng = np.random.default_rng(B)
    I, H, n = 40, 72, 3                         # Hp = 80: U's panels of 64 and 16 units
    w_ih = rng.standard_normal((4 * H, I)).astype(np.float32)
    w_hh = rng.standard_normal((4 * H, H)).astype(np.float32)
    bias = np.zeros(4 * H, np.float32)
    pk = pack_bf16(w_ih, w_hh, bias, bias, True, None, 32)
    Hp, Ip, GH = pk.Hp, pk.Ip, 4 * pk.Hp
    R = n * B
    Rp = -(-R // 32) * 32
    dgf = aligned((Rp + 32, GH + 32), np.uint16)
    dgf[:R, :GH] = to_bits(rng.standard_normal((R, GH)).astype(np.float32))
    wt = aligned((Ip // 16, GH // 2, 16, 2), np.uint16)
    ag.pack_wih(pk.wb_ih, H, Hp, wt)
    dxp = aligned((Rp + 32, Ip), np.float32, zero=False)
    ag.dx_gemm(dgf, wt, dxp, 0, Rp)
    dh0 = aligned((B + 32, Hp), np.float32, zero=False)
    ag.dh0_gemm(dgf, B, pk.ub, Hp, pk.nvb * 16, dh0)
    gates = (np.arange(4)[:, None] * Hp + np.arange(H)[None]).reshape(-1)
    dg = from_bits(dgf[:R, gates])
    _close(dxp[:R, :I], dg, from_bits(pk.wb_ih), GH)
    _close(dh0[:B, :H], dg[:B], from_bits(pk.wb_hh), GH)


@pytest.mark.parametrize("H", [7, 16])
def test_pack_wih_pairs_the_gate_rows(H):
    """W_ih's bits in k pairs of gate rows (g*Hp + unit), zeros for padded units and
    columns: an odd H leaves a unit's pair partner padded."""
    rng = np.random.default_rng(H)
    I = 20
    Hp, Ip = -(-H // 16) * 16, 32
    wbi = rng.integers(0, 1 << 16, (4 * H, I)).astype(np.uint16)
    out = aligned((Ip // 16, 2 * Hp, 16, 2), np.uint16)
    ag.pack_wih(wbi, H, Hp, out)
    rows = np.zeros((4, Hp, Ip), np.uint16)
    rows[:, :H, :I] = wbi.reshape(4, H, I)
    want = rows.reshape(2 * Hp, 2, Ip // 16, 16).transpose(2, 0, 3, 1)
    np.testing.assert_array_equal(out, want)
