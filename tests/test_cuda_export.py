"""Export of a model whose parameters live on the GPU: the ONNX file and the
torch twin are those of the same model on the host. Runs under
NUMBA_ENABLE_CUDASIM=1 or on a GPU; skipped without onnx, onnxruntime or torch."""
import numpy as np
import pytest

pytestmark = pytest.mark.cuda_sim     # its own process: see tests/README.md

cuda = pytest.importorskip("numba.cuda")
if not cuda.is_available():
    pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import fastrnn                                      # noqa: E402
from fastrnn import onnx as fonnx                   # noqa: E402


def test_model_on_the_gpu_exports_as_on_the_host():
    clf = fastrnn.SequenceClassifier(2, input_size=3, hidden_size=4, pooling="attention",
                                     backend="numpy", seed=0)
    x = np.random.default_rng(0).normal(size=(2, 3, 3)).astype(np.float32)
    on_host = fonnx.to_bytes(clf)
    twin_host = clf.to_torch()
    clf.to("cuda")
    assert fonnx.to_bytes(clf) == on_host
    twin = clf.to_torch()
    with torch.no_grad():
        a = twin.predict_proba(torch.from_numpy(x))
        b = twin_host.predict_proba(torch.from_numpy(x))
    assert torch.equal(a, b)
