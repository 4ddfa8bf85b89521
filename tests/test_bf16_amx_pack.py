"""The AMX route's vector packing (:mod:`fastrnn.kernels.amx_pack`) against the scalar
packing of :mod:`fastrnn.kernels.packed_bf16` and :func:`fastrnn.bf16.round_bf16`:
bitwise equal (the same rounding, the same layout), on ragged shapes (I and H not
multiples of 16 or 32: zero columns, zero units) and special values (NaN, infinities,
denormals, signed zeros, ties)."""
import numpy as np
import pytest

pytest.importorskip("numba")

from fastrnn.kernels import cpu  # noqa: E402

if cpu.packed_bf16 is None:  # pragma: no cover
    pytest.skip("the packed bf16 kernels did not import", allow_module_level=True)

from fastrnn.bf16 import has_avx512_bf16, round_bf16  # noqa: E402

if not has_avx512_bf16():  # pragma: no cover
    pytest.skip("amx_pack rounds with vcvtne2ps2bf16 (AVX512-BF16: the AMX route's CPUs have it)",
                allow_module_level=True)

from fastrnn.kernels import amx_pack  # noqa: E402
from fastrnn.kernels import packed_bf16 as pb  # noqa: E402

SPECIAL = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0x7F800000, 0xFF800000, 0x00000001,
                    0x807FFFFF, 0x80000000, 0x00000000, 0x3F808000, 0x3F818000, 0x7F7FFFFF,
                    0x00800000], np.uint32).view(np.float32)


def _weights(rng, I, H):
    w_ih = rng.standard_normal((4 * H, I)).astype(np.float32)
    w_hh = rng.standard_normal((4 * H, H)).astype(np.float32)
    w_ih.reshape(-1)[:min(w_ih.size, SPECIAL.size)] = SPECIAL[:w_ih.size]
    w_hh.reshape(-1)[-min(w_hh.size, SPECIAL.size):] = SPECIAL[:w_hh.size]
    return w_ih, w_hh


@pytest.mark.parametrize("I,H", [(256, 64), (3, 5), (33, 17), (100, 48), (7, 130)])
def test_pack_tiles_and_u_match_the_scalar_packing(I, H):
    rng = np.random.default_rng(I * 1000 + H)
    w_ih, w_hh = _weights(rng, I, H)
    Hp = -(-H // 16) * 16
    P = Hp // 16
    Ip, Kh = -(-I // 32) * 32, -(-Hp // 32) * 32
    want = pb.aligned((P, (Ip + Kh) // 32, 4, 16, 16), np.uint32)
    pb._pack_panels(w_ih.view(np.uint32), w_hh.view(np.uint32), H, Ip // 2, want, 0, P)
    got = pb.aligned(want.shape, np.uint32)
    got[:] = 0xDEADBEEF                                     # every word must be written
    amx_pack.pack_tiles(w_ih, w_hh, H, Ip // 32, got, 0, P // 2)
    amx_pack.pack_tiles(w_ih, w_hh, H, Ip // 32, got, P // 2, P)
    np.testing.assert_array_equal(got, want)
    got[:] = 0xDEADBEEF                    # the same panels, and W_ih's bits beside them
    bits = np.full(w_ih.shape, 0xABCD, np.uint16)
    amx_pack.pack_tiles_bits(w_ih, w_hh, H, Ip // 32, got, 0, P // 2, bits)
    amx_pack.pack_tiles_bits(w_ih, w_hh, H, Ip // 32, got, P // 2, P, bits)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(bits, pb.to_bits(w_ih))
    NB = 64
    Q = -(-Hp // NB)
    want_u = pb.aligned(Q * 4 * Hp * NB, np.uint16)
    pb._pack_u(pb.to_bits(w_hh), H, Hp, NB, want_u)
    got_u = pb.aligned(want_u.shape, np.uint16)       # (zero, as pack_bf16 allocates it)
    bits = np.full(w_hh.shape, 0xABCD, np.uint16)       # U's panels and W_hh's bits, in
    amx_pack.pack_u_bits(w_hh, H, Hp, NB, got_u, bits, 0, Hp)   # two halves of the pairs
    amx_pack.pack_u_bits(w_hh, H, Hp, NB, got_u, bits, Hp, 2 * Hp)
    np.testing.assert_array_equal(got_u, want_u)
    np.testing.assert_array_equal(bits, pb.to_bits(w_hh))


def test_bits_match_round_bf16():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((9, 37)).astype(np.float32)
    a.reshape(-1)[:SPECIAL.size] = SPECIAL
    a[4, -SPECIAL.size:] = SPECIAL                          # (in x_bits' steps too)
    want = (round_bf16(a).view(np.uint32) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(pb.to_bits(a), want)
    x = a.reshape(3, 3, 37)
    xh = np.full((4, 5, 96), 0xABCD, np.uint16)             # operand rows: x part 64 wide
    amx_pack.x_bits(x, 1, xh, 64, 0, 2)
    np.testing.assert_array_equal(xh[:2, :3, :37], want.reshape(3, 3, 37)[1:3])
    assert (xh[:2, :3, 37:64] == 0).all()
    assert (xh[2:] == 0xABCD).all() and (xh[:, 3:] == 0xABCD).all()
    assert (xh[..., 64:] == 0xABCD).all()
