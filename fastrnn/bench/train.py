"""``fastrnn bench --train``: training and inference throughput of whole models
against the same models in PyTorch.

Two items, each built with fastrnn's public API and twinned in PyTorch with
the same initial weights (copied from fastrnn's), the same optimizer (Adam),
the same gradient clipping (global norm 1.0) and the same batches:

- **char LM**: :class:`fastrnn.models.LanguageModel` (embedding 64, LSTM
  H=256, batch 32, bptt 64) on CPython's bundled help texts
  (``pydoc_data.topics``; synthetic text where it is missing) against
  ``nn.Embedding + nn.LSTM + nn.Linear``. Full training steps per second
  (forward, loss, backward, clipping, Adam; the recurrent state carried across
  chunks, detached) and characters per second; inference: scoring held-out
  text (forward and summed cross-entropy, no gradients), characters per
  second.
- **classifier**: :class:`fastrnn.models.SequenceClassifier` (LSTM H=64,
  batch 32, 16 features, 10 classes) on sequences of length 5..26, padded to
  T = 26 and to T = 104, against ``nn.LSTM`` over ``pack_padded_sequence``
  (which does not see the padding): training steps/s and inference
  samples/s.

torch runs at 1 and at 2 threads; the ratio fastrnn/torch is taken against
the faster. Before timing, each item checks that fastrnn and torch agree: the
first forward's outputs and the losses of the first training steps.

``--compute-dtype bfloat16``: fastrnn's models run with
``compute_dtype="bfloat16"`` and torch is timed twice, in float32 and under
``torch.autocast("cpu", torch.bfloat16)`` (its bfloat16 compute with float32
master weights, as fastrnn's mode: a second twin with its own Adam state); the
table gains the torch bf16 columns and the ratio against them. The agreement
check runs on the float32 twin (the bf16 model starts from the same weights;
its losses differ from float32's by the mode's rounding, not by a wiring error).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys

import numpy as np

from ..blocks import softmax_cross_entropy
from ..data import CharVocab, LMBatches
from ..models import LanguageModel, SequenceClassifier
from ..optim import Adam, clip_grad_norm
from .runners import has_compute_dtype
from .timing import PEER_THREADS, TorchThreads, cpu_threads_setter, interleaved_medians

#: the configurations the issue asks for
LM_CONFIG = dict(embed_dim=64, hidden_size=256, batch_size=32, bptt=64, lr=1e-3, clip=1.0)
CLF_CONFIG = dict(features=16, hidden_size=64, num_classes=10, batch_size=32,
                  min_len=5, max_len=26, pads=(26, 104), lr=1e-3, clip=1.0)


# ------------------------------------------------------------------ data
def corpus(min_chars=200_000, seed=0):
    """Text for the language model: CPython's bundled help topics, or (where
    the distribution strips ``pydoc_data``) synthetic word salad."""
    try:
        import pydoc_data.topics as topics
        text = "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics))
        if len(text) >= min_chars:
            return text, "pydoc_data.topics"
    except ImportError:
        pass
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    p = 1.0 / np.arange(1, 27)
    words = ["".join(rng.choice(letters, size=rng.integers(1, 9), p=p / p.sum()))
             for _ in range(2000)]
    out = " ".join(rng.choice(words, size=min_chars // 5))
    return out, "synthetic"


def lm_data(batch_size, bptt, n_train=16, n_eval=8, text=None):
    """``(vocab_size, train batches, held-out batches, source)``: lists of
    ``(x [T, B], y [T, B])`` int64 chunks (consecutive, so state carries)."""
    source = "given"
    if text is None:
        text, source = corpus()
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    cut = int(len(ids) * 0.9)
    tr = list(LMBatches(ids[:cut], batch_size, bptt).batches())
    ev = list(LMBatches(ids[cut:], batch_size, bptt).batches())
    tr = [b for b in tr if b[0].shape[0] == bptt][:n_train]
    ev = [b for b in ev if b[0].shape[0] == bptt][:n_eval]
    if not tr or not ev:
        raise ValueError("the text is too short for this batch size and bptt")
    return len(vocab), tr, ev, source


def clf_data(batch_size, features, num_classes, min_len, max_len, pads, n_batches=8, seed=0):
    """``{T: [(x [B, T, F] float32, labels [B], lengths [B]), ...]}``: the same
    sequences (lengths ``min_len..max_len``) zero-padded to each ``T`` in ``pads``."""
    rng = np.random.default_rng(seed)
    out = {T: [] for T in pads}
    for _ in range(n_batches):
        lengths = rng.integers(min_len, max_len + 1, batch_size).astype(np.int64)
        labels = rng.integers(0, num_classes, batch_size).astype(np.int64)
        x = rng.standard_normal((batch_size, max_len, features)).astype(np.float32)
        x *= (np.arange(max_len)[None, :] < lengths[:, None])[:, :, None]
        for T in pads:
            xp = np.zeros((batch_size, T, features), np.float32)
            xp[:, :max_len] = x
            out[T].append((xp, labels, lengths))
    return out


# ------------------------------------------------------------------ torch twins
def _copy_weights(torch, tmodel, model):
    """Load fastrnn's parameters into the torch twin (names are the same)."""
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in model.params.items()}
    tmodel.load_state_dict(state, strict=True)


