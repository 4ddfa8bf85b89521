"""The CPU backend keeps freed buffers in the heap (kernels/heap.py): a repeated
training step does not fault its temporaries in again; the user can opt out."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc's mallopt and getrusage page faults")

_STEP = textwrap.dedent("""
    import resource, numpy as np
    from fastrnn.kernels import cpu, heap
    from fastrnn.cells import get_cell
    from fastrnn.dispatch import Weights
    cell = get_cell("lstm")
    rng = np.random.default_rng(0)
    T, B, I, H = 50, 32, 64, 128
    u = lambda *s: rng.uniform(-0.1, 0.1, s).astype(np.float32)
    w = Weights(u(4 * H, I), u(4 * H, H), u(4 * H), u(4 * H), None)
    x, h0, dy = u(T, B, I), u(B, H), u(T, B, H)
    def step():
        y, h, c, cache = cpu.forward(cell, x, h0, h0, w, None, False, True)
        cpu.backward(cell, cache, dy, h0 * 0, h0 * 0)
    for _ in range(3):
        step()
    faults = []
    for _ in range(3):
        r = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r)
    print(f"{heap.status}|{min(faults)}")
""")


def _run(tmp_path, **env):
    e = {k: v for k, v in os.environ.items()
         if k not in ("FASTRNN_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                      "GLIBC_TUNABLES")}
    e.update(env)
    # from an empty folder: the installed package, not the checkout's fastrnn/ (no kernels/)
    out = subprocess.run([sys.executable, "-c", _STEP], env=e, capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    status, faults = out.stdout.strip().splitlines()[-1].split("|")
    return status, int(faults)


def test_repeated_step_reuses_its_pages(tmp_path):
    status, faults = _run(tmp_path)
    if status != "True":
        pytest.skip(f"malloc not tunable here: {status}")
    # ~3 MB of temporaries per step: ~750 pages would fault in again without it
    assert faults < 100, faults


def test_opt_out_leaves_malloc_alone(tmp_path):
    status, faults = _run(tmp_path, FASTRNN_MALLOC="0")
    assert status == "off: FASTRNN_MALLOC=0"
    print("page faults per step with glibc's defaults:", faults)
    status, _ = _run(tmp_path, MALLOC_TRIM_THRESHOLD_="1000000")
    assert status == "off: malloc tuned by the environment"
