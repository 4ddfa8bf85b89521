"""The packed CPU kernels give bitwise the same results on one thread or two, and
the caller never waits on a partner that does not come (fastrnn.kernels.plan,
fastrnn.kernels.worker)."""
import numpy as np
import pytest

from fastrnn.cells import get_cell
from fastrnn.dispatch import Weights

cpu = pytest.importorskip("fastrnn.kernels.cpu")
if not cpu.available()[0] or cpu.packed is None:  # pragma: no cover
    pytest.skip("the packed CPU kernels are not available", allow_module_level=True)
from fastrnn.kernels import plan, schedule, worker  # noqa: E402


@pytest.fixture
def two_threads(monkeypatch, cpu_settings):
    """Every step shared by two threads, whatever its size, and no back-off."""
    monkeypatch.setitem(plan.backoff, "until", 0.0)
    # never back off in these tests; 2 threads whatever FASTRNN_NUM_THREADS the suite runs at
    cpu_settings(two_thread_step_flops=0.0, row_split_flops=0.0, split_gemm_flops=0.0,
                 late_wait=2.0, num_threads=2)


def _problem(cell_name, T, B, I, H, seed=0, lengths=True, dtype=np.float32):
    rng = np.random.default_rng(seed)
    cell = get_cell(cell_name)
    f = dtype
    s = 1 / np.sqrt(H)
    w = Weights(rng.uniform(-s, s, (4 * H, I)).astype(f), rng.uniform(-s, s, (4 * H, H)).astype(f),
                rng.uniform(-s, s, 4 * H).astype(f), rng.uniform(-s, s, 4 * H).astype(f),
                rng.uniform(-s, s, (3, H)).astype(f) if cell.peephole else None)
    x = rng.standard_normal((T, B, I)).astype(f)
    h0 = rng.standard_normal((B, H)).astype(f)
    c0 = rng.standard_normal((B, H)).astype(f)
    lens = rng.integers(1, T + 1, B) if lengths else None
    dy = rng.standard_normal((T, B, H)).astype(f)
    return cell, x, h0, c0, w, lens, dy


def _run(cell, x, h0, c0, w, lens, dy, reverse):
    y, h, c, cache = cpu.forward(cell, x, h0, c0, w, lens, reverse, True)
    yi, hi, ci, _ = cpu.forward(cell, x, h0, c0, w, lens, reverse, False)
    dx, dh0, dc0, dw = cpu.backward(cell, cache, dy, h, c)
    return [y, h, c, yi, hi, ci, dx, dh0, dc0] + [g for g in dw if g is not None]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell_name", ["lstm", "peephole_diagonal", "gru", "rnn_tanh"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("split", ["panels", "rows"])
def test_one_and_two_threads_agree_bitwise(two_threads, cpu_settings, cell_name, reverse, split,
                                           dtype):
    cpu_settings(row_split_bytes=1 << 40 if split == "rows" else -1, row_split_flops=0)
    prob = _problem(cell_name, 9, 11, 5, 40, dtype=dtype)
    G = get_cell(cell_name).gates
    if G != 4:
        w = prob[4]
        prob = prob[:4] + (Weights(w.w_ih[:G * 40], w.w_hh[:G * 40], w.b_ih[:G * 40],
                                   w.b_hh[:G * 40], None),) + prob[5:]
    old = cpu.get_num_threads()
    try:
        cpu.set_num_threads(1)
        one = _run(*prob, reverse)
        cpu.set_num_threads(2)
        two = _run(*prob, reverse)
    finally:
        cpu.set_num_threads(old)
    for a, b in zip(one, two):
        assert (a is None and b is None) or a.dtype == dtype
        np.testing.assert_array_equal(a, b)


