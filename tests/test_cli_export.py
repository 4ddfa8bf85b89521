"""`fastrnn export --model M.npz --onnx M.onnx` (skipped without onnx/onnxruntime)."""
import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import fastrnn                                      # noqa: E402
from fastrnn.cli import main                        # noqa: E402
from fastrnn.data import Standardizer              # noqa: E402


def test_export_command_writes_a_model_equal_to_predict(tmp_path, capsys):
    rng = np.random.default_rng(0)
    reg = fastrnn.SequenceRegressor(2, horizon=2, hidden_size=4, backend="numpy", seed=0)
    reg.scaler = Standardizer([1.0, -2.0], [2.0, 0.5])
    reg.target_scaler = Standardizer([5.0, 0.0], [3.0, 1.0])
    reg.save(tmp_path / "m.npz")
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(tmp_path / "m.npz"), "--onnx", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    x = rng.normal(size=(3, 5, 2)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], reg.predict(x), rtol=1e-6, atol=1e-5)


def test_export_command_errors_are_one_line(tmp_path, capsys):
    m = fastrnn.LanguageModel(5, embed_dim=2, hidden_size=3, backend="numpy", seed=0)
    m.save(tmp_path / "lm.npz")
    assert main(["export", "--model", str(tmp_path / "lm.npz"), "--onnx",
                 str(tmp_path / "lm.onnx"), "--lengths"]) == 2
    assert "takes no lengths" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "missing.npz"), "--onnx",
                 str(tmp_path / "x.onnx")]) == 2
    assert main(["export", "--onnx", "x.onnx"]) == 2
