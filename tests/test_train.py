"""Data preparation, the Trainer (resume equality, seeds, early stopping,
progress bar) and checkpoints."""
import io

import numpy as np
import pytest

from fastrnn.data import (ArrayBatches, CharVocab, LMBatches, Standardizer, WordVocab,
                          bucket_batches, pad_sequences, sliding_windows, train_val_split)
from fastrnn.models import LanguageModel, SequenceClassifier, load_model
from fastrnn.optim import SGD, Adam, StepDecay
from fastrnn.train import EarlyStopping, ProgressBar, Trainer


# ------------------------------------------------------------------- data
def test_pad_sequences_post_pre_and_truncation():
    seqs = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    x, n = pad_sequences(seqs, maxlen=4)
    np.testing.assert_array_equal(x, [[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 7, 8]])
    np.testing.assert_array_equal(n, [3, 1, 4])
    x, n = pad_sequences(seqs, maxlen=4, padding="pre", truncating="pre", value=-1)
    np.testing.assert_array_equal(x, [[-1, 1, 2, 3], [-1, -1, -1, 4], [6, 7, 8, 9]])
    x, n = pad_sequences([np.ones((2, 3)), np.ones((1, 3))], dtype=np.float32)
    assert x.shape == (2, 2, 3) and x.dtype == np.float32 and not x[1, 1].any()
    with pytest.raises(ValueError):
        pad_sequences([[1], []])
    with pytest.raises(ValueError):
        pad_sequences([[1]], padding="middle")


def test_bucket_batches_cover_everything_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, 250)
    batches = bucket_batches(lengths, 10, rng=1, bucket_size=250)
    allidx = np.sort(np.concatenate(batches))
    np.testing.assert_array_equal(allidx, np.arange(250))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 10                                   # random batches spread ~90
    again = bucket_batches(lengths, 10, rng=1, bucket_size=250)
    assert all((a == b).all() for a, b in zip(batches, again))


def test_standardizer_fits_train_only():
    train = np.array([[0.0, 10.0], [2.0, 10.0]])
    s = Standardizer().fit(train)
    np.testing.assert_allclose(s.mean, [1.0, 10.0])
    np.testing.assert_allclose(s.std, [1.0, 1.0])                # zero std -> 1
    z = s.transform(np.array([[3.0, 12.0]]))
    np.testing.assert_allclose(z, [[2.0, 2.0]])
    np.testing.assert_allclose(s.inverse_transform(z), [[3.0, 12.0]])
    s2 = Standardizer.from_dict(s.to_dict())
    np.testing.assert_allclose(s2.transform(train), s.transform(train))
    with pytest.raises(RuntimeError):
        Standardizer().transform(train)


def test_sliding_windows():
    X, Y = sliding_windows(np.arange(10), window=3, horizon=2, stride=2)
    assert X.shape == (3, 3, 1) and Y.shape == (3, 2, 1)
    np.testing.assert_array_equal(X[1, :, 0], [2, 3, 4])
    np.testing.assert_array_equal(Y[1, :, 0], [5, 6])
    with pytest.raises(ValueError, match="too short"):
        sliding_windows(np.arange(3), 3)


def test_vocabularies():
    v = CharVocab("hello world")
    ids = v.encode("hold")
    assert v.decode(ids) == "hold"
    assert v.decode(v.encode("hz")) == "h?"                      # unseen -> <unk>
    v2 = type(v).from_dict(v.to_dict())
    assert v2.itos == v.itos
    with pytest.raises(ValueError, match="empty"):
        CharVocab("")
    w = WordVocab(["The cat sat.", "the dog sat"], max_size=3)
    assert w.itos[:2] == ["<pad>", "<unk>"] and w.itos[2:] == ["sat", "the", "."]
    assert w.decode(w.encode("The bird sat")) == "the <unk> sat"
    assert CharVocab.from_dict(w.to_dict()).itos == w.itos


