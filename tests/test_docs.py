"""The public API documents itself: every constructor argument of the layers
and models appears in its class docstring (numpydoc ``name : type`` lines),
``help(fastrnn.LSTM)`` shows them, and the signatures carry type hints."""
import inspect
import pydoc
import re

import pytest

import fastrnn
from fastrnn import models, optim, train

LAYERS = [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU, fastrnn.PeepholeLSTM]
MODELS = [models.LanguageModel, models.SequenceClassifier, models.SequenceRegressor]
OTHERS = [optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop, optim.Adagrad,
          train.Trainer, train.EarlyStopping, train.ProgressBar]


def _documented(doc):
    """Names of the entries of the docstring's Parameters section."""
    section = doc.split("Parameters\n", 1)[1]
    section = re.split(r"\n\s*(?:Attributes|Returns|Notes|Examples|Raises)\n\s*-+\n", section)[0]
    names = set()
    for m in re.finditer(r"^\s*([A-Za-z_][\w, ]*?) :", section, re.M):
        names.update(n.strip() for n in m.group(1).split(","))
    for m in re.finditer(r"^\s*([A-Za-z_]\w*(?:, [A-Za-z_]\w*)*)\s*$", section, re.M):
        names.update(n.strip() for n in m.group(1).split(","))   # "a, b" without a type
    return names


@pytest.mark.parametrize("cls", LAYERS + MODELS + OTHERS, ids=lambda c: c.__name__)
def test_every_constructor_parameter_is_documented(cls):
    doc = inspect.getdoc(cls)
    assert doc and "Parameters\n----------" in doc, cls
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    missing = [p for p in params if p not in _documented(doc)]
    assert not missing, f"{cls.__name__} does not document {missing}"


@pytest.mark.parametrize("cls", LAYERS + MODELS, ids=lambda c: c.__name__)
def test_layers_and_models_have_type_hints_and_examples(cls):
    sig = inspect.signature(cls.__init__)
    assert all(p.annotation is not inspect.Parameter.empty
               for name, p in sig.parameters.items() if name != "self"), cls
    assert "Examples\n--------\n>>> " in inspect.getdoc(cls)


def test_help_lstm_documents_every_argument_and_the_call():
    text = pydoc.render_doc(fastrnn.LSTM, renderer=pydoc.plaintext)
    for p in inspect.signature(fastrnn.LSTM.__init__).parameters:
        if p != "self":
            assert re.search(rf"\b{p} :", text), p
    for method in (fastrnn.LSTM.forward, fastrnn.LSTM.backward):
        doc = inspect.getdoc(method)
        assert "Parameters" in doc and "Returns" in doc
        assert all(a is not inspect.Parameter.empty
                   for a in (inspect.signature(method).return_annotation,))
    fwd = inspect.getdoc(fastrnn.LSTM.forward)
    for word in ("(T, B, I)", "(B, T, I)", "batch_first", "lengths", "h_0", "c_n"):
        assert word in fwd, word
