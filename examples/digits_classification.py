"""Handwritten digits with an LSTM that reads each 8x8 image row by row.

scikit-learn's ``load_digits`` (1,797 images, shipped with the package): each
image is a sequence of 8 time steps of 8 pixel intensities. A one-layer LSTM
with attention pooling ("the attention LSTM") classifies it; the baseline is
multinomial logistic regression on the 64 raw pixels.

    pip install scikit-learn matplotlib      # matplotlib optional (plot)
    python examples/digits_classification.py [--epochs 30] [--pooling attention]

Bar: >= 95% test accuracy on a stratified 25% test split.
"""
import argparse
import time

import numpy as np

from fastrnn.dispatch import resolve_backend
from fastrnn.data import ArrayBatches, Standardizer
from fastrnn.models import SequenceClassifier
from fastrnn.optim import Adam, CosineDecay
from fastrnn.train import EarlyStopping, Trainer

from _common import plot_history


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--pooling", default="attention", choices=("last", "attention"))
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto")
    p.add_argument("--plot", default="digits_curves.png")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn")

    digits = load_digits()
    X = digits.images.astype(np.float32)                  # [N, 8 rows (time), 8 pixels]
    y = digits.target.astype(np.int64)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y,
                                          random_state=args.seed)
    Xtr, Xva, ytr, yva = train_test_split(Xtr, ytr, test_size=0.15, stratify=ytr,
                                          random_state=args.seed)
    scaler = Standardizer().fit(Xtr)                      # per pixel column, train split only
    Xtr, Xva, Xte = (scaler.transform(a).astype(np.float32) for a in (Xtr, Xva, Xte))

    model = SequenceClassifier(10, input_size=8, hidden_size=args.hidden, cell=args.cell,
                               pooling=args.pooling, bidirectional=args.bidirectional,
                               backend=args.backend, seed=args.seed)
    trainer = Trainer(model, Adam(model, lr=args.lr),
                      ArrayBatches(Xtr, ytr, batch_size=32),
                      ArrayBatches(Xva, yva, batch_size=512, shuffle=False),
                      clip_norm=5.0, schedule=CosineDecay(args.lr, args.epochs),
                      early_stopping=EarlyStopping(patience=8, restore_best=True),
                      seed=args.seed, progress=not args.no_progress)
    t0 = time.perf_counter()
    trainer.fit(args.epochs)
    acc = float(np.mean(model.predict(Xte) == yte))

    flat = lambda a: a.reshape(len(a), -1)                # noqa: E731
    logreg = LogisticRegression(max_iter=2000).fit(flat(np.concatenate([Xtr, Xva])),
                                                   np.concatenate([ytr, yva]))
    base = float(np.mean(logreg.predict(flat(Xte)) == yte))
    print(f"{args.cell} ({args.pooling} pooling, hidden {args.hidden}, backend "
          f"{resolve_backend(model.backend)}): test accuracy {acc:.4f} on {len(yte)} images, "
          f"{trainer.epoch} epochs in {time.perf_counter() - t0:.0f} s")
    print(f"baseline logistic regression on raw pixels: {base:.4f}")
    plot_history(trainer.history, args.plot, "digits, row by row", extra="val_accuracy")
    return acc


if __name__ == "__main__":
    main()
