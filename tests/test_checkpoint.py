"""Saving, loading and resuming (fastrnn.checkpoint, through the models and the
Trainer): nothing saved is ever half-written, nothing wrong loads silently.

- a failed load or resume leaves the model, optimizer and trainer untouched;
- saves are atomic: a crash halfway leaves the previous file loadable;
- every broken file gives one CheckpointError naming the file.
"""
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import fastrnn
from fastrnn import checkpoint as ckpt
from fastrnn.data import ArrayBatches, LMBatches
from fastrnn.models import LanguageModel, SequenceClassifier, load_model
from fastrnn.optim import SGD, Adam
from fastrnn.train import Trainer


# ============================================================ failed loads change nothing
def _classifier(n_classes, seed=1):
    return SequenceClassifier(n_classes, input_size=2, hidden_size=5, seed=seed, backend="numpy")


def _data(n_classes):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4, 2)).astype(np.float32)
    return ArrayBatches(x, rng.integers(0, n_classes, 16), batch_size=8)


def _snapshot(trainer):
    return ({k: v.copy() for k, v in trainer.model.params.items()},
            trainer.optimizer.state_dict(), trainer.rng.bit_generator.state,
            trainer.epoch, trainer.global_step)


def _assert_unchanged(trainer, snap):
    params, ost, rng, epoch, step = snap
    for k, v in trainer.model.params.items():
        np.testing.assert_array_equal(v, params[k], err_msg=k)
    now = trainer.optimizer.state_dict()
    assert now["type"] == ost["type"] and now["step_count"] == ost["step_count"]
    assert set(now["state"]) == set(ost["state"])
    for name, st in now["state"].items():
        for buf, v in st.items():
            np.testing.assert_array_equal(v, ost["state"][name][buf])
    assert trainer.rng.bit_generator.state == rng
    assert (trainer.epoch, trainer.global_step) == (epoch, step)


def test_failed_resume_of_a_4_class_checkpoint_leaves_a_3_class_trainer_untouched(tmp_path):
    four = _classifier(4)
    tr4 = Trainer(four, Adam(four, lr=1e-2), _data(4), progress=False,
                  checkpoint=tmp_path / "c4.npz")
    tr4.fit(1)
    three = _classifier(3, seed=7)
    tr3 = Trainer(three, Adam(three, lr=1e-2), _data(3), progress=False)
    tr3.fit(1)
    snap = _snapshot(tr3)
    with pytest.raises(fastrnn.CheckpointError, match=r"c4\.npz.*num_classes=4 \(this one: 3\)"):
        tr3.resume(tmp_path / "c4.npz")
    _assert_unchanged(tr3, snap)       # the recurrent weights were overwritten before


def test_failed_resume_of_an_adam_checkpoint_into_sgd_leaves_everything(tmp_path):
    m = _classifier(3)
    Trainer(m, Adam(m, lr=1e-2), _data(3), progress=False, checkpoint=tmp_path / "a.npz").fit(1)
    m2 = _classifier(3, seed=9)
    tr = Trainer(m2, SGD(m2, lr=1e-2, momentum=0.9), _data(3), progress=False)
    tr.fit(1)
    snap = _snapshot(tr)
    with pytest.raises(fastrnn.CheckpointError, match=r"a\.npz.*Adam optimizer.*SGD"):
        tr.resume(tmp_path / "a.npz")
    _assert_unchanged(tr, snap)        # every parameter used to be loaded already


