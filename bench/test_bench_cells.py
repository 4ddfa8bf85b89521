"""pytest-benchmark suite: the fused CPU kernels vs the NumPy reference and PyTorch.

The same grid, inputs and runners as ``fastrnn bench`` (:mod:`fastrnn.bench`),
one benchmark per (cell, shape, mode, implementation), grouped as
``"{cell}|{T,B,I,H}|{mode}"`` so the report puts the implementations side by side.

    pytest bench/ --benchmark-disable      # smoke test: every runner once, on the
                                           # two small shapes (FASTRNN_BENCH_FULL=1: all)
    pytest bench/ --benchmark-only         # timings (keep the machine quiet)

JIT compilation happens in the fixture's warm-up call, outside the timed region.
"""
import os

import numpy as np
import pytest

from fastrnn import bench, reference
from fastrnn.cells import get_cell

cpu = pytest.importorskip("fastrnn.kernels.cpu")
if not cpu.available()[0]:  # pragma: no cover
    pytest.skip(cpu.available()[1], allow_module_level=True)

SHAPES = bench.GRID
IDS = ["x".join(map(str, s)) for s in SHAPES]


def _runner(impl, cname, shape, mode):
    reg, tname = bench.BENCH_CELLS[cname]
    cell = get_cell(reg)
    inputs = bench._make_inputs(cell, *shape)
    if impl == "torch":
        torch = pytest.importorskip("torch")
        if tname is None:
            pytest.skip(f"{cname} has no PyTorch twin")
        return bench._torch_runner(torch, tname, cell, inputs, mode)
    return bench._backend_runner(reference if impl == "numpy" else cpu, cell, inputs, mode)


@pytest.mark.parametrize("impl", bench.IMPLS)
@pytest.mark.parametrize("mode", bench.MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("cname", list(bench.BENCH_CELLS))
def test_cell(request, benchmark, cname, shape, mode, impl):
    if (request.config.getoption("benchmark_disable", False) and shape not in SHAPES[:2]
            and not os.environ.get("FASTRNN_BENCH_FULL")):
        pytest.skip("smoke run: small shapes only (FASTRNN_BENCH_FULL=1 runs them all)")
    fn = _runner(impl, cname, shape, mode)
    fn()  # warm-up: compiles the kernels outside the timed region
    benchmark.group = f"{cname}|{','.join(map(str, shape))}|{mode}"
    benchmark.extra_info.update(flops=bench.layer_flops(get_cell(bench.BENCH_CELLS[cname][0]),
                                                        *shape, mode))
    benchmark(fn)


def test_cli_quick_smoke(tmp_path, capsys):
    """``fastrnn bench`` end to end on one tiny shape (no compile subprocesses)."""
    out = tmp_path / "b.json"
    rc = bench.main(["--cells", "lstm,gru", "--quick", "--no-compile", "--shapes", "5,2,3,4",
                     "--json", str(out)])
    assert rc == 0
    import json
    data = json.loads(out.read_text())
    recs = data["records"]
    assert {r["impl"] for r in recs} >= {"numpy", "cpu"}
    assert all(r["median_s"] > 0 and np.isfinite(r["median_s"]) for r in recs)
    assert {(r["cell"], r["mode"]) for r in recs} == {
        (c, m) for c in ("lstm", "gru") for m in bench.MODES}
    assert "summary" in capsys.readouterr().out
