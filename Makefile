# fastrnn: `make demo` runs the main job, `make test` the whole test suite.
# Each creates .venv and installs what it needs on a fresh machine (Python 3.10+ and pip).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is optional: only the parity tests and the benchmark's comparison use it.
# mpi4py + mpich (.[mpi]) are optional too: fastrnn.distributed and its mpiexec tests.
# scikit-learn (.[sklearn], also in .[examples]): fastrnn.sklearn and its tests.
# On the project's machines this pin resolves to a local CPU build.
TORCH  ?= torch==2.13.0

.PHONY: install demo test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# a regular (non-editable) install: the tests import the installed package
install: $(BIN)/python
	$(BIN)/python -m pip install -q ".[test,cuda,examples,sklearn]"
	$(BIN)/python -m pip install -q "$(TORCH)" || echo "torch not installed: its parity tests will be skipped"
	$(BIN)/python -m pip install -q ".[ort]" || echo "onnxruntime not installed: its agreement tests will be skipped"
	$(BIN)/python -m pip install -q ".[mpi]" || echo "mpi4py/mpich not installed: the MPI (fastrnn.distributed) tests will be skipped"

demo: install
	$(BIN)/fastrnn demo

test: install
	cd $(VENV) && ../$(BIN)/python -c "import fastrnn.kernels, sys; f = fastrnn.kernels.__file__; \
	  assert 'site-packages' in f, f; print('installed fastrnn.kernels at', f)"
	$(BIN)/pytest -q -p no:cacheprovider tests -m "not cuda_sim"
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/pytest -q -p no:cacheprovider tests -m cuda_sim
	$(BIN)/pytest -q -p no:cacheprovider bench --benchmark-disable

# onnxruntime is optional too: the benchmark's inference peer (the ort column)
bench: install
	$(BIN)/python -m pip install -q ".[ort]" || echo "onnxruntime/onnx not installed: the benchmark skips its ort column"
	$(BIN)/fastrnn bench --json bench/results/cpu.json
	$(BIN)/fastrnn bench --train --json bench/results/train.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .benchmarks
