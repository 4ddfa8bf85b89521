"""Ready-made models: a language model, a sequence classifier and a sequence
regressor (see :mod:`fastrnn.models.base` for their shared surface)."""
from .base import (CELL_TYPES, INPUT_RULE, CheckpointError, LanguageModel, SequenceClassifier,
                   SequenceRegressor, _MODELS, load_model, make_recurrent, read_checkpoint)

__all__ = ["LanguageModel", "SequenceClassifier", "SequenceRegressor", "load_model",
           "make_recurrent", "CELL_TYPES", "CheckpointError", "INPUT_RULE"]

# pickles name a model class by the path users import it from, fastrnn.models
for _cls in (LanguageModel, SequenceClassifier, SequenceRegressor):
    _cls.__module__ = __name__
del _cls
