"""Ready-made models: a language model, a sequence classifier and a
sequence regressor, each built from one recurrent stack and the blocks.

Every model exposes the same surface as the layers:

- ``params`` / ``grads``: flat dicts with prefixed names
  (``"rnn.weight_ih_l0"``, ``"head.weight"``...) over the *same* arrays the
  sub-modules own, so optimizers update them in place;
- ``zero_grad()``, ``train()``, ``eval()``, ``training``;
- ``batch_loss(batch, train=True) -> (mean loss, count)``: forward, loss and,
  when ``train``, backward (accumulating into ``grads``) — what
  :class:`fastrnn.train.Trainer` calls;
- ``save(path)`` / ``Model.load(path)``: one ``.npz`` holding the parameters
  and a JSON config; loading a checkpoint of another model class fails with a
  clear error. :func:`load_model` picks the class from the file.

Layouts: the language model is time-major (tokens ``[T, B]``, as the
truncated-BPTT stream is); the classifier and regressor take batch-major
``[B, T, F]`` (or ``[B, T]`` token ids) like :func:`fastrnn.data.pad_sequences`
produces.

On the GPU: a model built with ``backend="cuda"``, or moved with
``model.to("cuda")`` (``model.to("cpu")`` moves it back), keeps every
parameter and gradient on the device, and the optimizers keep their state
there. A host batch is copied over once per step (device arrays are taken as
they are), the forward pass returns device arrays, and ``batch_loss``
returns the loss as one float. ``predict``/``sample``/``evaluate`` return
host arrays as before; ``save`` writes host arrays, so a checkpoint written on
the GPU loads on a CPU-only machine (its saved ``backend="cuda"`` falls back
to ``"auto"`` there) and vice versa (``load_model(path, backend="cuda")``).

Modules, one concern each:

- :mod:`~fastrnn.models.base`: the shared model machinery, the recurrent
  stack a cell name builds (:func:`make_recurrent`) and :func:`load_model`
  with the model table;
- :mod:`~fastrnn.models.language`: :class:`LanguageModel`;
- :mod:`~fastrnn.models.encoder`: the sequence encoder the classifier and the
  regressor share (one host/device path) and :data:`INPUT_RULE`;
- :mod:`~fastrnn.models.classifier`: :class:`SequenceClassifier`;
- :mod:`~fastrnn.models.regressor`: :class:`SequenceRegressor`;
- :mod:`~fastrnn.models.fit`: the ``fit`` recipe both share (the one module
  here that uses :class:`fastrnn.train.Trainer`).

Every name is imported from here (``from fastrnn.models import
LanguageModel``); the classes keep ``fastrnn.models`` as their module, the
path that pickles record.
"""
from __future__ import annotations

from .base import CELL_TYPES, CheckpointError, load_model, make_recurrent
from .base import _MODELS, read_checkpoint       # noqa: F401  (fastrnn.sklearn, callers)
from .encoder import INPUT_RULE
from .language import LanguageModel
from .classifier import SequenceClassifier
from .regressor import SequenceRegressor

__all__ = ["LanguageModel", "SequenceClassifier", "SequenceRegressor", "load_model",
           "make_recurrent", "CELL_TYPES", "CheckpointError", "INPUT_RULE"]

# pickles name a class by its module: keep the one users import from (and
# that pickles made before the split record)
for _cls in (LanguageModel, SequenceClassifier, SequenceRegressor):
    _cls.__module__ = __name__
del _cls