def torch_lm(torch, vocab_size, embed_dim, hidden_size):
    nn = torch.nn

    class TorchLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, embed_dim)
            self.rnn = nn.LSTM(embed_dim, hidden_size)
            self.head = nn.Linear(hidden_size, vocab_size)

        def forward(self, x, state=None):
            y, st = self.rnn(self.embed(x), state)
            return self.head(y), st

    return TorchLM()


def torch_classifier(torch, features, hidden_size, num_classes):
    nn = torch.nn
    pack = nn.utils.rnn.pack_padded_sequence

    class TorchClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(features, hidden_size, batch_first=True)
            self.head = nn.Linear(hidden_size, num_classes)

        def forward(self, x, lengths):
            packed = pack(x, lengths, batch_first=True, enforce_sorted=False)
            _, (h, _) = self.rnn(packed)
            return self.head(h[-1])

    return TorchClassifier()


# ------------------------------------------------------------------ steppers
class LMPair:
    """A fastrnn language model and its torch twin, with one training-step
    and one scoring function each (the state is carried across chunks)."""

    def __init__(self, torch, vocab_size, train_batches, eval_batches, embed_dim=64,
                 hidden_size=256, lr=1e-3, clip=1.0, backend="cpu", seed=0,
                 compute_dtype=None, autocast=False):
        self.torch, self.V, self.clip = torch, vocab_size, clip
        self.autocast = autocast
        self.model = LanguageModel(vocab_size, embed_dim=embed_dim, hidden_size=hidden_size,
                                   cell="lstm", backend=backend, seed=seed,
                                   compute_dtype=compute_dtype)
        self.opt = Adam(self.model, lr=lr)
        self.tr, self.ev = train_batches, eval_batches
        self.k = {"f_train": 0, "t_train": 0, "f_eval": 0, "t_eval": 0}
        self.f_eval_state = None
        self.t_state = self.t_eval_state = None
        if torch is not None:
            self.tmodel = torch_lm(torch, vocab_size, embed_dim, hidden_size)
            _copy_weights(torch, self.tmodel, self.model)
            self.topt = torch.optim.Adam(self.tmodel.parameters(), lr=lr)
            self.ttr = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in train_batches]
            self.tev = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in eval_batches]

    def _next(self, key, batches):
        b = batches[self.k[key] % len(batches)]
        self.k[key] += 1
        return b

    def fastrnn_train_step(self):
        m = self.model
        if not m.training:
            m.train()
        m.zero_grad()
        loss, _ = m.batch_loss(self._next("f_train", self.tr), train=True)
        grads = m.grads
        clip_grad_norm(grads, self.clip)
        self.opt.step(grads)
        return float(loss)

    def torch_train_step(self):
        torch, tm = self.torch, self.tmodel
        F = torch.nn.functional
        x, y = self._next("t_train", self.ttr)
        tm.train()
        self.topt.zero_grad(set_to_none=True)
        st = self.t_state
        if st is not None:
            st = tuple(s.detach() for s in st)
        with _autocast(torch, self.autocast):
            logits, self.t_state = tm(x, st)
            loss = F.cross_entropy(logits.reshape(-1, self.V), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), self.clip)
        self.topt.step()
        return float(loss.detach())

    def fastrnn_score(self):
        """Forward only (eval mode): summed cross-entropy of one held-out chunk."""
        m = self.model
        if m.training:
            m.eval()
        x, y = self._next("f_eval", self.ev)
        logits, self.f_eval_state = m.forward(x, self.f_eval_state)
        loss, _ = softmax_cross_entropy(logits, y, reduction="sum")
        return float(loss)

    def torch_score(self):
        torch, tm = self.torch, self.tmodel
        x, y = self._next("t_eval", self.tev)
        tm.eval()
        with torch.inference_mode(), _autocast(torch, self.autocast):
            logits, self.t_eval_state = tm(x, self.t_eval_state)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, self.V), y.reshape(-1),
                                                     reduction="sum")
        return float(loss)

    def chars_per_call(self):
        x = self.tr[0][0]
        return x.shape[0] * x.shape[1]


