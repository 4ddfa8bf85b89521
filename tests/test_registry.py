"""The cell registry is the registry: every cell in fastrnn.cells.CELLS has a
CPU kernel, a CUDA kernel, a layer, and torch parity tests where it has a
torch twin; every per-cell table is derived from it; aliases resolve; and the
kernels and the reference stand on the contract, importing nothing above it."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from fastrnn import bench, layers, models
from fastrnn.cells import CELL_NAMES, CELLS, get_cell
from fastrnn.testing import assert_matches_reference, make_problem

ROOT = Path(__file__).resolve().parent.parent
T, B, I, H = 3, 2, 3, 4


# --------------------------------------------------------------------------- the registry itself
def _cuda_saved():
    """The CUDA backend's saved blocks per cell (kernels/cuda_points.py's SAVED),
    read from its source: importing numba.cuda here would come before the
    simulator's switch of the CUDA tests."""
    tree = ast.parse((ROOT / "kernels" / "cuda_points.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
                "SAVED"]:
            return ast.literal_eval(node.value)
    raise AssertionError("kernels/cuda_points.py has no SAVED table")


@pytest.mark.parametrize("name", list(CELLS))
def test_spec_is_consistent(name):
    cell = CELLS[name]
    assert cell.name == name
    assert cell.gates == len(cell.gate_names)
    assert cell.family in ("rnn", "lstm", "gru")
    assert cell.has_cell == (cell.family == "lstm")
    assert cell.peephole in (None, "diagonal", "full")
    assert cell.peephole is None or cell.family == "lstm"
    assert cell.products in (1, 2)
    assert _cuda_saved()[name] >= 1
    assert cell.torch is None or isinstance(cell.torch[0], str)


def test_aliases_resolve():
    assert get_cell("peephole") is CELLS["peephole_diagonal"]
    assert get_cell("peephole_lstm") is CELLS["peephole_diagonal"]
    assert get_cell("rnn") is CELLS["rnn_tanh"]
    for name, cell in CELLS.items():
        assert get_cell(name) is cell
        assert get_cell(cell) is cell
        for alias in cell.aliases:
            assert get_cell(alias) is cell
    # no alias shadows a key or another alias: one name, one cell
    names = [n for c in CELLS.values() for n in (c.name,) + c.aliases]
    assert len(names) == len(set(names)) == len(CELL_NAMES)


@pytest.mark.parametrize("bad", ["transformer", "", None, ["lstm"]])
def test_unknown_cell_lists_the_accepted_names(bad):
    with pytest.raises(ValueError, match="unknown cell") as info:
        get_cell(bad)
    for name in CELL_NAMES:
        assert repr(name) in str(info.value)


# --------------------------------------------------------------------------- every cell everywhere
@pytest.mark.parametrize("name", list(CELLS))
def test_every_cell_has_a_layer(name):
    cell = CELLS[name]
    cls = getattr(layers, cell.layer[0])
    layer = cls(I, H, backend="numpy", seed=0, **cell.layer_kwargs)
    assert layer.cell is cell
    assert getattr(fastrnn, cell.layer[0]) is cls      # a public class


@pytest.mark.parametrize("name", list(CELLS))
def test_every_cell_has_a_cpu_kernel(name):
    """Forward (training and inference) and backward of the cpu backend agree
    with the reference on a tiny problem (tests/test_cpu_kernels.py does it
    thoroughly; this says which cell lacks a kernel)."""
    cpu = pytest.importorskip("fastrnn.kernels.cpu")
    if not cpu.available()[0]:
        pytest.skip(cpu.available()[1])
    cell = CELLS[name]
    assert name in cpu.LOOPS
    # which kernels run each cell in float32 (training) with the default settings,
    # written out here rather than derived from the registry: a cell that falls
    # off its fast kernels onto the loops shows up
    if cpu.settings.use_packed:
        assert cpu.route(cell, np.dtype(np.float32), True) == PACKED_ROUTE[name]
    problem = make_problem(cell, T, B, I, H, seed=1, dtype=np.float64, state=1.0)
    assert_matches_reference(cpu, cell, problem, lengths=np.array([T, T - 1]))


#: registry cell -> the CPU kernels that run it (``cpu.route``) where the packed
#: kernels are on: the one-product cells on the packed kernels, the cells with a
#: second dependent product per step on the loops
PACKED_ROUTE = {"rnn_tanh": "packed_cells", "rnn_relu": "packed_cells", "lstm": "packed",
                "gru": "packed_cells", "gru_reset_before": "loops",
                "peephole_diagonal": "packed", "peephole_full": "loops"}


# Runs in Numba's CUDA simulator (a new process: the switch must be set before
# numba.cuda is imported) with the problem and the launches shrunk: the
# simulator runs each thread as a Python thread (~0.5 s a cell on a quiet machine).
_CUDA_PROBE = """
import json
import numpy as np
from fastrnn import reference
from fastrnn.cells import CELLS
from fastrnn.kernels import cuda as kc
from fastrnn.testing import make_problem

out = {{}}
with kc.configure(tile=2, threads=2, use_cupy=False, colsum_block=(2, 2),
                  gemm_blocking=(2, 2, 2, 1, 1)):
    for name, cell in CELLS.items():
        try:
            x, h0, c0, w, dy = make_problem(cell, 2, 1, 2, 2, seed=1, dtype=np.float64,
                                            state=1.0)
            y, h, c, cache = kc.forward(cell, x, h0, c0, w, None, False, True)
            ref = reference.forward(cell, x, h0, c0, w, None, False, True)
            dc = h0 if cell.has_cell else None
            dx = kc.backward(cell, cache, dy, h0, dc)[0]
            dx_ref = reference.backward(cell, ref[3], dy, h0, dc)[0]
            out[name] = max(float(np.abs(kc.to_host(y) - ref[0]).max()),
                            float(np.abs(kc.to_host(dx) - dx_ref).max()))
        except Exception as exc:
            out[name] = f"{{type(exc).__name__}}: {{exc}}"
print(json.dumps(out))
"""


def test_every_cell_has_a_cuda_kernel(tmp_path):
    """Forward and backward of the cuda backend, in the simulator, for every
    cell (tests/test_cuda.py, run under NUMBA_ENABLE_CUDASIM=1, does it thoroughly)."""
    pytest.importorskip("numba.cuda")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    code = _CUDA_PROBE.format()
    # from an empty folder: the installed fastrnn (CI installs it; the checkout's
    # fastrnn/ has no kernels/), not the one in the working directory
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(errors) == set(CELLS)
    for name, err in errors.items():
        assert not isinstance(err, str) and err < 1e-10, f"{name}: {err}"


def test_parity_tests_cover_every_torch_twin():
    pytest.importorskip("torch")
    import test_torch_parity as parity
    twins = [n for n, c in CELLS.items() if c.torch is not None]
    assert twins, "no cell has a torch twin?"
    assert list(parity.TORCH) == twins
    marks = [m for m in parity.test_parity_stacked_bidirectional.pytestmark
             if m.name == "parametrize" and m.args[0] == "variant"]
    assert [list(m.args[1]) for m in marks] == [twins]


# --------------------------------------------------------------------------- derived tables
#: every name ``cell=`` accepts in the models (the registry keys and their
#: aliases) -> (layer class, its arguments, the registry cell that layer runs),
#: written out by hand, not derived from the registry: a name added, dropped or
#: pointed at another layer shows up here
LAYER_OF = {
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}, "rnn_tanh"),
    "rnn": ("RNN", {"nonlinearity": "tanh"}, "rnn_tanh"),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}, "rnn_relu"),
    "lstm": ("LSTM", {}, "lstm"),
    "gru": ("GRU", {"reset_after": True}, "gru"),
    "gru_reset_before": ("GRU", {"reset_after": False}, "gru_reset_before"),
    "peephole_diagonal": ("PeepholeLSTM", {"peephole": "diagonal"}, "peephole_diagonal"),
    "peephole": ("PeepholeLSTM", {"peephole": "diagonal"}, "peephole_diagonal"),
    "peephole_lstm": ("PeepholeLSTM", {"peephole": "diagonal"}, "peephole_diagonal"),
    "peephole_full": ("PeepholeLSTM", {"peephole": "full"}, "peephole_full"),
}


