"""Yearly sunspot numbers (1700-2008), forecast one year ahead with an LSTM.

The series ships with statsmodels (``statsmodels.datasets.sunspots``). Windows
of the previous ``--window`` years predict the next year; the scaler is fitted
on the training years only; the last ``--test-years`` years are held out.
The baseline is persistence (next year = this year).

    pip install statsmodels matplotlib       # matplotlib optional (plot)
    python examples/sunspots_forecast.py [--window 12] [--test-years 40]

Bar: one-step RMSE on the held-out tail at least 15% below persistence.
"""
import argparse
import time

import numpy as np

from fastrnn.data import ArrayBatches, Standardizer, sliding_windows
from fastrnn.dispatch import resolve_backend
from fastrnn.models import SequenceRegressor
from fastrnn.optim import Adam, CosineDecay
from fastrnn.train import EarlyStopping, Trainer

from _common import plot_history


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--window", type=int, default=12)
    p.add_argument("--test-years", type=int, default=40)
    p.add_argument("--val-years", type=int, default=30)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto")
    p.add_argument("--plot", default="sunspots_curves.png")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        from statsmodels.datasets import sunspots
    except ImportError:
        raise SystemExit("this example needs statsmodels: pip install statsmodels")

    data = sunspots.load_pandas().data
    years = data["YEAR"].to_numpy().astype(int)
    series = data["SUNACTIVITY"].to_numpy().astype(np.float64)
    n, W = len(series), args.window
    n_test, n_val = args.test_years, args.val_years
    n_train = n - n_test - n_val
    scaler = Standardizer().fit(series[:n_train, None])
    z = scaler.transform(series[:, None]).astype(np.float32)          # [N, 1]
    X, Y = sliding_windows(z, W, horizon=1)                            # [M, W, 1], [M, 1, 1]
    target = np.arange(len(X)) + W                                      # index of the predicted year
    tr, va, te = target < n_train, (target >= n_train) & (target < n - n_test), target >= n - n_test

    model = SequenceRegressor(1, hidden_size=args.hidden, cell=args.cell,
                              backend=args.backend, seed=args.seed)
    trainer = Trainer(model, Adam(model, lr=args.lr),
                      ArrayBatches(X[tr], Y[tr], batch_size=16),
                      ArrayBatches(X[va], Y[va], batch_size=256, shuffle=False),
                      clip_norm=1.0, schedule=CosineDecay(args.lr, args.epochs),
                      early_stopping=EarlyStopping(patience=30, restore_best=True),
                      seed=args.seed, progress=not args.no_progress)
    t0 = time.perf_counter()
    trainer.fit(args.epochs)
    pred = scaler.inverse_transform(model.predict(X[te])[:, 0].astype(np.float64))[:, 0]
    truth = series[target[te]]
    persistence = series[target[te] - 1]
    r_model, r_pers = rmse(pred, truth), rmse(persistence, truth)
    print(f"held-out years {years[target[te][0]]}-{years[target[te][-1]]} ({te.sum()} one-step "
          f"forecasts), {args.cell} hidden {args.hidden}, backend "
          f"{resolve_backend(model.backend)}, {trainer.epoch} epochs in "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"RMSE: LSTM {r_model:.2f}   persistence {r_pers:.2f}   "
          f"({100 * (1 - r_model / r_pers):.1f}% below persistence)")
    plot_history(trainer.history, args.plot, "sunspots, one year ahead (standardised MSE)")
    return r_model, r_pers


if __name__ == "__main__":
    main()