def _lstm_call_is_fast_and_right():
    import time
    cell, x, h0, c0, w, lens, dy = _problem("lstm", 6, 5, 3, 33)
    cpu.forward(cell, x, h0, c0, w, lens, False, False)          # compiled before timing
    t0 = time.monotonic()
    y, h, c, cache = cpu.forward(cell, x, h0, c0, w, lens, False, True)
    grads = cpu.backward(cell, cache, dy, h, c)
    took = time.monotonic() - t0
    with cpu.configure(use_packed=False):
        y0, h_, c_, cache0 = cpu.forward(cell, x, h0, c0, w, lens, False, True)
        grads0 = cpu.backward(cell, cache0, dy, h_, c_)
    from fastrnn.testing import assert_close, cell_terms
    # two compiled float32 paths (packed, BLAS loop): both sides' activations
    fs = max(1.0, np.abs(h0).max(), np.abs(c0).max())
    up = max(fs, np.abs(dy).max(), np.abs(h).max(), np.abs(c).max())
    assert_close(y, y0, 2 * cell_terms(cell, 6, 5, 3, 33, approx=True, backward=False),
                 scale=fs, err_msg="y")
    assert_close(grads[0], grads0[0], 2 * cell_terms(cell, 6, 5, 3, 33, approx=True),
                 scale=up, err_msg="dx")
    return took


@pytest.mark.parametrize("split", ["panels", "rows"])
def test_a_partner_that_never_comes_does_not_block(two_threads, monkeypatch, cpu_settings,
                                                   split):
    """A partner thread that never claims its jobs: the caller takes every job
    back (one compare-and-swap) and does the whole call itself."""
    cpu_settings(row_split_bytes=1 << 40 if split == "rows" else -1)
    lazy = worker.Partner()
    lazy._ensure = lambda: None                           # its thread never starts
    monkeypatch.setattr(worker, "partners", [lazy])
    assert _lstm_call_is_fast_and_right() < 5
    assert lazy.mb[worker.POST] > 0                       # jobs were posted ...
    assert lazy.mb[worker.DONE] == 0                      # ... and all taken back


def test_a_partner_busy_with_another_call_does_not_block(two_threads):
    """While another call holds the partner (here: a Python job blocked for 10 s),
    a call runs on one thread instead of waiting."""
    import threading
    gate = threading.Event()
    partner = worker.partner()
    seq = partner.post(worker.K_PY, fn=lambda: gate.wait(10))
    assert seq
    try:
        assert _lstm_call_is_fast_and_right() < 5 and not gate.is_set()
    finally:
        gate.set()
        partner.finish(seq)


def test_a_python_job_error_reaches_the_caller():
    partner = worker.partner()

    def boom():
        raise RuntimeError("from the partner")
    seq = partner.post(worker.K_PY, fn=boom)
    import time
    deadline = time.monotonic() + 5
    while partner.mb[worker.CLAIM] < seq and time.monotonic() < deadline:
        time.sleep(0.001)                                  # let the partner claim it
    if partner.mb[worker.CLAIM] < seq:                    # pragma: no cover - very slow machine
        partner.finish(seq)
        pytest.skip("the partner thread did not claim the job within 5 s")
    with pytest.raises(RuntimeError, match="from the partner"):
        partner.finish(seq)
    assert partner.lock.acquire(blocking=False)            # the call released the partner
    partner.lock.release()


