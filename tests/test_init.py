"""Initial parameters (fastrnn.init): a seed gives the same weights as the pinned
values below, and each scheme draws what it says.

The pinned values below were printed by the layer code before the move (and a
sweep of 520 configurations, every cell x scheme x dtype x bias x stacking x
forget_bias, compared bitwise). A change here changes every seeded model:
make it on purpose, and say so in the changelog."""
import numpy as np
import pytest

import fastrnn
from fastrnn import init as initmod
from fastrnn.cells import CELLS

# (class, kwargs): {param: (first value, last value)}, sum of all params, the
# generator's next draw after initialisation (the dropout masks' stream)
PINNED = [
    ("LSTM", dict(init=None, forget_bias=1.0),
     {"weight_hh_l0": (-0.003298158204659507, -0.2068187169789404),
      "bias_hh_l0": (-0.22795524683881152, -0.3553226026286367)},
     0.2868065568882736, 0.1792410777291673),
    ("GRU", dict(init="xavier", bidirectional=True),
     {"weight_hh_l0": (0.3638025683413829, -0.012262099529811166),
      "bias_hh_l0_reverse": (0.0, 0.0)},
     -5.026511935549549, 0.23961855398618837),
    ("RNN", dict(init="he", num_layers=2),
     {"weight_hh_l0": (0.8429887365110303, 0.7594543359983666), "bias_hh_l1": (0.0, 0.0)},
     3.9865001034552714, 0.49948675030301726),
    ("PeepholeLSTM", dict(init="orthogonal"),
     {"weight_hh_l0": (0.9135736893728905, 0.10261164410091872),
      "peephole_o_l0": (0.1882592484926856, -0.037956177950220105)},
     5.584256815141613, 0.5219335334143763),
    ("PeepholeLSTM", dict(init="pytorch", peephole="full"),
     {"weight_hh_l0": (-0.003298158204659507, -0.2068187169789404),
      "peephole_o_l0": (0.19156833731541167, 0.4205987299377911)},
     -3.7719215596347406, 0.7900663782805138),
]


@pytest.mark.parametrize("cls, kw, values, total, next_draw", PINNED)
def test_seeded_parameters_are_pinned(cls, kw, values, total, next_draw):
    layer = getattr(fastrnn, cls)(3, 4, seed=123, dtype=np.float64, **kw)
    # orthogonal blocks go through LAPACK's QR, which may differ in the last bits
    exact = kw["init"] != "orthogonal"
    for name, (first, last) in values.items():
        got = layer.params[name].ravel()[[0, -1]]
        if exact:
            assert got.tolist() == [first, last], name
        else:
            np.testing.assert_allclose(got, [first, last], rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(sum(v.sum() for v in layer.params.values()), total, rtol=1e-12)
    assert layer.rng.random() == next_draw


def test_float32_parameters_are_the_float64_draws_rounded():
    p32 = fastrnn.GRU(3, 4, seed=5, init="he").params
    p64 = fastrnn.GRU(3, 4, seed=5, init="he", dtype=np.float64).params
    for k in p64:
        assert p32[k].dtype == np.float32
        assert np.array_equal(p32[k], p64[k].astype(np.float32)), k


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("init", initmod.INITS)
def test_recurrent_params_names_shapes_and_forget_bias(cell, init):
    spec = CELLS[cell]
    p = initmod.recurrent_params(spec, 3, 4, 2, 2, True, np.random.default_rng(0), np.float32,
                                 init, forget_bias=0.5 if spec.has_cell else None)
    G = spec.gates
    assert p["weight_ih_l0"].shape == (G * 4, 3) and p["weight_ih_l1"].shape == (G * 4, 8)
    assert p["weight_hh_l1_reverse"].shape == (G * 4, 4) and p["bias_ih_l1"].shape == (G * 4,)
    assert all(v.dtype == np.float32 for v in p.values())
    if spec.has_cell:
        assert np.all(p["bias_ih_l0"][4:8] == 0.5) and np.all(p["bias_hh_l0"][4:8] == 0)
    if init not in (None, "pytorch"):
        assert not np.any(p["bias_hh_l0"][:4])
    if init == "orthogonal":
        for g in range(G):
            block = p["weight_hh_l0"][g * 4:(g + 1) * 4].astype(np.float64)
            np.testing.assert_allclose(block @ block.T, np.eye(4), atol=1e-6)


def test_check_init_refuses_unknown_schemes():
    assert initmod.check_init("he") == "he" and initmod.check_init(None) is None
    for bad in ("zeros", "Xavier", 3, ["he"]):
        with pytest.raises(ValueError, match="init must be one of"):
            initmod.check_init(bad)
