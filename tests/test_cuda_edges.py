"""The CUDA backend's edge cases and launch arithmetic: what the simulator
accepts but a GPU would not (empty launches, grid limits, out-of-bounds row
reads), and the pieces that size launches for a real device, tested with
made-up device limits. Runs under ``NUMBA_ENABLE_CUDASIM=1`` or on a GPU,
like test_cuda.py, whose small problems and launch settings it shares.
"""
import types

import numpy as np
import pytest

from fastrnn import reference
from fastrnn.cells import get_cell
from fastrnn.dispatch import Weights

from test_cuda import AVAILABLE, SMALL, WHY, assert_close, check, kc, make_problem

pytestmark = [pytest.mark.cuda_sim, pytest.mark.skipif(
    not AVAILABLE, reason=f"CUDA backend unavailable: {WHY} (in its own pytest process)")]


def _cuda():
    from numba import cuda
    return cuda


# ----------------------------------------------------------------------------- empty problems
def _empty_problem(name, T, B, H, I=3, seed=0):
    rng = np.random.default_rng(seed)
    cell = get_cell(name)
    G = cell.gates

    def r(*shape):
        return rng.standard_normal(shape)

    peep = r(3, *cell.peephole_shape(H)) if cell.peephole else None
    w = Weights(r(G * H, I), r(G * H, H), r(G * H), r(G * H), peep)
    c0 = r(B, H) if cell.has_cell else None
    dc_n = r(B, H) if cell.has_cell else None
    return cell, w, r(T, B, I), r(B, H), c0, r(T, B, H), r(B, H), dc_n


@pytest.mark.parametrize("name", ["lstm", "peephole_diagonal", "gru"])
@pytest.mark.parametrize("T,B,H", [(0, 2, 3), (3, 0, 3), (3, 2, 0), (0, 0, 0)],
                         ids=["T0", "B0", "H0", "all0"])
def test_empty_problems_give_empty_outputs(name, T, B, H):
    # no zero-block launch, no row-0 read of an empty array, no division by
    # H: outputs of the right shapes, equal to the reference's
    cell, w, x, h0, c0, dy, dh_n, dc_n = _empty_problem(name, T, B, H)
    ref = reference.forward(cell, x, h0, c0, w, None, False, True)
    dref = reference.backward(cell, ref[3], dy, dh_n, dc_n)
    with kc.configure(**{**SMALL, "strategy": "auto"}):
        out = kc.forward(cell, x, h0, c0, w, None, False, True)
        dout = kc.backward(cell, out[3], dy, dh_n, dc_n)
    for what, a, e in zip(("y", "h_n", "c_n", "dx", "dh0", "dc0"), out[:3] + dout[:3],
                          ref[:3] + dref[:3]):
        if e is None:
            assert a is None
        else:
            a = kc.to_host(a)
            assert a.shape == e.shape, what
            np.testing.assert_array_equal(a, e, err_msg=what)
    for field, a, e in zip(Weights._fields, dout[3], dref[3]):
        if e is None:
            assert a is None
        else:
            np.testing.assert_array_equal(kc.to_host(a), e, err_msg=field)
    assert kc.persistent_disabled is None


def test_a_bug_in_the_persistent_path_is_raised_not_hidden(monkeypatch):
    # only a failure to build or launch the cooperative kernel turns "auto"
    # over to per-step kernels; a Python error there is a bug and propagates
    cell, w, x, h0, c0, *_ = make_problem("lstm", np.float32)
    monkeypatch.setattr(kc, "choose_strategy", lambda *a: "persistent")

    def broken(*a, **k):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(kc, "_persistent_forward", broken)
    with kc.configure(**{**SMALL, "strategy": "auto"}):
        with pytest.raises(ZeroDivisionError):
            kc.forward(cell, x, h0, c0, w, None, False, False)
    assert kc.persistent_disabled is None

    def no_devrt(*a, **k):
        raise RuntimeError("cannot link libcudadevrt")

    monkeypatch.setattr(kc, "_persistent_forward", no_devrt)
    monkeypatch.setattr(kc, "persistent_disabled", None)
    with kc.configure(**{**SMALL, "strategy": "auto"}):
        with pytest.warns(RuntimeWarning, match="libcudadevrt"):
            y = kc.forward(cell, x, h0, c0, w, None, False, False)[0]
    assert "libcudadevrt" in kc.persistent_disabled
    assert_close("y", y, reference.forward(cell, x, h0, c0, w, None, False, False)[0],
                 np.float32)