def test_array_and_lm_batches():
    x = np.arange(10)[:, None]
    y = np.arange(10)
    ab = ArrayBatches(x, y, batch_size=4, lengths=np.ones(10, int))
    bs = list(ab.batches(np.random.default_rng(0)))
    assert len(ab) == len(bs) == 3 and len(bs[0]) == 3
    np.testing.assert_array_equal(np.sort(np.concatenate([b[1] for b in bs])), y)
    ids = np.arange(41)
    lb = LMBatches(ids, batch_size=2, bptt=7)
    chunks = list(lb.batches())
    assert len(chunks) == len(lb) == 3
    np.testing.assert_array_equal(chunks[0][0][:, 0], np.arange(7))
    np.testing.assert_array_equal(chunks[1][0][:, 1], np.arange(27, 34))   # row 1 continues
    np.testing.assert_array_equal(chunks[0][1], chunks[0][0] + 1)
    tr, va = train_val_split(10, 0.2, rng=0)
    assert len(va) == 2 and len(np.intersect1d(tr, va)) == 0


# ---------------------------------------------------------------- trainer
def _task(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 5, 2)).astype(np.float32)
    lengths = rng.integers(2, 6, 64)
    y = (x[:, 0, 0] > 0).astype(np.int64)
    return x, y, lengths


def _trainer(tmp_path=None, dropout=0.2, es=None, progress=False, file=None, seed=0):
    x, y, lengths = _task()
    model = SequenceClassifier(2, input_size=2, hidden_size=6, dropout=dropout,
                               pooling="attention", seed=1, backend="numpy")
    train = ArrayBatches(x[:48], y[:48], lengths=lengths[:48], batch_size=8)
    val = ArrayBatches(x[48:], y[48:], lengths=lengths[48:], batch_size=16, shuffle=False)
    opt = Adam(model, lr=1e-2)
    return Trainer(model, opt, train, val, clip_norm=1.0, schedule=StepDecay(1e-2, 2, 0.5),
                   early_stopping=es, seed=seed, progress=progress, file=file,
                   checkpoint=None if tmp_path is None else tmp_path / "ckpt.npz")


def test_trainer_history_and_metrics():
    tr = _trainer()
    hist = tr.fit(3)
    assert hist["epoch"] == [1, 2, 3]
    assert set(hist) >= {"loss", "val_loss", "val_accuracy", "lr", "time", "throughput"}
    assert hist["lr"] == pytest.approx([1e-2, 1e-2, 5e-3])
    assert hist["loss"][-1] < hist["loss"][0]


def test_seed_repeatability():
    a, b = _trainer(), _trainer()
    a.fit(2)
    b.fit(2)
    for k, v in a.model.params.items():
        np.testing.assert_array_equal(v, b.model.params[k])
    c = _trainer(seed=5)
    c.fit(2)
    assert any(not np.array_equal(v, c.model.params[k]) for k, v in a.model.params.items())


def test_resume_equals_uninterrupted(tmp_path):
    # dropout > 0 and shuffling: the generators' states must be restored too
    full = _trainer(es=EarlyStopping(patience=10))
    full.fit(4)
    first = _trainer(tmp_path, es=EarlyStopping(patience=10))
    first.fit(2)
    second = _trainer(es=EarlyStopping(patience=10))
    for v in second.model.params.values():
        v[...] = 0                                           # must be overwritten by resume
    second.resume(tmp_path / "ckpt.npz")
    assert second.epoch == 2 and second.history["epoch"] == [1, 2]
    second.fit(4)
    for k, v in full.model.params.items():
        np.testing.assert_array_equal(v, second.model.params[k], err_msg=k)
    assert second.history["loss"] == full.history["loss"]
    # the checkpoint is also a model file
    m = load_model(tmp_path / "ckpt.npz")
    assert isinstance(m, SequenceClassifier)