def test_tables_are_derived_from_the_registry():
    import _variants
    # the layer variants the tests iterate over build every registry cell once:
    # the cell comes from the layer class and its arguments, not from the table
    built = [_variants.make(v, I, H, backend="numpy", seed=0).cell for v in _variants.VARIANTS]
    assert built == list(CELLS.values())
    # the models accept exactly the documented names, each building its layer
    assert set(models.CELL_TYPES) == set(LAYER_OF)
    for name, (cls_name, kwargs, cell_name) in LAYER_OF.items():
        assert models.CELL_TYPES[name] == (getattr(fastrnn, cls_name), kwargs), name
        rnn = models.make_recurrent(name, I, H, backend="numpy", seed=0)
        assert type(rnn) is getattr(fastrnn, cls_name) and rnn.cell is CELLS[cell_name], name
    # every registry cell can be benchmarked, under a registry name or an alias
    benched = {get_cell(n).name for n in bench.BENCH_CELLS + bench.EXTRA_CELLS}
    assert benched == set(CELLS)


@pytest.mark.parametrize("alias", ["peephole", "peephole_lstm", "rnn"])
def test_models_take_aliases(alias):
    rnn = models.make_recurrent(alias, 2, 3, backend="numpy", seed=0)
    assert rnn.cell is get_cell(alias)
    with pytest.raises(ValueError, match="unknown cell 'peep'.*peephole_full"):
        models.make_recurrent("peep", 2, 3, backend="numpy")