class ClassifierPair:
    """A fastrnn SequenceClassifier and its torch twin (packed sequences)."""

    def __init__(self, torch, batches, features=16, hidden_size=64, num_classes=10, lr=1e-3,
                 clip=1.0, backend="cpu", seed=0, compute_dtype=None, autocast=False):
        self.torch, self.clip = torch, clip
        self.autocast = autocast
        self.model = SequenceClassifier(num_classes, input_size=features,
                                        hidden_size=hidden_size, cell="lstm",
                                        backend=backend, seed=seed,
                                        compute_dtype=compute_dtype)
        self.opt = Adam(self.model, lr=lr)
        self.batches = batches
        self.k = {"f_train": 0, "t_train": 0, "f_infer": 0, "t_infer": 0}
        if torch is not None:
            self.tmodel = torch_classifier(torch, features, hidden_size, num_classes)
            _copy_weights(torch, self.tmodel, self.model)
            self.topt = torch.optim.Adam(self.tmodel.parameters(), lr=lr)
            self.tb = [(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(n))
                       for x, y, n in batches]

    def _next(self, key, batches):
        b = batches[self.k[key] % len(batches)]
        self.k[key] += 1
        return b

    def fastrnn_train_step(self):
        m = self.model
        if not m.training:
            m.train()
        m.zero_grad()
        loss, _ = m.batch_loss(self._next("f_train", self.batches), train=True)
        grads = m.grads
        clip_grad_norm(grads, self.clip)
        self.opt.step(grads)
        return float(loss)

    def torch_train_step(self):
        torch, tm = self.torch, self.tmodel
        x, y, n = self._next("t_train", self.tb)
        tm.train()
        self.topt.zero_grad(set_to_none=True)
        with _autocast(torch, self.autocast):
            loss = torch.nn.functional.cross_entropy(tm(x, n), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), self.clip)
        self.topt.step()
        return float(loss.detach())

    def fastrnn_infer(self):
        m = self.model
        if m.training:
            m.eval()
        x, _, n = self._next("f_infer", self.batches)
        return m.forward(x, n)

    def torch_infer(self):
        torch, tm = self.torch, self.tmodel
        x, _, n = self._next("t_infer", self.tb)
        tm.eval()
        with torch.inference_mode(), _autocast(torch, self.autocast):
            return tm(x, n).float().numpy()

    def samples_per_call(self):
        return self.batches[0][0].shape[0]


