"""The bf16 LSTM forward in one compiled call (kernels/amx_fwd_one.py): bit for bit
the numbers of ``packed_bf16.lstm_forward`` on the AMX route (outputs, and the
gradients from its training cache), where it takes the call and where it hands
it on."""
import numpy as np
import pytest

pytest.importorskip("numba")

from fastrnn.cells import get_cell  # noqa: E402
from fastrnn.kernels import cpu  # noqa: E402

with cpu.configure(bf16_native=True, bf16_amx=True):
    AMX = cpu.route_bf16(get_cell("lstm")) == "amx"
if not AMX:  # pragma: no cover - depends on the CPU
    pytest.skip("no AMX-BF16 tiles here", allow_module_level=True)

from fastrnn.kernels import amx_fwd_one, packed_bf16  # noqa: E402


def _case(T, B, I, H, peephole, seed):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.uniform(-0.5, 0.5, s).astype(np.float32)  # noqa: E731
    return (f(T, B, I), f(B, H), f(B, H), f(4 * H, I), f(4 * H, H), f(4 * H), f(4 * H),
            f(3, H) if peephole else None, f(T, B, H), f(B, H))


@pytest.mark.parametrize("T,B,I,H,peephole,training,lens,reverse,threads,one", [
    (7, 5, 17, 20, False, False, None, False, 2, True),
    (7, 5, 17, 20, False, True, None, False, 2, True),
    (6, 9, 40, 33, True, True, None, False, 2, True),
    (6, 9, 40, 33, True, False, None, False, 2, True),
    # weights packed on two threads (PACK_SPLIT elements), the loop on one
    (3, 4, 256, 256, False, False, None, False, 2, True),
    # handed on: a short sequence, the reverse direction, 32 rows (two threads' rows)
    (6, 5, 8, 16, False, True, (6, 2, 6, 6, 1), False, 2, False),
    (6, 5, 8, 16, False, False, None, True, 2, False),
    (4, 32, 8, 16, False, False, None, False, 1, False),
])
def test_one_call_is_the_general_forward_bit_for_bit(T, B, I, H, peephole, training, lens,
                                                     reverse, threads, one):
    x, h0, c0, wi, wh, bi, bh, pe, dy, dh = _case(T, B, I, H, peephole, T + B + H)
    L = np.full(B, T, np.int64) if lens is None else np.array(lens, np.int64)
    assert amx_fwd_one.one_call(B, I, H, T, L, reverse) == one
    # inference in chunks of 2 steps (the h carried from chunk to chunk)
    with cpu.configure(infer_chunk_steps=None if training else 2):
        got = amx_fwd_one.lstm_forward(x, h0, c0, wi, wh, bi, bh, L, reverse, training,
                                       threads, pe)
        want = packed_bf16.lstm_forward(x, h0, c0, wi, wh, bi, bh, L, reverse, training,
                                        threads, pe, True, True)
    for g, w in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(g, w)
    assert (got[3] is None) == (not training)
    if training:
        gg = packed_bf16.lstm_backward(got[3], dy, dh, dh, threads, lambda n: None)
        gw = packed_bf16.lstm_backward(want[3], dy, dh, dh, threads, lambda n: None)
        for g, w in zip(gg, gw):
            if w is None:
                assert g is None
            else:
                np.testing.assert_array_equal(g, w)


def test_the_cpu_backend_takes_it_for_the_small_shapes():
    """cpu.forward on the AMX route runs amx_fwd_one (lengths given or not)."""
    spec = get_cell("lstm")
    x, h0, c0, wi, wh, bi, bh, _, _, _ = _case(5, 8, 16, 32, False, 1)
    from fastrnn.contract import Weights
    w = Weights(wi, wh, bi, bh, None)
    calls = []
    real = amx_fwd_one._forward

    def spy(*a):
        calls.append(1)
        return real(*a)
    amx_fwd_one._forward = spy
    try:
        with cpu.configure(bf16_native=True, bf16_amx=True):
            y, _, _, _ = cpu.forward(spec, x, h0, c0, w, None, False, False,
                                     compute_dtype="bfloat16")
            y2, _, _, _ = cpu.forward(spec, x, h0, c0, w, np.full(8, 5), False, False,
                                      compute_dtype="bfloat16")
    finally:
        amx_fwd_one._forward = real
    assert len(calls) == 2
    np.testing.assert_array_equal(y, y2)
