"""The CPU time loops are compiled per cell from one skeleton (kernels/loops.py,
``compile_loop``, with the row functions of kernels/rows.py); Numba's on-disk
cache must still serve a second process: no recompilation, one cache file per
cell and skeleton."""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")

_RUN = textwrap.dedent("""
    import numpy as np
    from fastrnn.kernels import cpu
    from fastrnn.cells import get_cell
    from fastrnn.dispatch import Weights
    cpu.configure(packed_dtypes=())  # float64 on the loops, not the packed kernels
    out = []
    for name in ("lstm", "gru_reset_before"):       # one cell per skeleton
        cell = get_cell(name)
        rng = np.random.default_rng(0)
        T, B, I, H = 4, 3, 5, 6
        G = cell.gates
        w = Weights(rng.standard_normal((G * H, I)), rng.standard_normal((G * H, H)),
                    rng.standard_normal(G * H), rng.standard_normal(G * H), None)
        x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
        c0 = h0.copy() if cell.has_cell else None
        y, h, c, cache = cpu.forward(cell, x, h0, c0, w, None, False, True)
        cpu.backward(cell, cache, np.ones_like(y), h0 * 0, None if c0 is None else c0 * 0)
        for loop in cpu.LOOPS[name]:
            st = loop.stats
            out.append(f"{loop.__name__}:{sum(st.cache_hits.values())}:"
                       f"{sum(st.cache_misses.values())}")
    print(" ".join(out))
""")


_RUN_PACKED = textwrap.dedent("""
    import numpy as np
    from fastrnn.kernels import cpu, packed_gru_rnn, packed_lstm
    from fastrnn.cells import get_cell
    from fastrnn.dispatch import Weights
    out = []
    for name in ("lstm", "gru", "rnn_tanh"):
        cell = get_cell(name)
        rng = np.random.default_rng(0)
        T, B, I, H = 4, 3, 5, 6
        G = cell.gates
        w = Weights(rng.standard_normal((G * H, I)), rng.standard_normal((G * H, H)),
                    rng.standard_normal(G * H), rng.standard_normal(G * H), None)
        x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
        c0 = h0.copy() if cell.has_cell else None
        y, h, c, cache = cpu.forward(cell, x, h0, c0, w, None, False, True)
        assert cache.saved.pk.up.dtype == np.float64
        cpu.backward(cell, cache, np.ones_like(y), h0 * 0, None if c0 is None else c0 * 0)
    for k in (packed_lstm.lstm_fwd_kernel, packed_lstm.lstm_bwd_kernel,
              packed_gru_rnn.gru_fwd_kernel, packed_gru_rnn.gru_bwd_kernel,
              packed_gru_rnn.rnn_fwd_kernel, packed_gru_rnn.rnn_bwd_kernel):
        st = k.stats
        out.append(f"{k.__name__}:{sum(st.cache_hits.values())}:"
                   f"{sum(st.cache_misses.values())}")
    print(" ".join(out))
""")


def _run(tmp_path, cache_dir, script=_RUN):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    # from an empty folder: the installed fastrnn, not the checkout's (CI installs it)
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict((name, (int(hits), int(misses))) for name, hits, misses in
                (item.split(":") for item in r.stdout.split()))


def test_second_process_loads_the_loops_from_the_cache(tmp_path):
    cache_dir = tmp_path / "numba_cache"
    work = tmp_path / "work"
    work.mkdir()
    first = _run(work, cache_dir)
    assert set(first) == {"fwd1_lstm", "bwd1_lstm", "fwd2_gru_reset_before",
                          "bwd2_gru_reset_before"}
    second = _run(work, cache_dir)
    for name, (hits, misses) in second.items():
        assert misses == 0 and hits >= 1, f"{name} recompiled in a new process: {second}"
    # one index file per compiled copy of a skeleton (its own name), filed under
    # rows.py: a change to the row functions invalidates the compiled loops
    index = [p.name for p in cache_dir.rglob("*.nbi")]
    for name in first:
        assert any(f.startswith(f"rows.{name}-") for f in index), (name, index)


def test_second_process_loads_the_float64_packed_kernels_from_the_cache(tmp_path):
    """The packed kernels' float64 variants (a float64 tag) are cached like the float32 ones."""
    cache_dir = tmp_path / "numba_cache"
    work = tmp_path / "work"
    work.mkdir()
    first = _run(work, cache_dir, _RUN_PACKED)
    assert all(misses >= 1 for hits, misses in first.values()), first
    second = _run(work, cache_dir, _RUN_PACKED)
    for name, (hits, misses) in second.items():
        assert misses == 0 and hits >= 1, f"{name} recompiled in a new process: {second}"
