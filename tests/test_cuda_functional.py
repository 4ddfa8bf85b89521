"""fastrnn.functional on device arrays (the CUDA backend, PyTorch's convention):
the same values as on the host. Runs under NUMBA_ENABLE_CUDASIM=1 or on a GPU."""
import numpy as np
import pytest

pytestmark = pytest.mark.cuda_sim     # its own process: see tests/README.md

cuda = pytest.importorskip("numba.cuda")
if not cuda.is_available():
    pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from fastrnn import functional as F  # noqa: E402
from fastrnn.testing import assert_close, cell_terms  # noqa: E402


def _host(a):
    return None if a is None else np.asarray(a.copy_to_host())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_lstm_matches_host(dtype):
    rng = np.random.default_rng(0)
    B, T, I, H = 2, 3, 3, 4
    x = rng.standard_normal((B, T, I)).astype(dtype)
    w_ih, w_hh = (rng.uniform(-0.5, 0.5, s).astype(dtype) for s in ((4 * H, I), (4 * H, H)))
    b = rng.uniform(-0.5, 0.5, 4 * H).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    dy = rng.standard_normal((B, T, H)).astype(dtype)
    lengths = np.array([3, 2])
    kw = dict(batch_first=True, lengths=lengths)
    y, (h, c), ctx = F.lstm(x, w_ih, w_hh, b, None, h0, backend="numpy", **kw)
    dx, (dh0, dc0), g = F.lstm_backward(ctx, dy)
    d = cuda.to_device
    yd, (hd, cd), ctxd = F.lstm(d(x), d(w_ih), d(w_hh), d(b), None, d(h0), **kw)
    dxd, (dh0d, dc0d), gd = F.lstm_backward(ctxd, d(dy))
    terms = cell_terms("lstm", T, B, I, H, dtype=dtype, approx=True)
    up = max(np.abs(h0).max(), np.abs(dy).max(), 1.0)
    for a, e in ((yd, y), (hd, h), (cd, c), (dxd, dx), (dh0d, dh0), (dc0d, dc0)):
        assert_close(_host(a), e, terms, scale=up)
    for a, e in zip(gd[:3], g[:3]):
        assert_close(_host(a), e, terms, scale=up)
    assert gd[3] is None and g[3] is None
    with pytest.raises(ValueError, match="PyTorch's convention only"):
        F.lstm(d(x), d(w_ih), d(w_hh), gate_order="ifog", **kw)