# ----------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("M", [0, 1, 7])
def test_column_sums_are_tiled_and_deterministic(M):
    cuda = _cuda()
    rng = np.random.default_rng(4)
    a = rng.standard_normal((M, 5))
    b = rng.standard_normal((M, 5))
    prior = rng.standard_normal(5)
    # 4 columns x 2 rows of threads per block, chunks of 2 rows: 4 chunks of 7 rows
    with kc.configure(colsum_block=(4, 2), colsum_rows=2, threads=4):
        da, db = cuda.to_device(a), cuda.to_device(b)
        plain = kc.to_host(kc.column_sums(da, cuda.device_array(5)))
        again = kc.to_host(kc.column_sums(da, cuda.device_array(5)))
        weighted = kc.to_host(kc.column_sums(da, cuda.device_array(5), b=db))
        acc = kc.to_host(kc.column_sums(da, cuda.to_device(prior), accumulate=True))
        # a column slice (strided rows), as the peephole gradients pass
        sliced = kc.to_host(kc.column_sums(cuda.to_device(np.hstack([a, b]))[:, 5:],
                                       cuda.device_array(5)))
    np.testing.assert_allclose(plain, a.sum(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(plain, again)
    np.testing.assert_allclose(weighted, (a * b).sum(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(acc, prior + a.sum(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sliced, b.sum(0), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- GEMM launches
@pytest.mark.parametrize("blocked", [False, True], ids=["simple", "blocked"])
def test_gemm_loops_over_grid_y(monkeypatch, blocked):
    # M goes on grid x (2**31 - 1 blocks); N on y, capped at 65,535 blocks:
    # with the cap made 1 block, N = 6 takes several launches
    from fastrnn.kernels import cuda_gemm
    cuda = _cuda()
    monkeypatch.setattr(cuda_gemm, "MAX_GRID_Y", 1)
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((6, 3))
    bias, c0 = rng.standard_normal(6), rng.standard_normal((5, 6))
    c = cuda.to_device(c0)
    with kc.configure(tile=4, gemm_blocking=(4, 4, 2, 2, 2),
                      blocked_min_rows=1 if blocked else 10 ** 9, use_cupy=False):
        kc.device_gemm(cuda.to_device(a), cuda.to_device(b), c, bias=cuda.to_device(bias),
                 accumulate=True, trans_b=True)
    np.testing.assert_allclose(c.copy_to_host(), c0 + a @ b.T + bias, rtol=1e-12)


def test_gemm_with_empty_inner_dimension_adds_the_bias():
    cuda = _cuda()
    c0 = np.arange(6.0).reshape(2, 3)
    bias = np.array([1.0, 2.0, 3.0])
    a, b = cuda.device_array((2, 0)), cuda.device_array((0, 3))
    with kc.configure(threads=4):
        c = cuda.to_device(c0)
        kc.device_gemm(a, b, c, bias=cuda.to_device(bias), accumulate=True)
        np.testing.assert_array_equal(c.copy_to_host(), c0 + bias)
        kc.device_gemm(a, b, c)
        np.testing.assert_array_equal(c.copy_to_host(), np.zeros((2, 3)))


def test_cupy_view_is_built_from_the_pointer():
    # no cp.asarray (which synchronises on the stream an exporter names): the
    # CuPy array is made from the pointer, shape and strides
    made = {}

    class FakeCuPy:
        class cuda:
            @staticmethod
            def UnownedMemory(ptr, size, owner, device):
                made.update(ptr=ptr, size=size, owner=owner)
                return "mem"

            @staticmethod
            def MemoryPointer(mem, offset):
                return (mem, offset)

            @staticmethod
            def Device():
                return types.SimpleNamespace(id=0)

        @staticmethod
        def ndarray(shape, dtype, memptr, strides):
            return shape, dtype, memptr, tuple(strides)

    full = types.SimpleNamespace(__cuda_array_interface__=dict(
        shape=(3, 4), typestr="<f4", data=(4096, False), strides=None, version=3, stream=7))
    assert kc.as_cupy(FakeCuPy, full) == ((3, 4), np.float32, ("mem", 0), (16, 4))
    assert made == dict(ptr=4096, size=48, owner=full)
    every_other = types.SimpleNamespace(__cuda_array_interface__=dict(
        shape=(3, 2), typestr="<f8", data=(8192, False), strides=(32, 16), version=3))
    assert kc.as_cupy(FakeCuPy, every_other)[3] == (32, 16)
    assert made["size"] == 8 + 2 * 32 + 1 * 16


# ----------------------------------------------------------------------------- persistent sizing
def test_persistent_slices_shrink_to_fit_shared_memory():
    # LSTM float32, H = 1024, 132 SMs: one unit's slice of W_hh is 16 KiB, so
    # 8 units per block (one block per SM) would need 128 KiB; 3 fit in 48 KiB
    unit = 4 * 1024 * 4
    assert kc.persistent_plan(1024, unit, 132, lambda shmem: 4 * 132,
                               shared_bytes=48 * 1024) == (3, True)
    # when so many blocks cannot be co-resident, the weights stay in global memory
    assert kc.persistent_plan(1024, unit, 132, lambda shmem: 132 if shmem else 264,
                               shared_bytes=48 * 1024) == (8, False)
    # a small layer: one block per SM, slice in shared memory
    assert kc.persistent_plan(256, 4 * 256 * 4, 132, lambda shmem: 528,
                               shared_bytes=48 * 1024) == (2, True)
    # a grid too large for the device: fewer, fuller blocks
    assert kc.persistent_plan(1024, 0, 132, lambda shmem: 100) == (11, False)
    # fixed units that cannot be co-resident, or no block fits at all
    assert kc.persistent_plan(64, 0, 8, lambda shmem: 4, units=2) is None
    assert kc.persistent_plan(64, 0, 8, lambda shmem: 0) is None


@pytest.mark.parametrize("lanes", [1, 8], ids=["serial", "lanes8"])
def test_persistent_dot_products_split_over_lanes(lanes):
    # SMALL splits each product over 4 lanes; 1 lane (no shuffles) and 8 (the
    # whole block, one group) must agree with the reference too
    out = check("lstm", np.float32, [2, 3], False, strategy="persistent",
                persistent_lanes=lanes)
    assert out[3].strategy == "persistent"


# ----------------------------------------------------------------------------- host overhead
def test_workspaces_are_reused_but_outputs_are_not():
    cell, w, x, h0, c0, *_ = make_problem("gru", np.float64)
    with kc.configure(**SMALL):
        y1 = kc.forward(cell, x, h0, c0, w, None, False, False)[0]
        n_ws = len(kc.WORKSPACES.arrays)
        y2 = kc.forward(cell, 2 * x, h0, c0, w, None, False, False)[0]
        assert len(kc.WORKSPACES.arrays) == n_ws          # nothing new allocated for them
    assert y1 is not y2
    assert_close("y1", y1, reference.forward(cell, x, h0, c0, w, None, False, False)[0],
                 np.float64)
    assert_close("y2", y2, reference.forward(cell, 2 * x, h0, c0, w, None, False, False)[0],
                 np.float64)
    assert kc.device_lengths(None, 3, 2) is kc.device_lengths(None, 3, 2)
    with kc.configure(**{**SMALL, "workspace_bytes": 0}):    # no cache at all
        y3 = kc.forward(cell, x, h0, c0, w, None, False, False)[0]
    np.testing.assert_array_equal(kc.to_host(y3), kc.to_host(y1))
    kc.clear_workspaces()
    assert not kc.WORKSPACES.arrays
