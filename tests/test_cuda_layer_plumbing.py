"""The layers' device path (DeviceOps): stacking, directions, dropout, batch_first,
gradient accumulation and placement, for a layer whose parameters live on the GPU.

The backend here is a stand-in that runs the NumPy reference on copies, so the
test isolates the layer plumbing; the real CUDA kernels are checked against the
reference in test_cuda.py. Runs under NUMBA_ENABLE_CUDASIM=1 or on a GPU.
"""
import types

import numpy as np
import pytest

pytestmark = pytest.mark.cuda_sim     # its own process: see tests/README.md

cuda = pytest.importorskip("numba.cuda")
if not cuda.is_available():
    pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

import fastrnn  # noqa: E402
from fastrnn import dispatch, reference  # noqa: E402
from fastrnn.dispatch import Weights  # noqa: E402
from _variants import make  # noqa: E402


def _host(a):
    return a if a is None or isinstance(a, np.ndarray) else a.copy_to_host()


def _dev(a):
    return None if a is None else cuda.to_device(np.ascontiguousarray(a))


def _forward(cell, x, h0, c0, w, lengths, reverse, training):
    w = Weights(*[_host(v) for v in w])
    y, hn, cn, cache = reference.forward(cell, _host(x), _host(h0), _host(c0), w, lengths, reverse, training)
    return _dev(y), _dev(hn), _dev(cn), cache


def _backward(cell, cache, dy, dh, dc):
    dx, dh0, dc0, g = reference.backward(cell, cache, _host(dy), _host(dh), _host(dc))
    return _dev(dx), _dev(dh0), _dev(dc0), Weights(*[_dev(v) for v in g])


@pytest.fixture
def reference_on_device(monkeypatch):
    monkeypatch.setitem(dispatch._loaded, "cuda",
                        types.SimpleNamespace(forward=_forward, backward=_backward))


@pytest.mark.parametrize("variant", ["lstm", "gru", "peephole_full"])
def test_device_layer_matches_host_layer(reference_on_device, variant):
    kw = dict(num_layers=2, bidirectional=True, dropout=0.3, batch_first=True, dtype=np.float64, seed=0)
    host = make(variant, 3, 4, backend="numpy", **kw)
    dev = make(variant, 3, 4, backend="cuda", **kw)
    assert dev.device == "cuda" and host.device == "cpu"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3))
    dy = rng.normal(size=(2, 5, 8))
    y1, _ = host(x, lengths=[5, 3])
    y2, _ = dev(cuda.to_device(x), lengths=[5, 3])
    np.testing.assert_allclose(y2.copy_to_host(), y1, rtol=1e-12)
    dx1, _ = host.backward(dy)
    dx2, _ = dev.backward(cuda.to_device(dy))
    np.testing.assert_allclose(dx2.copy_to_host(), dx1, rtol=1e-12)
    for k in host.grads:
        np.testing.assert_allclose(dev.grads[k].copy_to_host(), host.grads[k], rtol=1e-12, err_msg=k)
    dev.zero_grad()
    assert all(np.all(g.copy_to_host() == 0) for g in dev.grads.values())


def test_placement_and_errors(reference_on_device):
    dev = fastrnn.GRU(3, 4, backend="cuda", seed=0)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(TypeError, match="host array but this layer lives on the GPU"):
        dev(x)
    sd = dev.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    sd["weight_hh_l0"][...] = 1
    dev.load_state_dict(sd)
    assert np.all(dev.params["weight_hh_l0"].copy_to_host() == 1)
    host = dev.to("numpy")
    assert host is dev and isinstance(dev.params["weight_hh_l0"], np.ndarray)
    with pytest.raises(TypeError, match="GPU array but this layer's parameters are on the host"):
        dev(cuda.to_device(x))
    y, h = dev(x)
    assert y.shape == (5, 2, 4)