def test_resume_errors(tmp_path):
    tr = _trainer(tmp_path)
    tr.fit(1)
    lm = LanguageModel(4, 2, 3, backend="numpy")
    other = Trainer(lm, Adam(lm), [], progress=False)
    with pytest.raises(ValueError, match="holds a SequenceClassifier"):
        other.resume(tmp_path / "ckpt.npz")
    with pytest.raises(FileNotFoundError):
        tr.resume(tmp_path / "nothing.npz")
    lm.save(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        other.resume(tmp_path / "plain.npz")


def test_early_stopping_logic_and_restore():
    es = EarlyStopping(patience=2, min_delta=0.1)
    assert [es.step(v, i) for i, v in enumerate([1.0, 0.95, 0.5, 0.45, 0.44])] == [
        False, False, False, False, True]
    assert es.best == 0.5 and es.best_epoch == 2

    class M:
        params = {"w": np.zeros(1)}

        def load_state_dict(self, d):
            self.params["w"][...] = d["w"]

    m = M()
    es = EarlyStopping(patience=1)
    es.step(1.0, 0, m)
    m.params["w"][...] = 5
    es.step(2.0, 1, m)
    es.restore(m)
    assert m.params["w"][0] == 0


def test_trainer_early_stopping_stops():
    tr = _trainer(es=EarlyStopping(patience=1, min_delta=10.0))
    tr.fit(10)
    assert tr.stop_reason == "early_stopping" and tr.epoch == 2


def test_trainer_max_seconds_and_nan():
    tr = _trainer()
    tr.max_seconds = 0.0
    tr.fit(5)
    assert tr.stop_reason == "time" and tr.epoch == 1
    st = _trainer()
    st.max_steps = 8
    st.fit(5)
    assert st.stop_reason == "steps" and st.global_step == 8 and st.epoch == 2

    class NaNModel:
        params, grads, training = {"w": np.zeros(1)}, {"w": np.zeros(1)}, True

        def zero_grad(self):
            pass

        def train(self, mode=True):
            return self

        def batch_loss(self, batch, train=True):
            return float("nan"), 1

    m = NaNModel()
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        Trainer(m, SGD(m), [(0,)], progress=False).fit(1)


def test_progress_bar_output():
    buf = io.StringIO()
    tr = _trainer(progress=True, file=buf)
    tr.fit(1)
    out = buf.getvalue()
    assert "epoch 1/1" in out and "loss" in out and "samples/s" in out and "val_loss" in out
    silent = io.StringIO()
    _trainer(progress=False, file=silent).fit(1)
    assert silent.getvalue() == ""
    bar = ProgressBar(total=4, desc="x", unit="tok", file=io.StringIO(), interval=0)
    for _ in range(2):
        bar.update(100, loss=2.0, weight=100)
    line = bar._line()
    assert "2/4" in line and "ETA" in line and "loss 2.0000" in line


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_is_tqdm_on_a_terminal_and_plain_lines_elsewhere():
    import tqdm
    term = _Terminal()
    bar = ProgressBar(total=4, desc="epoch 1/1", unit="tok", file=term, interval=0)
    assert isinstance(bar._tq, tqdm.tqdm)
    for _ in range(4):
        bar.update(10, loss=1.0, weight=10)
    bar.close("val_loss 0.5000")
    out = term.getvalue()
    assert "\r" in out and out.endswith("\n") and "4/4" in out and "val_loss 0.5000" in out
    log = io.StringIO()                   # not a terminal: no carriage returns, one line
    bar = ProgressBar(total=4, desc="epoch 1/1", unit="tok", file=log)
    assert bar._tq is None
    for _ in range(4):
        bar.update(10, loss=1.0, weight=10)
    bar.close("val_loss 0.5000")
    assert "\r" not in log.getvalue() and log.getvalue().count("\n") == 1
    assert "4/4" in log.getvalue() and "tok/s" in log.getvalue()
    silent = _Terminal()
    bar = ProgressBar(total=4, file=silent, disable=True)
    bar.update(1, loss=1.0)
    bar.close("x")
    assert silent.getvalue() == "" and bar._tq is None


def test_language_model_progress_in_bits_per_character():
    import math
    ids = np.random.default_rng(0).integers(0, 5, 300)
    lm = LanguageModel(5, 3, 6, seed=0, backend="numpy")
    buf, logs = io.StringIO(), []
    tr = Trainer(lm, Adam(lm, lr=1e-2), LMBatches(ids[:250], 4, 10),
                 LMBatches(ids[250:], 2, 10), progress=True, unit="char", file=buf,
                 log=logs.append)
    tr.fit(1)
    out = buf.getvalue()
    bits = tr.history["val_loss"][0] / math.log(2)           # the history stays in nats
    assert f"val_loss {bits:.4f} bits/char" in out and "loss" in out
    loss_bits = tr.history["loss"][0] / math.log(2)
    assert f"loss {loss_bits:.4f} bits/char" in out
    assert f"val_loss {bits:.4g} bits/char" in logs[0]


def test_language_model_trainer_resets_state_each_epoch():
    ids = np.random.default_rng(0).integers(0, 5, 300)
    lm = LanguageModel(5, 3, 6, seed=0, backend="numpy")
    tr = Trainer(lm, Adam(lm, lr=1e-2), LMBatches(ids[:250], 4, 10),
                 LMBatches(ids[250:], 2, 10), progress=False, unit="tok")
    tr.fit(2)
    assert len(tr.history["val_loss"]) == 2 and lm._carry is None


# ---------------------------------------------------------------- examples
EXAMPLES = __import__("pathlib").Path(__file__).resolve().parent.parent / "examples"


def _example(monkeypatch, name):
    import importlib
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module(name)


def test_sunspots_example_beats_persistence(monkeypatch, tmp_path):
    pytest.importorskip("statsmodels")
    ex = _example(monkeypatch, "sunspots_forecast")
    r_model, r_pers = ex.main(["--no-progress", "--plot", str(tmp_path / "s.png")])
    assert r_model <= 0.85 * r_pers


@pytest.mark.slow
def test_digits_example_reaches_95_percent(monkeypatch, tmp_path):
    pytest.importorskip("sklearn")
    ex = _example(monkeypatch, "digits_classification")
    acc = ex.main(["--no-progress", "--plot", str(tmp_path / "d.png")])
    assert acc >= 0.95


def test_shakespeare_example_text_conversion(monkeypatch):
    ex = _example(monkeypatch, "shakespeare_char_lm")
    md = "# Play\n\n## ACT I\n\n_Enter A_\n\n**FIRST WITCH**  \nWhen shall we  \nmeet again\n"
    assert ex.markdown_to_text(md) == "Enter A\n\nFIRST WITCH:\nWhen shall we\nmeet again\n\n"


def test_budget_schedule_follows_max_steps():
    tr = _trainer()
    tr.schedule, tr.schedule_unit, tr.max_steps = (lambda f: 1e-2 * (1 - f)), "budget", 10
    seen = []
    step = tr.optimizer.step

    def spy(grads=None):
        seen.append(tr.optimizer.lr)
        step(grads)

    tr.optimizer.step = spy
    tr.fit()
    assert seen == pytest.approx([1e-2 * (1 - k / 10) for k in range(10)])
    with pytest.raises(ValueError, match="budget"):
        Trainer(tr.model, tr.optimizer, [], schedule_unit="budget")
    with pytest.raises(ValueError, match="needs max_seconds"):
        Trainer(tr.model, tr.optimizer, [], progress=False).fit()


# ------------------------------------------------- a trainer that continues
_DETERMINISTIC = ("epoch", "loss", "lr", "val_loss", "val_accuracy")


def _same_run(a, b):
    for k, v in a.model.params.items():
        np.testing.assert_array_equal(v, b.model.params[k], err_msg=k)
    for k in _DETERMINISTIC:
        assert a.history.get(k) == b.history.get(k), k
    assert (a.epoch, a.global_step) == (b.epoch, b.global_step)


def test_fit_in_pieces_equals_one_fit_with_restore_best():
    # min_delta 10: the best epoch stays the first, so restore_best changes the model
    es = lambda: EarlyStopping(patience=100, min_delta=10.0)           # noqa: E731
    whole = _trainer(es=es())
    whole.fit(5)
    parts = _trainer(es=es())
    parts.fit(2)
    trained = parts._last_params
    assert trained is not None and parts.early_stopping.best_epoch == 1
    best = parts.early_stopping.best_params
    for k, v in parts.model.params.items():                    # the best are in the model...
        np.testing.assert_array_equal(v, best[k])
    parts.fit(2)                                               # nothing to do: stays restored
    parts.fit(5)                                               # ...and training continues
    _same_run(whole, parts)
    for k, v in whole.model.params.items():                    # both end restored
        np.testing.assert_array_equal(v, best[k])


def test_fit_steps_pauses_mid_epoch_and_resumes_there():
    whole = _trainer()
    whole.fit(3)                                               # 6 batches per epoch
    parts = _trainer()
    parts.fit(steps=4)
    assert parts.stop_reason == "paused" and parts.epoch == 0 and parts.global_step == 4
    assert parts.history == {}                                 # nothing recorded mid-epoch
    parts.fit(steps=5)
    assert parts.epoch == 1 and parts.global_step == 9 and parts.history["epoch"] == [1]
    parts.fit(steps=3)                                         # ends exactly on the epoch
    assert parts.epoch == 2 and parts.stop_reason == "paused" and parts._open is None
    parts.fit(3, steps=100)
    assert parts.stop_reason is None
    _same_run(whole, parts)


def test_fit_steps_sees_the_remaining_batches_of_the_epoch():
    def record(tr):
        seen = []
        real = tr.model.batch_loss

        def spy(batch, train=True):
            if train:
                seen.append(batch[0].copy())
            return real(batch, train)
        tr.model.batch_loss = spy
        return seen

    a, b = _trainer(), _trainer()
    sa, sb = record(a), record(b)
    a.fit(2)
    for n in (1, 2, 4, 5):
        b.fit(2, steps=n)
    assert len(sa) == len(sb) == 12
    for u, v in zip(sa, sb):
        np.testing.assert_array_equal(u, v)


def test_language_model_steps_keep_the_carried_state():
    ids = np.random.default_rng(3).integers(0, 6, 400)

    def make():
        lm = LanguageModel(6, 3, 5, dropout=0.1, seed=0, backend="numpy")
        return Trainer(lm, Adam(lm, lr=1e-2), LMBatches(ids[:330], 4, 9),
                       LMBatches(ids[330:], 2, 9), clip_norm=1.0, progress=False, unit="tok")

    whole = make()
    whole.fit(2)                                               # 10 chunks per epoch
    parts = make()
    parts.fit(steps=3)
    carried = parts.model.carried_state
    assert carried is not None
    parts.evaluate(parts.val_data)                             # scoring in between...
    assert parts.model.carried_state is carried                # ...keeps the training state
    parts.fit(steps=9)
    parts.fit(steps=8)
    assert parts.epoch == 2
    _same_run(whole, parts)
    assert parts.model.carried_state is None                   # reset at the end of an epoch


def test_restore_best_only_when_training_stops():
    tr = _trainer(es=EarlyStopping(patience=100, min_delta=10.0))
    tr.fit(steps=8)                                            # paused inside epoch 2
    assert tr.stop_reason == "paused" and tr._last_params is None
    best = tr.early_stopping.best_params
    assert any(not np.array_equal(v, best[k]) for k, v in tr.model.params.items())
    tr.max_steps = 10                                          # a budget: training stops
    tr.fit()
    assert tr.stop_reason == "steps" and tr.epoch == 2
    for k, v in tr.model.params.items():
        np.testing.assert_array_equal(v, best[k])
    # changed by the user after the restore: a later fit continues from that
    for v in tr.model.params.values():
        v[...] = 0.5
    tr.max_steps = None
    tr._take_back_last_params()
    assert all((v == 0.5).all() for v in tr.model.params.values())
    with pytest.raises(ValueError, match="steps"):
        tr.fit(steps=-1)


def test_array_batches_trim_to_the_longest_in_batch():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(1, 27, 40), rng.integers(27, 105, 8)])
    x = rng.standard_normal((48, 104, 2))
    x[np.arange(104)[None, :] >= lengths[:, None]] = 0.0
    steps = np.tile(np.arange(104), (48, 1))                     # per-step targets
    label = np.arange(48)
    ab = ArrayBatches(x, steps, label, lengths=lengths, batch_size=8, bucket=True)
    seen = []
    for bx, bs, bl, bn in ab.batches(np.random.default_rng(1)):
        assert bx.shape[1] == bn.max() and bs.shape[1] == 104    # only arrays[0] by default
        np.testing.assert_array_equal(bx, x[bl, :bn.max()])
        seen.append(bx.shape[1])
    assert min(seen) <= 26 and max(seen) > 26
    both = ArrayBatches(x, steps, label, lengths=lengths, batch_size=8, trim=(0, 1))
    for bx, bs, bl, bn in both.batches(np.random.default_rng(1)):
        assert bx.shape[1] == bs.shape[1] == bn.max()
    keep = ArrayBatches(x, label, lengths=lengths, batch_size=8, trim=False)
    assert all(b[0].shape[1] == 104 for b in keep.batches(np.random.default_rng(1)))
    plain = ArrayBatches(x, label, batch_size=8)                 # no lengths: nothing to cut
    assert all(b[0].shape[1] == 104 for b in plain.batches(np.random.default_rng(1)))
    with pytest.raises(ValueError, match="trim names array 3"):
        ArrayBatches(x, label, lengths=lengths, trim=(3,))