def test_openblas_thread_count_survives_concurrent_calls():
    """Two Python threads running layers at once leave NumPy's BLAS setting as it was."""
    import threading
    if cpu.blas.blas_get_threads is None:  # pragma: no cover
        pytest.skip("no OpenBLAS thread getter")
    before = cpu.blas.blas_get_threads()
    probs = [_problem(n, 30, 16, 32, 64, seed=k, lengths=False)
             for k, n in enumerate(["lstm", "gru"] * 2)]
    errors = []

    def work(p):
        try:
            for _ in range(5):
                cell, x, h0, c0, w, lens, dy = p
                if cell.name == "gru":
                    w = Weights(w.w_ih[:3 * 64], w.w_hh[:3 * 64], w.b_ih[:3 * 64], w.b_hh[:3 * 64],
                                None)
                cpu.forward(cell, x, h0, c0, w, None, False, False)
        except Exception as e:  # pragma: no cover
            errors.append(e)
    ts = [threading.Thread(target=work, args=(p,)) for p in probs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert cpu.blas.blas_get_threads() == before


@pytest.mark.parametrize("cell_name", ["lstm", "gru", "rnn_tanh"])
def test_packed_inference_workspace_does_not_grow_with_T(cell_name):
    """float32 inference (the packed kernels): memory beyond x and y does not grow
    with T by anything of the size of a step's activations (B*H floats, here 512
    bytes a step); the length schedule keeps one count per step (8 bytes)."""
    import tracemalloc
    cell = get_cell(cell_name)
    G = cell.gates
    rng = np.random.default_rng(7)
    B, I, H = 4, 3, 32
    extra = {}
    for T in (2048, 4096):
        f = np.float32
        x = rng.standard_normal((T, B, I)).astype(f)
        h0 = np.zeros((B, H), f)
        w = Weights(*(rng.uniform(-.3, .3, sh).astype(f)
                      for sh in [(G * H, I), (G * H, H), (G * H,), (G * H,)]), None)
        cpu.forward(cell, x, h0, h0, w, None, False, False)
        tracemalloc.start()
        y = cpu.forward(cell, x, h0, h0, w, None, False, False)[0]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        extra[T] = peak - y.nbytes
    per_step = (extra[4096] - extra[2048]) / 2048
    assert per_step <= 16, (extra, per_step)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell_name", ["lstm", "peephole_diagonal", "gru", "rnn_relu"])
@pytest.mark.parametrize("reverse", [False, True])
def test_inference_in_chunks_equals_training_forward(cpu_settings, cell_name, reverse, dtype):
    """Inference runs its steps in chunks (4 here): outputs and final states equal
    the training forward's, which runs the sequence whole, bit for bit."""
    cpu_settings(infer_chunk_steps=4)
    assert schedule.infer_chunk(100) == 4
    cell, x, h0, c0, w, lens, dy = _problem("lstm", 11, 6, 3, 20, seed=3, dtype=dtype)
    G = get_cell(cell_name).gates
    cell = get_cell(cell_name)
    w = Weights(w.w_ih[:G * 20], w.w_hh[:G * 20], w.b_ih[:G * 20], w.b_hh[:G * 20],
                np.full((3, 20), 0.3, dtype) if cell.peephole else None)
    lens[0] = 11
    tr = cpu.forward(cell, x, h0, c0, w, lens, reverse, True)
    inf = cpu.forward(cell, x, h0, c0, w, lens, reverse, False)
    for a, b in zip(tr[:3], inf[:3]):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def test_a_forked_child_gets_its_own_partner(two_threads):
    """A child process forked after two-thread calls runs them again with a fresh
    partner thread (the parent's does not exist there) and the same results."""
    import os
    if not hasattr(os, "fork"):                           # pragma: no cover
        pytest.skip("no fork on this platform")
    cell, x, h0, c0, w, lens, dy = _problem("lstm", 7, 9, 4, 33)
    y, *_ = cpu.forward(cell, x, h0, c0, w, lens, False, False)
    pid = os.fork()
    if pid == 0:                                          # the child: exit code = verdict
        code = 1
        try:
            assert worker.partners == []
            y2, *_ = cpu.forward(cell, x, h0, c0, w, lens, False, False)
            code = 0 if np.array_equal(y, y2) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0



# --------------------------------------------------------------------------- pools past two
@pytest.fixture
def pool_of(two_threads, cpu_settings):
    """``pool_of(n)``: calls on n threads (the caller and n - 1 workers), even on a
    machine with fewer cores (oversubscribed)."""
    def set_(n):
        cpu_settings(num_threads=n, oversubscribe=True)
    return set_


def _bits(prob, reverse=False):
    return _run(*prob, reverse)


@pytest.mark.parametrize("split", ["panels", "rows"])
def test_a_pool_of_workers_that_never_start_does_not_block(pool_of, monkeypatch, cpu_settings,
                                                           split):
    """Three workers whose threads never start: the caller takes every job back
    and does the whole call itself (row ranges included), with the right result."""
    pool_of(4)
    cpu_settings(row_split_bytes=1 << 40 if split == "rows" else -1, row_split_min_rows=1)
    lazy = [worker.Partner(i) for i in range(3)]
    for w in lazy:
        w._ensure = lambda: None
    monkeypatch.setattr(worker, "partners", list(lazy))
    assert _lstm_call_is_fast_and_right() < 5
    for w in lazy:
        assert w.mb[worker.POST] > 0 and w.mb[worker.DONE] == 0


@pytest.mark.parametrize("split", ["panels", "rows"])
def test_one_worker_of_three_never_starts(pool_of, monkeypatch, cpu_settings, split):
    """A pool where the middle worker never comes: the others and the caller do
    its share; the results are bitwise those of one thread."""
    cpu_settings(row_split_bytes=1 << 40 if split == "rows" else -1, row_split_min_rows=1)
    prob = _problem("lstm", 9, 11, 5, 72)
    pool_of(1)
    one = _bits(prob)
    lazy = worker.Partner(1)
    lazy._ensure = lambda: None
    monkeypatch.setattr(worker, "partners", [worker.Partner(0), lazy, worker.Partner(2)])
    pool_of(4)
    four = _bits(prob)
    assert lazy.mb[worker.POST] > 0 and lazy.mb[worker.DONE] == 0
    assert worker.partners[0].mb[worker.DONE] > 0
    for a, b in zip(one, four):
        np.testing.assert_array_equal(a, b)


def test_an_oversubscribed_pool_neither_hangs_nor_crawls(pool_of, cpu_settings):
    """Four threads on (here) two cores: the same bits as one thread, and a call
    no more than a few times the two-thread time (waits yield their core)."""
    import time
    cpu_settings(two_thread_step_flops=1.5e6, row_split_flops=2e7, split_gemm_flops=8e6,
                 row_split_bytes=-1)
    prob = _problem("lstm", 40, 32, 64, 128, lengths=False)
    times = {}
    out = {}
    for n in (1, 2, 4):
        pool_of(n)
        out[n] = _bits(prob)                                     # compiled, pool started
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            _bits(prob)
            ts.append(time.perf_counter() - t0)
        times[n] = sorted(ts)[2]
    for n in (2, 4):
        for a, b in zip(out[n], out[1]):
            np.testing.assert_array_equal(a, b)
    assert len(worker.partners) >= 3
    assert times[4] < 4 * times[2] + 0.05, times


def test_concurrent_calls_from_three_python_threads(pool_of):
    """Three Python threads calling at once with a 3-thread setting share the
    pool (a worker held by one call is skipped by the others): every result is
    bitwise that of a lone one-thread call, and nothing hangs."""
    import threading
    probs = [_problem(n, 12, 9, 6, 48, seed=k) for k, n in enumerate(["lstm", "gru", "rnn_tanh"])]
    probs = [p if p[0].gates == 4 else
             p[:4] + (Weights(p[4].w_ih[:p[0].gates * 48], p[4].w_hh[:p[0].gates * 48],
                              p[4].b_ih[:p[0].gates * 48], p[4].b_hh[:p[0].gates * 48], None),)
             + p[5:] for p in probs]
    pool_of(1)
    want = [_bits(p) for p in probs]
    pool_of(3)
    errors = []

    def work(k):
        try:
            for _ in range(8):
                for a, b in zip(_bits(probs[k]), want[k]):
                    np.testing.assert_array_equal(a, b)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
    ts = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not any(t.is_alive() for t in ts), "a call hung"
    assert not errors, errors[0]
    for w in worker.partners:                                   # every worker released
        assert w.lock.acquire(blocking=False)
        w.lock.release()


def test_a_forked_child_starts_its_own_pool(pool_of):
    """After calls on a pool of three workers, a forked child has no workers, runs
    the same call on a fresh pool of its own and gets the same bits."""
    import os
    if not hasattr(os, "fork"):                           # pragma: no cover
        pytest.skip("no fork on this platform")
    pool_of(4)
    prob = _problem("lstm", 7, 9, 4, 72)
    want = _bits(prob)
    assert len(worker.partners) >= 3
    pid = os.fork()
    if pid == 0:                                          # the child: exit code = verdict
        code = 1
        try:
            assert worker.partners == []
            got = _bits(prob)
            same = all(np.array_equal(a, b) for a, b in zip(got, want))
            code = 0 if same and len(worker.partners) >= 3 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_gemms_after_the_loop_split_by_shape_not_threads(cpu_settings, dtype):
    """The GEMMs after the backward loop (dW, dx over n*B = 128 rows, so dx splits
    in row ranges) split the same way on one thread as on two: a row range of a
    product is not always bitwise the whole product's rows in OpenBLAS (small I)."""
    cpu_settings(num_threads=2, split_gemm_flops=0.0)
    prob = _problem("lstm", 4, 32, 8, 256, lengths=False, dtype=dtype)
    old = cpu.get_num_threads()
    try:
        cpu.set_num_threads(1)
        one = _run(*prob, False)
        cpu.set_num_threads(2)
        two = _run(*prob, False)
    finally:
        cpu.set_num_threads(old)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
