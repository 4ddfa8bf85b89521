"""Parity of the reference (backend="numpy") with torch.nn.RNN/LSTM/GRU.

A torch module's state_dict is loaded into the fastrnn layer; outputs, final
states, the input gradient and every parameter gradient must agree within the
error bound of ``fastrnn.testing`` (sums of ``rnn_terms`` terms in the
compared dtype, scaled by the arrays' magnitude: torch sums in another order,
through MKL/oneDNN kernels that differ by CPU). Variable lengths are compared
with ``pack_padded_sequence``. Skipped cleanly when torch is not installed.
"""
import numpy as np
import pytest

from _variants import make

from fastrnn.cells import CELLS
from fastrnn.testing import assert_close, rnn_terms

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

#: registry cell -> (torch.nn class, constructor arguments): every cell with a
#: PyTorch twin (CellSpec.torch); tests/test_registry.py checks this covers them
TORCH = {name: (getattr(torch.nn, spec.torch[0]), spec.torch_kwargs)
         for name, spec in CELLS.items() if spec.torch is not None}


def run_torch(mod, x, state, lengths, batch_first, R):
    xt = torch.tensor(x, requires_grad=True)
    st = None
    if state is not None:
        st = tuple(torch.tensor(s, requires_grad=True) for s in state) if isinstance(state, tuple) \
            else torch.tensor(state, requires_grad=True)
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                                                      enforce_sorted=False)
    y, sn = mod(inp, st)
    if lengths is not None:
        T = x.shape[1] if batch_first else x.shape[0]
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=batch_first, total_length=T)
    sns = sn if isinstance(sn, tuple) else (sn,)
    loss = (y * torch.tensor(R[0])).sum() + sum((s * torch.tensor(r)).sum() for s, r in zip(sns, R[1:]))
    loss.backward()
    sgrad = None
    if state is not None:
        sgrad = tuple(s.grad.numpy() for s in st) if isinstance(st, tuple) else st.grad.numpy()
    return (y.detach().numpy(), tuple(s.detach().numpy() for s in sns), xt.grad.numpy(), sgrad,
            {k: p.grad.numpy() for k, p in mod.named_parameters()})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", list(TORCH))
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_parity_stacked_bidirectional(variant, dtype, batch_first, use_lengths):
    T, B, I, H, L = 6, 4, 5, 7, 2
    rng = np.random.default_rng(0)
    tcls, extra = TORCH[variant]
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    torch.manual_seed(0)
    mod = tcls(I, H, num_layers=L, bidirectional=True, batch_first=batch_first, **extra).to(tdtype)
    layer = make(variant, I, H, num_layers=L, bidirectional=True, batch_first=batch_first,
                 backend="numpy", dtype=dtype)
    layer.load_state_dict(mod.state_dict())
    shape = (B, T, I) if batch_first else (T, B, I)
    x = rng.normal(size=shape).astype(dtype)
    sshape = (2 * L, B, H)
    state = rng.normal(size=sshape).astype(dtype)
    if layer.cell.has_cell:
        state = (state, rng.normal(size=sshape).astype(dtype))
    lengths = np.array([6, 2, 5, 1]) if use_lengths else None
    y, sn = layer(x, state, lengths)
    sns = sn if isinstance(sn, tuple) else (sn,)
    R = [rng.normal(size=y.shape).astype(dtype)] + [rng.normal(size=s.shape).astype(dtype) for s in sns]
    dx, ds0 = layer.backward(R[0], tuple(R[1:]) if layer.cell.has_cell else R[1])

    ty, tsn, tdx, tds0, tgrads = run_torch(mod, x, state, lengths, batch_first, R)
    # the reference uses exact (libm) activations; torch too
    fwd = rnn_terms(T, B, I, H, layer.cell.gates, L, 2, dtype=dtype, backward=False)
    full = rnn_terms(T, B, I, H, layer.cell.gates, L, 2, dtype=dtype)
    assert_close(y, ty, fwd, err_msg="y")
    for a, b in zip(sns, tsn):
        assert_close(a, b, fwd, err_msg="final state")
    assert_close(dx, tdx, full, err_msg="dx")
    for a, b in zip(ds0 if isinstance(ds0, tuple) else (ds0,), tds0 if isinstance(tds0, tuple) else (tds0,)):
        assert_close(a, b, full, err_msg="dstate0")
    assert set(tgrads) == set(layer.grads)
    for k, g in tgrads.items():
        assert_close(layer.grads[k], g, full, err_msg=k)


def test_state_dict_round_trip_into_torch():
    layer = make("lstm", 3, 4, num_layers=2, bidirectional=True, backend="numpy", seed=1)
    mod = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    mod.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    x = np.random.default_rng(1).normal(size=(5, 2, 3)).astype(np.float32)
    y, _ = layer(x)
    assert_close(y, mod(torch.tensor(x))[0].detach().numpy(), rnn_terms(5, 2, 3, 4, 4, 2, 2, backward=False))