def test_failed_resume_generator_mismatch_and_bad_trainer_state(tmp_path):
    m = _classifier(3)
    Trainer(m, Adam(m), _data(3), progress=False, checkpoint=tmp_path / "a.npz").fit(1)
    # a model with one generator fewer (no attention pool is the same; drop the trainer's)
    m2 = _classifier(3, seed=3)
    tr = Trainer(m2, Adam(m2), _data(3), progress=False)
    snap = _snapshot(tr)
    tr._generators = lambda: [tr.rng]
    with pytest.raises(fastrnn.CheckpointError, match="random-generator"):
        tr.resume(tmp_path / "a.npz")
    del tr._generators
    _assert_unchanged(tr, snap)
    # a valid archive whose trainer JSON lacks a field
    with np.load(tmp_path / "a.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["__trainer__"] = np.array('{"epoch": 1}')
    np.savez(tmp_path / "b.npz", **arrays)
    with pytest.raises(fastrnn.CheckpointError, match=r"b\.npz.*corrupt trainer state"):
        tr.resume(tmp_path / "b.npz")
    _assert_unchanged(tr, snap)


def test_failed_resume_with_same_shapes_but_another_cell(tmp_path):
    # GRU reset_after=True and False have the same parameter names and shapes
    kw = dict(input_size=2, hidden_size=5, backend="numpy", seed=1)
    a = SequenceClassifier(3, cell="gru", **kw)
    Trainer(a, Adam(a), _data(3), progress=False, checkpoint=tmp_path / "g.npz").fit(1)
    b = SequenceClassifier(3, cell="gru_reset_before", **kw)
    tr = Trainer(b, Adam(b), _data(3), progress=False)
    snap = _snapshot(tr)
    with pytest.raises(fastrnn.CheckpointError, match="cell='gru' \\(this one: 'gru_reset_before'\\)"):
        tr.resume(tmp_path / "g.npz")
    _assert_unchanged(tr, snap)


def test_model_load_state_dict_checks_everything_before_writing():
    a, b = _classifier(4), _classifier(3, seed=5)
    before = {k: v.copy() for k, v in b.params.items()}
    with pytest.raises(fastrnn.CheckpointError, match="shape"):
        b.load_state_dict(a.params)
    for k, v in b.params.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


# ============================================================ atomic saves
def _crash_halfway(monkeypatch, exc=OSError("No space left on device")):
    """Make the writer write half of the archive's entries, then fail."""
    real = ckpt._write_npz

    def half(f, arrays):
        names = list(arrays)
        real(f, {k: arrays[k] for k in names[:len(names) // 2]})
        raise exc

    monkeypatch.setattr(ckpt, "_write_npz", half)


def _only(tmp_path, *names):
    assert sorted(os.listdir(tmp_path)) == sorted(names)     # no temporary file left behind


def test_model_save_crash_keeps_the_previous_file(tmp_path, monkeypatch):
    lm = LanguageModel(6, 3, 4, seed=0, backend="numpy")
    path = lm.save(tmp_path / "lm.npz")
    old = {k: v.copy() for k, v in lm.params.items()}
    for v in lm.params.values():
        v += 1
    _crash_halfway(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        lm.save(path)
    _only(tmp_path, "lm.npz")
    again = load_model(path)
    for k, v in again.params.items():
        np.testing.assert_array_equal(v, old[k])
    monkeypatch.undo()
    lm.save(path)                                              # and a good save replaces it
    np.testing.assert_array_equal(load_model(path).params["head.bias"], lm.params["head.bias"])
    _only(tmp_path, "lm.npz")


def test_checkpoint_save_crash_keeps_the_previous_file(tmp_path, monkeypatch):
    m = _classifier(3)
    tr = Trainer(m, Adam(m), _data(3), progress=False, checkpoint=tmp_path / "ck.npz")
    tr.fit(1)
    _crash_halfway(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        tr.fit(2)
    _only(tmp_path, "ck.npz")                                  # was: ck.tmp.npz left behind
    m2 = _classifier(3, seed=4)
    tr2 = Trainer(m2, Adam(m2), _data(3), progress=False).resume(tmp_path / "ck.npz")
    assert tr2.epoch == 1


def test_a_killed_process_leaves_the_previous_file_loadable(tmp_path):
    lm = LanguageModel(6, 3, 4, seed=0, backend="numpy")
    path = lm.save(tmp_path / "lm.npz")
    code = f"""
import os, numpy as np
from fastrnn import checkpoint as ckpt
from fastrnn.models import LanguageModel
real = ckpt._write_npz
def die(f, arrays):
    real(f, {{k: arrays[k] for k in list(arrays)[:2]}})
    f.flush()
    os._exit(9)                                   # a hard crash mid-write
ckpt._write_npz = die
m = LanguageModel(6, 3, 4, seed=1, backend="numpy")
m.save({str(path)!r})
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    again = load_model(path)
    for k, v in again.params.items():
        np.testing.assert_array_equal(v, lm.params[k])


# ============================================================ broken files
def _flip_data_byte(path):
    """Flip one byte inside the stored data of the largest array (a bad CRC)."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    raw = bytearray(open(path, "rb").read())
    off = info.header_offset
    start = off + 30 + int.from_bytes(raw[off + 26:off + 28], "little") \
        + int.from_bytes(raw[off + 28:off + 30], "little")
    raw[start + info.compress_size - 5] ^= 0xFF
    open(path, "wb").write(bytes(raw))


def _broken_files(good, tmp_path):
    data = open(good, "rb").read()
    files = {}

    def put(name, blob):
        p = tmp_path / name
        p.write_bytes(blob)
        files[name] = p

    put("truncated.npz", data[:len(data) // 2])
    put("empty.npz", b"")
    put("random.npz", np.random.default_rng(0).bytes(4096))
    put("pk-random.npz", b"PK\x03\x04" + np.random.default_rng(1).bytes(4096))
    crc = tmp_path / "badcrc.npz"
    crc.write_bytes(data)
    _flip_data_byte(crc)
    files["badcrc.npz"] = crc
    np.save(tmp_path / "array.npy", np.zeros(5))
    files["array.npy"] = tmp_path / "array.npy"
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    for name, header in (("badjson.npz", "{'format': oops"),
                         ("notobject.npz", "[1, 2]"),
                         ("badconfig.npz", '{"format": "fastrnn-model/1", "model": '
                                           '"LanguageModel", "config": {"vocab_size": "x"}}')):
        np.savez(tmp_path / name, **{**arrays, "__header__": np.array(header)})
        files[name] = tmp_path / name
    bad_trainer = tmp_path / "badtrainer.npz"
    np.savez(bad_trainer, **{**arrays, "__trainer__": np.array("{nope")})
    files["badtrainer.npz"] = bad_trainer
    return files


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("broken")
    lm = LanguageModel(6, 3, 4, seed=0, backend="numpy")
    tr = Trainer(lm, Adam(lm), LMBatches(np.arange(60) % 6, 2, 5), progress=False,
                 checkpoint=tmp / "good.npz")
    tr.fit(1)
    return _broken_files(tmp / "good.npz", tmp)


LOADERS = {
    "load_model": lambda p: load_model(p),
    "Model.load": lambda p: LanguageModel.load(p),
    "Trainer.resume": lambda p: Trainer(lm := LanguageModel(6, 3, 4, backend="numpy"), Adam(lm),
                                        [], progress=False).resume(p),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", ["truncated.npz", "empty.npz", "random.npz", "pk-random.npz",
                                  "badcrc.npz", "array.npy", "badjson.npz", "notobject.npz",
                                  "badconfig.npz", "badtrainer.npz"])
def test_every_broken_file_is_one_checkpoint_error_naming_it(broken, loader, case):
    path = broken[case]
    if case == "badtrainer.npz" and loader != "Trainer.resume":
        LOADERS[loader](path)               # a model loader never reads the trainer state
        return
    with pytest.raises(fastrnn.CheckpointError) as info:
        LOADERS[loader](path)
    msg = str(info.value)
    assert os.fspath(path) in msg, msg
    want = {"truncated.npz": "corrupt or truncated", "empty.npz": "empty",
            "random.npz": "not an .npz", "pk-random.npz": "corrupt or truncated",
            "badcrc.npz": "CRC", "array.npy": ".npy", "badjson.npz": "invalid JSON",
            "notobject.npz": "not a JSON object", "badconfig.npz": "config",
            "badtrainer.npz": "trainer state"}[case]
    assert want in msg, msg


def test_checkpoint_error_is_exported_and_a_value_error():
    assert fastrnn.CheckpointError is ckpt.CheckpointError
    assert fastrnn.models.CheckpointError is ckpt.CheckpointError
    assert issubclass(fastrnn.CheckpointError, ValueError)
    assert "CheckpointError" in fastrnn.__all__


def test_resume_from_a_model_file_says_so(tmp_path):
    lm = LanguageModel(6, 3, 4, backend="numpy")
    path = lm.save(tmp_path / "plain.npz")
    with pytest.raises(fastrnn.CheckpointError, match="plain.npz.*not a training checkpoint"):
        Trainer(lm, Adam(lm), [], progress=False).resume(path)