def test_checkpoint_inside_an_epoch_resumes_there(tmp_path):
    whole = _trainer(es=EarlyStopping(patience=100, min_delta=10.0))
    whole.fit(3)
    first = _trainer(es=EarlyStopping(patience=100, min_delta=10.0))
    first.fit(steps=8)                                   # epoch 2 open, 2 batches in
    first.save_checkpoint(tmp_path / "mid.npz")
    second = _trainer(es=EarlyStopping(patience=100, min_delta=10.0))
    second.resume(tmp_path / "mid.npz")
    assert second._open is not None and second._open["count"] == 2
    second.fit(3)
    _same_run(whole, second)
    # written while the best parameters are restored: continues from the trained ones
    first.fit(2)
    first.save_checkpoint(tmp_path / "restored.npz")
    third = _trainer(es=EarlyStopping(patience=100, min_delta=10.0))
    third.resume(tmp_path / "restored.npz")
    assert third._last_params is not None
    third.fit(3)
    _same_run(whole, third)


def test_language_model_checkpoint_inside_an_epoch_keeps_the_carried_state(tmp_path):
    ids = np.random.default_rng(4).integers(0, 6, 400)

    def make():
        lm = LanguageModel(6, 3, 5, seed=0, backend="numpy")
        return Trainer(lm, Adam(lm, lr=1e-2), LMBatches(ids, 4, 9), progress=False)

    whole = make()
    whole.fit(2)
    first = make()
    first.fit(steps=13)
    first.save_checkpoint(tmp_path / "lm.npz")
    second = make()
    second.resume(tmp_path / "lm.npz")
    h, c = second.model.carried_state
    np.testing.assert_array_equal(h, first.model.carried_state[0])
    second.fit(2)
    _same_run(whole, second)