def _autocast(torch, on):
    """torch's bfloat16 autocast on the CPU when ``on``, else nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if on else contextlib.nullcontext()


@contextlib.contextmanager
def _in_float32(model):
    """The model computing in float32 for a while (the agreement check against
    the float32 twin), then back in its own mode."""
    mode = model.compute_dtype
    model.compute_dtype = None
    try:
        yield model
    finally:
        model.compute_dtype = mode


# ------------------------------------------------------------------ agreement
def check_lm(pair, steps=3):
    """Compare fastrnn with torch on the first held-out chunk (logits) and on
    ``steps`` training steps (losses). Leaves both models in step, in train mode.
    Returns ``dict(max_logit_diff, losses_fastrnn, losses_torch, max_loss_rel_diff)``."""
    torch, m, tm = pair.torch, pair.model, pair.tmodel
    x, _ = pair.ev[0]
    m.eval()
    tm.eval()
    lf, _ = m.forward(x)
    with torch.inference_mode():
        lt, _ = tm(torch.from_numpy(x))
    diff = float(np.abs(lf - lt.numpy()).max())
    m.train()
    fl = [pair.fastrnn_train_step() for _ in range(steps)]
    tl = [pair.torch_train_step() for _ in range(steps)]
    rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(fl, tl))
    return dict(max_logit_diff=diff, losses_fastrnn=fl, losses_torch=tl, max_loss_rel_diff=rel)


def check_classifier(pair, steps=3):
    """As :func:`check_lm` for the classifier (logits of the first batch)."""
    torch, m, tm = pair.torch, pair.model, pair.tmodel
    x, _, n = pair.batches[0]
    m.eval()
    lf = m.forward(x, n)
    tm.eval()
    with torch.inference_mode():
        lt = tm(torch.from_numpy(x), torch.from_numpy(n)).numpy()
    diff = float(np.abs(lf - lt).max())
    m.train()
    fl = [pair.fastrnn_train_step() for _ in range(steps)]
    tl = [pair.torch_train_step() for _ in range(steps)]
    rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(fl, tl))
    return dict(max_logit_diff=diff, losses_fastrnn=fl, losses_torch=tl, max_loss_rel_diff=rel)


#: tolerances of the agreement check (float32; the losses after a few Adam steps)
LOGIT_ATOL = 1e-4
LOSS_RTOL = 1e-3


def _assert_agree(name, chk):
    if not (chk["max_logit_diff"] <= LOGIT_ATOL and chk["max_loss_rel_diff"] <= LOSS_RTOL):
        raise RuntimeError(
            f"{name}: fastrnn and its torch twin disagree (max |logit diff| "
            f"{chk['max_logit_diff']:.3g}, losses {chk['losses_fastrnn']} vs "
            f"{chk['losses_torch']}): the benchmark would compare different computations")


# ------------------------------------------------------------------ main
#: arguments of :func:`fastrnn.bench.timing.interleaved_medians` (min_time, min_rounds,
#: max_rounds, burst_s, settle_s): a full run and ``--quick``
TIMING = dict(min_time=3.0, min_rounds=5, max_rounds=20, burst_s=0.2, settle_s=0.2)
QUICK_TIMING = dict(min_time=0.0, min_rounds=3, max_rounds=3, burst_s=0.12, settle_s=0.1)


def _time_item(fast_fn, torch_fn, tt, cpu_prep, timing, torch_bf16_fn=None):
    """Interleaved medians: fastrnn (at its threads) and torch at 1 and 2
    threads (and torch's bf16 autocast twin at 1 and 2, when given)."""
    fns, prep = {"fastrnn": fast_fn}, {"fastrnn": cpu_prep}
    for name, fn in (("torch", torch_fn), (TORCH_BF16, torch_bf16_fn)):
        if fn is not None:
            for n in PEER_THREADS:
                fns[f"{name}@{n}"] = fn
                prep[f"{name}@{n}"] = tt.setter(n)
    t = dict(timing)
    res = interleaved_medians(fns, t.pop("min_time"), t.pop("min_rounds"),
                              t.pop("max_rounds"), prepare=prep, **t)
    return {k: m for k, (m, _) in res.items()}


#: the column name of torch's bf16 autocast twin (``--compute-dtype bfloat16``)
TORCH_BF16 = "torch_bf16"


def run(torch, quick=False, threads=2, lm_config=None, clf_config=None, verbose=True,
        timing=None, compute_dtype=None, backend="cpu"):
    """Run both items; returns a list of result rows (dicts). ``lm_config`` and
    ``clf_config`` override entries of :data:`LM_CONFIG` / :data:`CLF_CONFIG`
    (the tests use tiny models); ``timing`` those of :data:`TIMING`.
    ``compute_dtype="bfloat16"``: fastrnn in the bf16 mode, torch also under
    bf16 autocast (rows gain ``ratio_bf16``). ``backend``: fastrnn's models'
    (the tests run the reference)."""
    from ..kernels import cpu
    lmc = dict(LM_CONFIG, **(lm_config or {}))
    cc = dict(CLF_CONFIG, **(clf_config or {}))
    cpu_prep = cpu_threads_setter(cpu, threads)
    cpu_prep()
    timing = dict(QUICK_TIMING if quick else TIMING, **(timing or {}))
    rows = []
    say = print if verbose else (lambda *a, **k: None)

    def add(item, unit, per_call, med, extra=None, derived=False):
        row = dict(item=item, unit=unit, per_call=per_call, derived=derived,
                   median_s={k: v for k, v in med.items()},
                   rate={k: per_call / v for k, v in med.items()})
        tkeys = [k for k in med if k.startswith("torch@")]
        if tkeys:
            best = min(tkeys, key=lambda k: med[k])
            row["torch_best"] = best
            row["ratio"] = med[best] / med["fastrnn"]
        bkeys = [k for k in med if k.startswith(TORCH_BF16 + "@")]
        if bkeys:
            best = min(bkeys, key=lambda k: med[k])
            row["torch_bf16_best"] = best
            row["ratio_bf16"] = med[best] / med["fastrnn"]
        if compute_dtype is not None:
            row["compute_dtype"] = compute_dtype
        row.update(extra or {})
        rows.append(row)
        return row

    with TorchThreads(torch) as tt:
        # ---------------------------------------------------------- char LM
        V, tr, ev, source = lm_data(lmc["batch_size"], lmc["bptt"],
                                    n_train=8 if quick else 32, n_eval=4 if quick else 16)
        pair = LMPair(torch, V, tr, ev, lmc["embed_dim"], lmc["hidden_size"], lmc["lr"],
                      lmc["clip"], backend=backend, compute_dtype=compute_dtype)
        # torch's bf16 twin: its own model and Adam state, from the same weights
        pair16 = None if torch is None or compute_dtype is None else LMPair(
            torch, V, tr, ev, lmc["embed_dim"], lmc["hidden_size"], lmc["lr"], lmc["clip"],
            backend=backend, autocast=True)
        desc = (f"char LM: LSTM E={lmc['embed_dim']} H={lmc['hidden_size']} V={V} "
                f"B={lmc['batch_size']} bptt={lmc['bptt']}, Adam, clip 1.0 ({source})")
        chk = None
        if torch is not None:
            with _in_float32(pair.model):
                chk = check_lm(pair)
            _assert_agree("char LM", chk)
            say(f"{desc}: agrees with torch (logits {chk['max_logit_diff']:.1e}, "
                f"losses rel {chk['max_loss_rel_diff']:.1e})")
        else:
            pair.fastrnn_train_step()
            say(desc)
        chars = pair.chars_per_call()
        med = _time_item(pair.fastrnn_train_step, pair.torch_train_step if torch else None,
                         tt, cpu_prep, timing, pair16 and pair16.torch_train_step)
        add("lm train", "steps/s", 1, med, dict(config=lmc, check=chk, vocab=V))
        add("lm train", "chars/s", chars, med, dict(config=lmc), derived=True)
        med = _time_item(pair.fastrnn_score, pair.torch_score if torch else None,
                         tt, cpu_prep, timing, pair16 and pair16.torch_score)
        add("lm infer (score held-out)", "chars/s", chars, med, dict(config=lmc))

        # ---------------------------------------------------------- classifier
        data = clf_data(cc["batch_size"], cc["features"], cc["num_classes"], cc["min_len"],
                        cc["max_len"], cc["pads"], n_batches=4 if quick else 8)
        for T in cc["pads"]:
            pair = ClassifierPair(torch, data[T], cc["features"], cc["hidden_size"],
                                  cc["num_classes"], cc["lr"], cc["clip"], backend=backend,
                                  compute_dtype=compute_dtype)
            pair16 = None if torch is None or compute_dtype is None else ClassifierPair(
                torch, data[T], cc["features"], cc["hidden_size"], cc["num_classes"],
                cc["lr"], cc["clip"], backend=backend, autocast=True)
            desc = (f"classifier: LSTM F={cc['features']} H={cc['hidden_size']} "
                    f"B={cc['batch_size']} lengths {cc['min_len']}..{cc['max_len']} padded "
                    f"to T={T} (torch: pack_padded_sequence)")
            chk = None
            if torch is not None:
                with _in_float32(pair.model):
                    chk = check_classifier(pair)
                _assert_agree(f"classifier T={T}", chk)
                say(f"{desc}: agrees with torch (logits {chk['max_logit_diff']:.1e}, "
                    f"losses rel {chk['max_loss_rel_diff']:.1e})")
            else:
                pair.fastrnn_train_step()
                say(desc)
            med = _time_item(pair.fastrnn_train_step,
                             pair.torch_train_step if torch else None,
                             tt, cpu_prep, timing, pair16 and pair16.torch_train_step)
            add(f"clf train T={T}", "steps/s", 1, med, dict(config=cc, T=T, check=chk))
            add(f"clf train T={T}", "samples/s", pair.samples_per_call(), med,
                dict(config=cc, T=T), derived=True)
            med = _time_item(pair.fastrnn_infer, pair.torch_infer if torch else None,
                             tt, cpu_prep, timing, pair16 and pair16.torch_infer)
            add(f"clf infer T={T}", "samples/s", pair.samples_per_call(), med,
                dict(config=cc, T=T))
    return rows


def _fmt_rate(r):
    return f"{r:,.0f}" if r >= 100 else f"{r:.2f}"


def print_table(rows, file=None):
    file = file or sys.stdout
    bf16 = any("ratio_bf16" in r for r in rows)
    cols = ["fastrnn"] + [f"torch@{n}" for n in PEER_THREADS]
    if bf16:
        cols += [f"{TORCH_BF16}@{n}" for n in PEER_THREADS]
    w = 15 if bf16 else 12
    hdr = f"{'item':<27}{'unit':<10}" + "".join(f"{c:>{w}}" for c in cols) + \
        f"{'fastrnn/torch':>15}" + (f"{'/torch_bf16':>12}" if bf16 else "") + f"{'ms/call':>9}"
    print(hdr, file=file)
    print("-" * len(hdr), file=file)
    for r in rows:
        line = f"{r['item']:<27}{r['unit']:<10}"
        for c in cols:
            line += f"{_fmt_rate(r['rate'][c]):>{w}}" if c in r["rate"] else f"{'-':>{w}}"
        line += f"{r['ratio']:>14.2f}x" if "ratio" in r else f"{'-':>15}"
        if bf16:
            line += f"{r['ratio_bf16']:>11.2f}x" if "ratio_bf16" in r else f"{'-':>12}"
        line += f"{r['median_s']['fastrnn'] * 1e3:>9.2f}"
        print(line, file=file, flush=True)


def main(args):
    """``fastrnn bench --train`` (``args`` from :func:`fastrnn.bench.parse_args`)."""
    from ..kernels import cpu
    ok, why = cpu.available()
    if not ok:
        print(f"the cpu backend is not available: {why}", file=sys.stderr)
        return 1
    torch = None
    if "torch" in args.impls.split(","):
        try:
            import torch
        except ImportError:
            print("torch is not installed: timing fastrnn alone")
    cpu_default = cpu.get_num_threads()
    mode = getattr(args, "compute_dtype", None)
    if mode is not None and not has_compute_dtype(cpu):
        print(f"the cpu backend has no compute_dtype={mode!r} here: nothing to time "
              "(the reference runs the mode, far slower than any peer)", file=sys.stderr)
        return 1
    what = "float32" if mode is None else (
        "float32 parameters, fastrnn with compute_dtype='bfloat16', torch in float32 and "
        "under bfloat16 autocast")
    print(f"fastrnn bench --train: {what}; fastrnn at {args.threads} thread(s)"
          + (", torch at 1 and 2 (the faster is the ratio's reference)" if torch else "")
          + "; rates from medians of interleaved rounds, higher is better")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > 0.5:
        print(f"WARNING: load average {load:.2f} at start: other work shares the CPU")
    try:
        rows = run(torch, quick=args.quick, threads=args.threads, compute_dtype=mode)
    finally:
        cpu.set_num_threads(cpu_default)
    print()
    print_table(rows)
    ratios = [r["ratio"] for r in rows if "ratio" in r and not r["derived"]]
    if ratios:
        g = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
        print(f"\ngeometric mean of fastrnn/torch over the items: {g:.2f}x")
    ratios = [r["ratio_bf16"] for r in rows if "ratio_bf16" in r and not r["derived"]]
    if ratios:
        g = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
        print(f"geometric mean of fastrnn/torch_bf16 over the items: {g:.2f}x")
    if args.json:
        meta = dict(kind="train", threads=args.threads, quick=args.quick,
                    **({} if mode is None else dict(compute_dtype=mode,
                                                    torch_bf16="autocast(cpu, bfloat16)")),
                    peer_threads=list(PEER_THREADS),
                    torch=None if torch is None else torch.__version__,
                    numpy=np.__version__, loadavg_start=load,
                    loadavg_end=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, train=rows), f, indent=1, default=_json_default)
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

