"""Any thread count gives the same bits: ``set_num_threads(n)`` for n = 1..4 on
LSTM, GRU and RNN, forward (training and inference) and backward, at every
shape of the benchmark grid, float32 and float64, bitwise equal to n = 1.

The kernels' work splits depend on the shape, never on how many threads run
or who claims which panel, so the results cannot depend on n. The pool runs
all n threads here even where the machine has fewer cores
(``oversubscribe``), so 3 and 4 threads are exercised on 2 cores. A hang (a
worker that never finishes, a barrier that never opens) ends the run through
a watchdog that prints every thread's stack, rather than stalling CI."""
import faulthandler

import numpy as np
import pytest

from fastrnn.bench import GRID, make_inputs
from fastrnn.cells import get_cell

cpu = pytest.importorskip("fastrnn.kernels.cpu")
if not cpu.available()[0]:  # pragma: no cover - depends on the install
    pytest.skip(f"cpu backend unavailable: {cpu.available()[1]}", allow_module_level=True)

#: seconds one parametrised case may take before the watchdog ends the process
WATCHDOG_S = 300


def _run(cell, inputs, lengths):
    x, h0, c0, w, dy = inputs
    y, h, c, cache = cpu.forward(cell, x, h0, c0, w, lengths, False, True)
    yi, hi, ci, _ = cpu.forward(cell, x, h0, c0, w, lengths, False, False)
    dh = np.ones_like(h)
    dc = np.ones_like(c) if c is not None else None
    dx, dh0, dc0, dw = cpu.backward(cell, cache, dy, dh, dc)
    return [a for a in (y, h, c, yi, hi, ci, dx, dh0, dc0, *dw) if a is not None]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell_name", ["lstm", "gru", "rnn_tanh"])
def test_every_thread_count_gives_the_same_bits(cell_name, dtype):
    cell = get_cell(cell_name)
    old = cpu.get_num_threads()
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    conf = cpu.configure(oversubscribe=True)
    try:
        for shape in GRID:
            T, B, I, H = shape
            inputs = make_inputs(cell, *shape, seed=1, dtype=dtype)
            lengths = np.random.default_rng(2).integers(1, T + 1, B) if B > 1 else None
            results = {}
            for n in (1, 2, 3, 4):
                cpu.set_num_threads(n)
                results[n] = _run(cell, inputs, lengths)
            for n in (2, 3, 4):
                for k, (a, b) in enumerate(zip(results[n], results[1])):
                    np.testing.assert_array_equal(
                        a, b, err_msg=f"{cell_name} {np.dtype(dtype).name} {shape}: "
                                      f"output {k} at {n} threads differs from 1 thread")
    finally:
        faulthandler.cancel_dump_traceback_later()
        conf.__exit__(None, None, None)
        cpu.set_num_threads(old)
