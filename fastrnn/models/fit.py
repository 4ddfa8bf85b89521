"""The ``fit`` recipe that :meth:`SequenceClassifier.fit
<fastrnn.models.SequenceClassifier.fit>` and :meth:`SequenceRegressor.fit
<fastrnn.models.SequenceRegressor.fit>` share: read the data by the input
rule, split off a validation part, fit the input scaler on the training
split's valid steps, and train with :class:`fastrnn.train.Trainer` (the one
module of :mod:`fastrnn.models` that uses it). What differs between the two
models (their targets, and the regressor's target scaler) comes from two
methods of the model: ``_fit_targets`` and ``_fit_scale_targets``.
"""
from __future__ import annotations

import numpy as np

from ..data import ArrayBatches, Standardizer, train_val_split
from ..optim import get_optimizer
from ..train import Trainer


def fit(model, x, y, lengths, *, sequence, unbatched, unit, epochs, batch_size, lr, optimizer,
        val_fraction, standardize, clip_norm, seed, progress, trainer_kwargs):
    """Train ``model`` (a classifier or a regressor) on raw ``x`` and targets
    ``y``, keeping its preprocessing; returns the model, with ``trainer`` and
    ``history`` set. ``unbatched``: the error message for one unbatched
    sample; ``unit``: the Trainer's name for a sample; the other arguments as
    the models' ``fit`` documents them."""
    x, lengths, one = model._as_batch(x, lengths, False if sequence is None else sequence,
                                      fitting=True)
    if one:
        raise ValueError(unbatched)
    x, y = model._fit_targets(x, y)           # y checked against x; the input kind noted
    tr, va = train_val_split(len(x), val_fraction, rng=seed)
    if model.embed is None:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            x = x[:, :, None]
        if standardize:
            steps = x[tr] if lengths is None else np.concatenate(
                [x[i, :lengths[i]] for i in tr])
            model.scaler = Standardizer().fit(steps.reshape(-1, x.shape[-1]))
    y = model._fit_scale_targets(y, tr, standardize)
    if model.embed is None:
        x = model._preprocess(x, lengths) if standardize else x.astype(model.dtype)
    ln = (lambda idx: None) if lengths is None else (lambda idx: np.asarray(lengths)[idx])
    train = ArrayBatches(x[tr], y[tr], lengths=ln(tr), batch_size=batch_size)
    val = (ArrayBatches(x[va], y[va], lengths=ln(va), batch_size=256, shuffle=False)
           if len(va) else None)
    model.trainer = Trainer(model, get_optimizer(optimizer, model, lr=lr), train, val,
                            clip_norm=clip_norm or None, seed=seed, progress=progress,
                            unit=unit, **trainer_kwargs)
    model.history = model.trainer.fit(epochs)
    return model