# --------------------------------------------------------------------------- the floor
#: what the kernels and the reference may import from the package
#: (the reference is on the floor too, as this test checks of it: the CPU backend
#: runs its bf16 code for the cells that have no bf16 kernel)
_FLOOR = ("fastrnn.contract", "fastrnn.cells", "fastrnn.bf16", "fastrnn.reference",
          "fastrnn.kernels")


def _imports(path, package):
    """Every module ``path`` imports (at any depth: lazy imports count too),
    relative imports resolved against ``package``."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:    # ``from fastrnn import x`` may name a module
                yield node.lineno, f"{base}.{alias.name}" if base == "fastrnn" else base


# fastrnn.bf16 (the bf16 mode's name and rounding, pure NumPy) sits on the floor
# beside the contract: it imports nothing of fastrnn's, as the test over it says
_FLOOR_FILES = sorted((ROOT / "kernels").glob("*.py")) + [
    ROOT / "fastrnn" / "reference.py", ROOT / "fastrnn" / "bf16.py"]


@pytest.mark.parametrize("path", _FLOOR_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_kernels_and_reference_import_nothing_above_the_contract(path):
    package = "fastrnn.kernels" if path.parent.name == "kernels" else "fastrnn"
    bad = [f"{path.name}:{line}: {mod}" for line, mod in _imports(path, package)
           if (mod == "fastrnn" or mod.startswith("fastrnn."))
           and not any(mod == f or mod.startswith(f + ".") for f in _FLOOR)]
    assert not bad, "imports above the contract (allowed: %s):\n%s" % (", ".join(_FLOOR),
                                                                       "\n".join(bad))


def test_the_import_scan_sees_lazy_and_relative_imports(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("from . import pointwise\nfrom ..dispatch import Weights\n"
                   "def f():\n    from fastrnn import layers\n    import fastrnn.train\n")
    assert [m for _, m in _imports(src, "fastrnn.kernels")] == [
        "fastrnn.kernels", "fastrnn.dispatch", "fastrnn.layers", "fastrnn.train"]
