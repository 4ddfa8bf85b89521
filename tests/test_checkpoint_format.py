"""The file format is written in one place (fastrnn.checkpoint): a model
file and a training checkpoint start with the same header and parameters."""
import json

import numpy as np

from fastrnn import checkpoint
from fastrnn.data import ArrayBatches
from fastrnn.models import SequenceClassifier, load_model
from fastrnn.optim import Adam
from fastrnn.train import Trainer


def _entries(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_model_file_and_training_checkpoint_share_the_writer(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4, 2)).astype(np.float32)
    y = (x[:, 0, 0] > 0).astype(np.int64)
    model = SequenceClassifier(2, input_size=2, hidden_size=5, seed=0, backend="numpy")
    tr = Trainer(model, Adam(model), ArrayBatches(x, y, batch_size=8), progress=False)
    tr.fit(1)
    model.save(tmp_path / "model.npz")
    checkpoint.save_model(tmp_path / "direct.npz", model, model.params)
    tr.save_checkpoint(tmp_path / "train.npz")
    saved, direct, train = (_entries(tmp_path / f"{n}.npz") for n in ("model", "direct", "train"))
    assert saved.keys() == direct.keys()                 # Model.save writes this format too
    for k in saved:
        np.testing.assert_array_equal(saved[k], direct[k], err_msg=k)
    header = json.loads(str(train["__header__"]))
    assert header == json.loads(str(saved["__header__"]))
    assert header["format"] == checkpoint.FORMAT and header["model"] == "SequenceClassifier"
    assert list(train)[:2] == ["__header__", "__trainer__"]
    for k, v in saved.items():
        if k.startswith("param/"):
            np.testing.assert_array_equal(train[k], v, err_msg=k)
    assert {k.split("/")[0] for k in train} == {"__header__", "__trainer__", "param", "optim"}
    for path in ("direct.npz", "train.npz"):
        m = load_model(tmp_path / path)
        for k, v in model.params.items():
            np.testing.assert_array_equal(m.params[k], v, err_msg=k)
