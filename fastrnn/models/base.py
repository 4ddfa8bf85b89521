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
"""
from __future__ import annotations


import numpy as np

from .. import _device, _validate
from .. import prepared as _prepared
from .. import checkpoint as _ckpt
from ..blocks import (AttentionPool, Dropout, Embedding, Linear, as_rng, mse,
                     softmax_cross_entropy)
from ..checkpoint import CheckpointError
from .. import layers as _layers
from ..bf16 import check_compute_dtype
from ..cells import CELL_NAMES, get_cell

__all__ = ["LanguageModel", "SequenceClassifier", "SequenceRegressor", "load_model",
           "make_recurrent", "CELL_TYPES", "CheckpointError", "INPUT_RULE"]

#: every cell name ``cell=`` accepts (registry keys and their aliases, see
#: :data:`fastrnn.cells.CELL_NAMES`) -> (layer class, extra constructor arguments),
#: from each cell's ``CellSpec.layer``
CELL_TYPES = {name: (getattr(_layers, get_cell(name).layer[0]), get_cell(name).layer_kwargs)
              for name in CELL_NAMES}

# CheckpointError (a ValueError) lives in fastrnn.checkpoint; imported above

#: The one rule by which the classifier and the regressor read an array ``x``
#: of features (``F = input_size``); quoted by every method that takes one.
INPUT_RULE = """\
``[B, T, F]`` is a batch of sequences; ``[n, F]`` is ``n`` rows of tabular
data for a model that :meth:`fit` trained on rows (one step each:
:attr:`input_kind` ``"tabular"``). For any other model a 2-D array that could
be one sequence ``[T, F]`` or ``n`` rows is refused, with the reshapes that
say which (``X[None]``: one sequence; ``X[:, None, :]``: rows of one step;
``X[:, :, None]``: univariate sequences), unless ``sequence=True`` (one
sequence) or ``sequence=False`` (one sample per row) says it; ``[B, T]`` with
``T != F = 1`` is ``B`` univariate sequences. One row ``[F]`` (``F > 1``) is
one sample; ``[T]`` is one sequence for a sequence model of 1 feature. A
list of sequences of different lengths is padded. A pandas DataFrame is a
table of rows whose columns are put in the order of :attr:`feature_names` by
name (missing or unexpected names are a ValueError naming them)."""


def _with_input_rule(func):
    """Put :data:`INPUT_RULE` into ``func``'s docstring at its ``{INPUT_RULE}``
    line, indented as that line is."""
    import textwrap
    if not func.__doc__:                  # python -OO strips docstrings
        return func
    lines = func.__doc__.split("\n")
    for k, line in enumerate(lines):
        if line.strip() == "{INPUT_RULE}":
            lines[k] = textwrap.indent(INPUT_RULE, line[:len(line) - len(line.lstrip())])
    func.__doc__ = "\n".join(lines)
    return func


def make_recurrent(cell, input_size, hidden_size, num_layers=1, dropout=0.0,
                   bidirectional=False, backend="auto", dtype=np.float32, seed=None,
                   compute_dtype=None):
    """Build the recurrent layer for a cell name (see :data:`CELL_TYPES`)."""
    cls, extra = CELL_TYPES[get_cell(cell).name]     # get_cell names the accepted cells
    return cls(input_size, hidden_size, num_layers=num_layers, dropout=dropout,
               bidirectional=bidirectional, backend=backend, dtype=dtype, seed=seed,
               compute_dtype=compute_dtype, **extra)


def _compute_dtype(value, dtype, backend):
    """The models' ``compute_dtype`` checked before anything is built: the
    mode's name (None or ``"bfloat16"``), refused for float64 and for cuda."""
    value = check_compute_dtype(value, "compute_dtype", dtype)
    if value is not None:
        if np.dtype(dtype) != np.float32:
            raise ValueError(f"compute_dtype={value!r} is for float32 models (float32 "
                             f"parameters, bfloat16 products); dtype is {np.dtype(dtype).name}")
        if backend == "cuda":
            raise ValueError(f"compute_dtype={value!r} runs on the CPU backends only "
                             "('numpy', 'cpu', or 'auto' with host arrays), not on 'cuda'")
    return value


def _seed(rng):
    return int(rng.integers(2 ** 31 - 1))


class _Model:
    """Shared machinery: sub-modules, flat params, train/eval, save/load."""

    def __init__(self, config):
        self.config = config           # JSON-serialisable constructor arguments
        self.meta = {}                 # extra JSON saved with the model (vocab, scaler...)
        self.training = True
        self._modules = {}             # prefix -> module (layer or block)

    # ---------------------------------------------------------------- params
    @property
    def params(self):
        return {f"{p}.{k}": v for p, m in self._modules.items() for k, v in m.params.items()}

    @property
    def grads(self):
        return {f"{p}.{k}": v for p, m in self._modules.items() for k, v in m.grads.items()}

    def zero_grad(self):
        """Set every gradient in :attr:`grads` to zero, in place (the arrays
        stay the same objects); ``backward`` accumulates into them."""
        for m in self._modules.values():
            m.zero_grad()

    def train(self, mode=True):
        """Training mode (``mode=True``: dropout active, the forward pass saves
        what ``backward`` needs) or evaluation mode (``False``); returns the
        model."""
        self.training = bool(mode)
        for m in self._modules.values():
            m.train(mode)
        return self

    def eval(self):
        """Evaluation mode, ``train(False)``: no dropout, and the forward pass
        runs the inference kernels (nothing saved for ``backward``); returns
        the model. ``predict``, ``evaluate`` and ``sample`` switch to it and
        back themselves."""
        return self.train(False)

    def num_params(self):
        """The number of trainable values (the sizes of :attr:`params` added up)."""
        return int(sum(v.size for v in self.params.values()))

    @property
    def backend(self):
        return self.rnn.backend

    @property
    def dtype(self):
        return self.rnn.dtype

    @property
    def compute_dtype(self):
        """The recurrent layers' compute mode: None or ``"bfloat16"`` (see
        :attr:`fastrnn.LSTM.compute_dtype`); the embedding and the head
        compute in :attr:`dtype`. Settable; saved with the model."""
        return self.rnn.compute_dtype

    @compute_dtype.setter
    def compute_dtype(self, value):
        self.rnn.compute_dtype = value
        self.config["compute_dtype"] = self.rnn.compute_dtype

    @property
    def device(self):
        """``"cuda"`` when the model's parameters live on the GPU, else ``"cpu"``."""
        return self.rnn.device

    def to(self, backend):
        """Move the model to ``"cuda"`` (parameters, gradients, every block), or
        back to the host with ``"cpu"`` (or ``"numpy"``, ``"auto"``: the
        recurrent layers' backend there); returns the model.

        An optimizer built on the model follows (it reads ``model.params`` at
        every step and moves its state buffers at the next step)."""
        from .. import dispatch
        backend = dispatch.check_backend_name(backend)
        _device.placement("cuda" if backend == "cuda" else "cpu")   # clear error first
        self.rnn.to(backend)
        where = "cuda" if backend == "cuda" else "cpu"
        for m in self._modules.values():
            if m is not self.rnn:
                m.to(where)
        self.config["backend"] = backend
        self._moved()
        return self

    def _moved(self):
        """Hook: move carried state after :meth:`to`."""

    def _to_model(self, a, dtype=None):
        """A host batch array for a model on the GPU: copied over (once)."""
        if self.device == "cuda" and not _device.on_device(a):
            return _device.kernels().to_device(np.asarray(a), dtype)
        return a

    def state_dict(self, as_torch=False):
        """A copy of the parameters, ``{name: host ndarray}`` with the names of
        :attr:`params` (``"rnn.weight_ih_l0"``, ``"head.weight"``...); changing
        it does not change the model. :meth:`load_state_dict` takes it back.
        ``as_torch=True``: ``torch.Tensor`` copies that the model's
        :meth:`to_torch` twin loads (``twin.load_state_dict``)."""
        if as_torch:
            from ..torch_models import torch_state_dict
            return torch_state_dict(self)
        if self.device == "cuda":
            return {k: _device.host_copy(v) for k, v in self.params.items()}
        return {k: v.copy() for k, v in self.params.items()}

    def to_torch(self):
        """An equivalent ``torch.nn.Module`` (needs torch: ``pip install
        'fastrnn[torch]'``): same parameters, ``forward`` as this model's
        (see :mod:`fastrnn.torch_models`)."""
        from ..torch_models import torch_model
        return torch_model(self)

    def load_state_dict(self, state):
        own = self.params
        # every name and shape checked before the first write: no half-loaded model
        new = _ckpt.check_state_dict(own, state, type(self).__name__)
        for k, v in new.items():
            if isinstance(own[k], np.ndarray):
                own[k][...] = v
            else:
                _device.assign(own[k], v)
        _prepared.bump()

    def generators(self):
        """Every random generator the model draws from (dropout masks), in a
        fixed order, so a checkpoint can save and restore their states."""
        out = []
        for p in sorted(self._modules):
            m = self._modules[p]
            for attr in ("rng", "_rng"):
                g = getattr(m, attr, None)
                if isinstance(g, np.random.Generator):
                    out.append(g)
        return out

    def reset_state(self):
        """Forget a carried recurrent state (stateful models only)."""

    def __repr__(self):
        c = self.config
        skip = {"backend", "dtype", "seed", "compute_dtype"}
        args = ", ".join(f"{k}={v!r}" for k, v in c.items()
                         if k not in skip and v is not None)
        extra = []
        if self.meta.get("classes") is not None:
            extra.append(f"classes={_short(self.meta['classes'])}")
        if self.meta.get("scaler") is not None:
            extra.append("scaler=Standardizer")
        if self.meta.get("difference"):
            extra.append(f"difference={self.meta['difference']}")
        mode = "" if self.compute_dtype is None else f", compute_dtype={self.compute_dtype!r}"
        return (f"{type(self).__name__}({args}, backend={self.backend!r}, "
                f"dtype={np.dtype(self.dtype).name}{mode}; {self.num_params():,} parameters"
                + ("; " + ", ".join(extra) if extra else "") + ")")

    # ------------------------------------------------------------ save / load
    def save(self, path):
        """Write parameters and config to ``path`` (``.npz`` appended if missing)."""
        params = self.state_dict() if self.device == "cuda" else self.params
        # the format is written in one place (atomically: a temporary file, fsynced, renamed)
        return _ckpt.save_model(path, self, params)

    @classmethod
    def load(cls, path, backend=None):
        """Rebuild a model saved by :meth:`save`; ``backend`` overrides the
        saved one."""
        path, header, arrays, _ = _ckpt.read_model(path, _MODELS)
        if cls is not _Model and header["model"] != cls.__name__:
            raise CheckpointError(f"{path!r} holds a {header['model']}, "
                                  f"not a {cls.__name__}")
        return _ckpt.build_model(path, header, arrays, _MODELS, backend)


def read_checkpoint(path):
    """Return ``(header dict, {name: array})`` of a model file: a missing file
    is a FileNotFoundError, any broken one a CheckpointError naming the file
    (see :mod:`fastrnn.checkpoint`)."""
    _, header, arrays, _ = _ckpt.read_model(path, _MODELS)
    return header, arrays


def load_model(path, backend=None):
    """Load any model saved by ``save``, choosing the class from the file."""
    path, header, arrays, _ = _ckpt.read_model(path, _MODELS)
    return _ckpt.build_model(path, header, arrays, _MODELS, backend)


def _dtype_name(dtype):
    return np.dtype(dtype).name


# ====================================================================== LM
class LanguageModel(_Model):
    """Token-level language model: embedding → recurrent stack → dropout →
    linear projection to the vocabulary.

    ``forward(tokens [T, B], state=None) -> (logits [T, B, V], state_n)``.
    Training with truncated BPTT carries the state across consecutive chunks
    (see :class:`fastrnn.data.LMBatches`): ``batch_loss`` starts each chunk
    from the final state of the previous one, without back-propagating into
    it; :meth:`reset_state` forgets it (the Trainer calls it every epoch).
    Losses are cross-entropies in nats per token; the Trainer's progress bar
    shows them in bits per token (:attr:`loss_in_bits`).

    Parameters
    ----------
    vocab_size : int
        ``V``, the number of token ids (``0 .. V-1``).
    embed_dim : int, default 64
        Width of the token embedding (the recurrent input size).
    hidden_size : int, default 256
        Hidden units per recurrent layer and direction.
    num_layers : int, default 1
        Stacked recurrent layers.
    cell : str, default "lstm"
        The recurrent cell: ``"lstm"``, ``"gru"``, ``"gru_reset_before"``,
        ``"rnn_tanh"`` (or ``"rnn"``), ``"rnn_relu"``, ``"peephole"``
        (``"peephole_diagonal"``) or ``"peephole_full"`` (see :data:`CELL_TYPES`).
    dropout : float in [0, 1), default 0.0
        Dropout between recurrent layers and before the head (training only).
    backend : {"auto", "numpy", "cpu", "cuda"}, default "auto"
        Where the recurrent layers run (see :class:`fastrnn.LSTM`).
    dtype : {"float32", "float64"}, default "float32"
        Parameter dtype (inputs are converted to it).
    seed : int or None, default None
        Seeds the initial weights and the dropout masks.
    compute_dtype : {None, "bfloat16"}, default None
        ``"bfloat16"``: the recurrent layers' matrix products take bfloat16
        operands, summed in float32 (float32 models on the CPU; see
        :attr:`fastrnn.LSTM.compute_dtype`). Parameters, gradients and the
        optimizer state stay float32.

    Examples
    --------
    >>> import numpy as np
    >>> from fastrnn import LanguageModel
    >>> from fastrnn.data import CharVocab
    >>> vocab = CharVocab("hello world")
    >>> lm = LanguageModel(len(vocab), embed_dim=8, hidden_size=16, seed=0)
    >>> lm.meta["vocab"] = vocab.to_dict()           # lets sample() take text
    >>> logits, (h, c) = lm(vocab.encode("hello")[:, None])   # tokens (T, B)
    >>> logits.shape
    (5, 1, 9)
    >>> len(vocab.decode(lm.sample(10, "hel", rng=0)))
    10
    """

    stateful = True
    loss_in_bits = True          # the Trainer shows its losses in bits per token

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden_size: int = 256,
                 num_layers: int = 1, cell: str = "lstm", dropout: float = 0.0,
                 backend: str = "auto", dtype: str = "float32", seed: int | None = None,
                 compute_dtype: str | None = None) -> None:
        _validate.model_args(dict(vocab_size=vocab_size, embed_dim=embed_dim, hidden_size=hidden_size,
                                  num_layers=num_layers), dropout=dropout, seed_=seed, dtype=dtype)
        compute_dtype = _compute_dtype(compute_dtype, dtype, backend)
        super().__init__(dict(vocab_size=int(vocab_size), embed_dim=int(embed_dim),
                              hidden_size=int(hidden_size), num_layers=int(num_layers),
                              cell=cell, dropout=float(dropout), backend=backend,
                              dtype=_dtype_name(dtype), seed=seed, compute_dtype=compute_dtype))
        rng = as_rng(seed)
        dt = np.dtype(dtype)
        self.vocab_size = int(vocab_size)
        self.embed = Embedding(vocab_size, embed_dim, dtype=dt, rng=rng)
        self.rnn = make_recurrent(cell, embed_dim, hidden_size, num_layers, dropout,
                                  False, backend, dt, _seed(rng), compute_dtype)
        self.drop = Dropout(dropout, rng=_seed(rng))
        self.head = Linear(hidden_size, vocab_size, dtype=dt, rng=rng)
        self._modules = {"embed": self.embed, "rnn": self.rnn, "head": self.head,
                         "drop": self.drop}
        self._carry = None
        if backend == "cuda":
            self.to("cuda")

    def _moved(self):
        st = self._carry
        if st is not None:
            parts = st if isinstance(st, tuple) else (st,)
            parts = tuple(_device.to_host(a) if self.device == "cpu" else self._to_model(a)
                          for a in parts)
            self._carry = parts if isinstance(st, tuple) else parts[0]

    def forward(self, tokens, state=None):
        """Logits of the next token at every step.

        Parameters
        ----------
        tokens : int array ``[T, B]``
            Token ids, time-major.
        state : optional
            The recurrent state to start from (``(h, c)`` for the LSTM family,
            ``h`` otherwise, each ``[num_layers, B, H]``); zeros by default.

        Returns
        -------
        (logits ``[T, B, V]``, final state)
            Raw scores (before softmax) and the state after the last step, to
            pass to the next call. In training mode the pass is kept for
            :meth:`backward`.
        """
        if not _device.on_device(tokens):
            tokens = np.asarray(tokens)
        if len(tokens.shape) != 2:
            raise ValueError(f"tokens must be [T, B] ints, got shape {tuple(tokens.shape)}")
        e = self.embed(tokens)                           # [T, B, E]
        y, state_n = self.rnn(e, state)                  # [T, B, H]
        return self.head(self.drop(y)), state_n          # [T, B, V]

    __call__ = forward

    def backward(self, dlogits, dstate=None):
        dy = self.drop.backward(self.head.backward(dlogits))
        de, dstate0 = self.rnn.backward(dy, dstate)
        self.embed.backward(de)
        return dstate0

    def reset_state(self):
        self._carry = None

    @property
    def carried_state(self):
        """The recurrent state carried to the next training chunk (``None``
        after :meth:`reset_state`); settable, e.g. to put it back after
        scoring other data in between."""
        return self._carry

    @carried_state.setter
    def carried_state(self, state):
        self._carry = state

    def _carried(self, B):
        st = self._carry
        if st is None:
            return None
        h = st[0] if isinstance(st, tuple) else st
        if h.shape[1] != B:
            return None
        if self.device == "cuda" and not _device.on_device(h):     # e.g. from a checkpoint
            self._moved()
            st = self._carry
        return st

    def batch_loss(self, batch, train=True):
        """``batch = (x [T, B], y [T, B])``; carries the state across calls."""
        x, y = batch[0], batch[1]
        logits, st = self.forward(x, self._carried(x.shape[1]))
        # the gradient overwrites the logits (a fresh array of the head's);
        # no gradient at all when scoring
        loss, dlogits = softmax_cross_entropy(logits, y, grad=train,
                                              out=logits if train else None)
        if train:
            self.backward(dlogits)
        self._carry = st
        return loss, (int(np.asarray(y).size) if not _device.on_device(y)
                      else int(np.prod(y.shape)))

    def evaluate(self, ids, batch_size=32, bptt=128):
        """Mean cross-entropy (nats per token) of predicting ``ids[1:]`` from
        ``ids[:-1]``, in eval mode, carrying state over the whole stream."""
        ids = np.asarray(ids, dtype=np.int64)
        was = self.training
        self.eval()
        try:
            batch_size = max(1, min(batch_size, (len(ids) - 1) // 2))
            n = (len(ids) - 1) // batch_size
            x = ids[:n * batch_size].reshape(batch_size, n).T
            y = ids[1:n * batch_size + 1].reshape(batch_size, n).T
            state, total = None, 0.0
            for s in range(0, n, bptt):
                logits, state = self.forward(x[s:s + bptt], state)     # inference kernels
                loss, _ = softmax_cross_entropy(logits, y[s:s + bptt], reduction="sum",
                                                grad=False)
                total += loss
            return total / y.size
        finally:
            self.train(was)

    @property
    def vocab(self):
        """The vocabulary saved with the model (``meta["vocab"]``, set by
        ``fastrnn train lm``), as a :class:`fastrnn.data.CharVocab` or
        :class:`~fastrnn.data.WordVocab`; ``None`` when there is none."""
        d = self.meta.get("vocab")
        if not d:
            return None
        from ..data import _Vocab
        return _Vocab.from_dict(d)

    def encode(self, text: str) -> np.ndarray:
        """The token ids of ``text`` in the model's :attr:`vocab`.

        Raises
        ------
        ValueError
            When the model has no vocabulary, or ``text`` has characters
            (words, for a word vocabulary) the model never saw, naming them:
            they are refused, not replaced by ``<unk>``.
        """
        vocab = self.vocab
        if vocab is None:
            raise ValueError("this model has no vocabulary (meta['vocab']): pass token ids, "
                             "or train it with `fastrnn train lm`")
        toks = list(text) if type(vocab).__name__ == "CharVocab" else vocab.tokenize(text)
        unknown = sorted({t for t in toks if t not in vocab.stoi or t == vocab.unk})
        if unknown:
            what = "characters" if type(vocab).__name__ == "CharVocab" else "words"
            raise ValueError(f"{what} the model never saw: "
                             + ", ".join(repr(t) for t in unknown)
                             + f" (its vocabulary has {len(vocab)} tokens)")
        return vocab.encode(text)

    def sample(self, n: int, prime=None, temperature: float = 1.0, rng=None,
               top_k: int | None = None) -> np.ndarray:
        """Generate ``n`` tokens after ``prime``.

        Parameters
        ----------
        n : int
            Tokens to generate.
        prime : str or sequence of int, optional
            Token ids to start from, or a text encoded with the model's
            :attr:`vocab` (see :meth:`encode`: characters the model never saw
            raise ``ValueError`` naming them). Default: token 0.
        temperature : float, default 1.0
            < 1 sharpens, > 1 flattens the distribution; 0 takes the most
            likely token.
        rng : int or numpy.random.Generator, optional
            Seed or generator of the sampling.
        top_k : int, optional
            Sample among the ``top_k`` most likely tokens only.

        Returns
        -------
        numpy.ndarray of int64, shape (n,)
            The generated ids (without the prime); ``model.vocab.decode(ids)``
            gives the text.
        """
        n = _validate.nonneg_int("n", n)
        temperature = _validate.finite_float("temperature", temperature, 0.0)
        top_k = _validate.optional_positive_int("top_k", top_k)
        rng = as_rng(rng)
        if isinstance(prime, str):
            try:
                prime = self.encode(prime)
            except ValueError as exc:
                raise ValueError(f"prime {prime!r}: {exc}") from None
        prime = np.asarray([0] if prime is None or len(prime) == 0 else prime, dtype=np.int64)
        if self.device == "cpu" and self.rnn.backend != "numpy" and self.compute_dtype is None:
            # streams compute in the model's dtype only: a bfloat16 model samples below
            from ..stream import available
            if available():      # else (no compiled kernels) the reference below
                return self._sample_stream(n, prime, temperature, rng, top_k)
        was = self.training
        self.eval()
        try:
            logits, state = self.forward(prime[:, None])
            last = _device.to_host(logits[len(prime) - 1, 0]).astype(np.float64)
            out = np.empty(n, dtype=np.int64)
            for k in range(n):
                if temperature == 0:
                    tok = int(np.argmax(last))
                else:
                    z = last / temperature
                    if top_k is not None and top_k < len(z):
                        cut = np.partition(z, -top_k)[-top_k]
                        z = np.where(z >= cut, z, -np.inf)
                    p = np.exp(z - z.max())
                    p /= p.sum()
                    tok = int(rng.choice(len(p), p=p))
                out[k] = tok
                logits, state = self.forward(np.array([[tok]]), state)
                last = _device.to_host(logits[0, 0]).astype(np.float64)
            return out
        finally:
            self.train(was)

    generate = sample

    @staticmethod
    def _pick(last, temperature, rng, top_k):
        if temperature == 0:
            return int(np.argmax(last))
        z = last / temperature
        if top_k is not None and top_k < len(z):
            cut = np.partition(z, -top_k)[-top_k]
            z = np.where(z >= cut, z, -np.inf)
        p = np.exp(z - z.max())
        p /= p.sum()
        return int(rng.choice(len(p), p=p))

    def _sample_stream(self, n, prime, temperature, rng, top_k):
        """:meth:`sample` on a :meth:`stream` (one compiled call per token)."""
        if prime.min() < 0 or prime.max() >= self.vocab_size:
            raise ValueError(f"prime token ids must lie in [0, {self.vocab_size})")
        s = self.stream()
        for tok in prime.tolist():
            last = s.step(tok)
        out = np.empty(n, dtype=np.int64)
        for k in range(n):
            tok = self._pick(last.astype(np.float64), temperature, rng, top_k)
            out[k] = tok
            last = s.step(tok)
        return out

    def stream(self, batch_size: int = 1):
        """A :class:`fastrnn.stream.ModelStream` generating one token per call:
        ``s.step(token_ids) -> logits`` (``(B, V)`` for ids ``(B,)``, ``(V,)``
        for one int), the recurrent state kept between calls; embedding,
        recurrent stack and head run in one compiled call.

        The weights are a snapshot: call ``s.refresh()`` after training or
        loading. The returned logits are a buffer the next step overwrites.

        Examples
        --------
        >>> from fastrnn import LanguageModel
        >>> s = LanguageModel(10, embed_dim=4, hidden_size=8, seed=0).stream()
        >>> s.step(3).shape
        (10,)
        """
        from ..stream import ModelStream
        return ModelStream(self, "lm", batch_size)


# ====================================================== sequence -> vector
class _SequenceToVector(_Model):
    """Recurrent stack over ``[B, T, F]`` (or token ids ``[B, T]``), pooled
    to one vector per sequence by the last valid step (final hidden state of
    the top layer, both directions) or additive attention, then a head.

    With ``lengths``, a batch runs only to its longest sequence (``x`` is cut
    to ``lengths.max()`` steps; the gradient returned for ``x`` is zero-padded
    back): the steps after every length produce zero outputs, leave the
    states untouched and receive no gradient, so the result is that of the
    whole padded batch, in fewer steps.
    """

    _trim = True       # False runs every padded step (tests compare the two)

    def _build(self, input_size, out_features, hidden_size, num_layers, cell, pooling,
               bidirectional, dropout, attn_size, vocab_size, embed_dim, backend, dtype, rng,
               compute_dtype=None):
        if pooling not in ("last", "attention"):
            raise ValueError(f"pooling must be 'last' or 'attention', got {pooling!r}")
        dt = np.dtype(dtype)
        self.pooling = pooling
        self.embed = None
        if vocab_size is not None:
            if embed_dim is None:
                raise ValueError("embed_dim is required with vocab_size")
            self.embed = Embedding(vocab_size, embed_dim, dtype=dt, rng=rng)
            input_size = embed_dim
        elif input_size is None:
            raise ValueError("give input_size (features) or vocab_size (token ids)")
        self.input_size = int(input_size)
        self.rnn = make_recurrent(cell, input_size, hidden_size, num_layers, dropout,
                                  bidirectional, backend, dt, _seed(rng), compute_dtype)
        D = 2 if bidirectional else 1
        width = D * hidden_size
        self.attn = AttentionPool(width, attn_size, dtype=dt, rng=rng) if pooling == "attention" else None
        self.drop = Dropout(dropout, rng=_seed(rng))
        self.head = Linear(width, out_features, dtype=dt, rng=rng)
        mods = {"rnn": self.rnn, "head": self.head, "drop": self.drop}
        if self.embed is not None:
            mods["embed"] = self.embed
        if self.attn is not None:
            mods["attn"] = self.attn
        self._modules = mods
        if backend == "cuda":
            self.to("cuda")

    # ------------------------------------------- preprocessing carried by the model
    @property
    def scaler(self):
        """The input :class:`fastrnn.data.Standardizer` that :meth:`predict`
        applies to raw features (saved with the model in ``meta["scaler"]``);
        ``None``: inputs are used as given. Set it to a fitted Standardizer
        (or ``None``)."""
        d = self.meta.get("scaler")
        if d is None:
            return None
        from ..data import Standardizer
        return Standardizer.from_dict(d)

    @scaler.setter
    def scaler(self, value):
        self.meta.pop("scaler", None) if value is None else self.meta.__setitem__(
            "scaler", _scaler_dict(value, self.input_size, "scaler"))

    # ------------------------------------------------------- the input rule
    @property
    def input_kind(self):
        """What :meth:`fit` trained the model on: ``"tabular"`` (rows of one
        step of ``input_size`` features), ``"sequence"`` (sequences of
        several steps), or ``None`` (built by hand, or saved before this was
        recorded: read as ``"sequence"``). Saved in ``meta["input"]``."""
        return self.meta.get("input")

    @input_kind.setter
    def input_kind(self, kind):
        if kind not in (None, "tabular", "sequence"):
            raise ValueError(f"input_kind must be 'tabular', 'sequence' or None, got {kind!r}")
        self.meta.pop("input", None) if kind is None else self.meta.__setitem__("input", kind)

    @property
    def feature_names(self):
        """Names of the input features, in the order the model takes them
        (``meta["feature_names"]``: a CSV header's, or a DataFrame's columns
        given to :meth:`fit`), or ``None``. A DataFrame given to ``predict``
        has its columns put in this order by name."""
        names = self.meta.get("feature_names")
        return None if names is None else list(names)

    @feature_names.setter
    def feature_names(self, names):
        if names is None:
            self.meta.pop("feature_names", None)
            return
        names = [str(n) for n in names]
        if len(names) != self.input_size:
            raise ValueError(f"feature_names must list input_size = {self.input_size} names, "
                             f"got {len(names)}")
        if len(set(names)) != len(names):
            raise ValueError("feature_names must be unique")
        self.meta["feature_names"] = names

    def _from_frame(self, x, fitting):
        """A pandas DataFrame (anything with ``columns`` and ``to_numpy``) as
        an array: at :meth:`fit` its column names are kept; later its columns
        are put in the training order by name (missing or unexpected names are
        a ValueError naming them)."""
        if not (hasattr(x, "columns") and hasattr(x, "to_numpy")) or self.embed is not None:
            return x
        cols = [str(c) for c in x.columns]
        arr = x.to_numpy(dtype=np.float64)
        if fitting:
            if len(set(cols)) == len(cols) and len(cols) == self.input_size:
                self._fit_names = cols
            return arr
        want = self.feature_names
        if want is None or cols == want:
            return arr
        missing = [n for n in want if n not in cols]
        unexpected = [n for n in cols if n not in want]
        if missing or unexpected:
            raise ValueError(f"x's columns do not match the model's features: missing "
                             f"{missing}, unexpected {unexpected} (trained on {want})")
        return arr[:, [cols.index(n) for n in want]]

    def _as_batch(self, x, lengths, sequence=None, fitting=False):
        """Turn ``x`` into a batch, by the one rule of :data:`INPUT_RULE`.
        Returns ``(x, lengths, unbatched)``; for a model of features ``x`` is
        ``[B, T, input_size]``."""
        if sequence is not None:
            sequence = _validate.boolean("sequence", sequence)
        x = self._from_frame(x, fitting)
        if isinstance(x, (list, tuple)) and len(x) and all(np.ndim(s) >= 1 for s in x):
            ls = {len(s) for s in x}
            if len(ls) > 1:                       # ragged: pad, lengths from the sequences
                if lengths is not None:
                    raise ValueError("lengths cannot be given with a list of sequences of "
                                     "different lengths (they are taken from the list)")
                from ..data import pad_sequences
                if self.embed is not None:
                    return (*pad_sequences(x), False)
                seqs = [np.asarray(s, dtype=np.float64) for s in x]
                seqs = [s[:, None] if s.ndim == 1 and self.input_size == 1 else s for s in seqs]
                return (*pad_sequences(seqs, dtype=np.float64), False)
        x = np.asarray(x)
        one = False
        F = self.input_size
        tabular = self.input_kind == "tabular"
        if self.embed is not None:
            one = x.ndim == 1
            if one:
                x = x[None]
        elif x.ndim == 1:
            if len(x) == F and (F > 1 or sequence is False):
                x, one = x[None, None, :], True           # one row: one step of F features
            elif F == 1 and (sequence or (sequence is None and not tabular)):
                x, one = x[None, :, None], True           # one univariate sequence
            else:
                raise ValueError(self._ambiguous(x.shape) if F == 1 else
                                 f"x of shape {x.shape} must be one row of input_size = {F} "
                                 f"features, or a batch [B, T, {F}]")
        elif x.ndim == 2:
            n, m = x.shape
            if sequence is None:
                if tabular:
                    sequence = False
                elif m == F:                  # one sequence [T, F], or n rows of F features
                    raise ValueError(self._ambiguous(x.shape))
                elif F == 1:
                    sequence = False          # n univariate sequences of m steps: [B, T]
                else:
                    raise ValueError(self._bad_width(x.shape))
            if sequence:
                if m != F:
                    raise ValueError(self._bad_width(x.shape))
                x, one = x[None], True                    # one sequence [T, F]
            elif m == F:
                x = x[:, None, :]                         # n rows of one step each
            elif F == 1:
                x = x[:, :, None]                         # n univariate sequences [B, T]
            else:
                raise ValueError(self._bad_width(x.shape))
        elif x.ndim == 3:
            if x.shape[2] != F:
                raise ValueError(f"x must be [B, T, {F}] (batch, steps, input_size {F}), "
                                 f"got shape {x.shape}")
        else:
            raise ValueError(f"x must be [B, T, {F}], [n, {F}] or [{F}], got shape {x.shape}")
        if one and lengths is not None:
            lengths = np.reshape(np.asarray(lengths), (1,))
        return x, lengths, one

    def _ambiguous(self, shape):
        F = self.input_size
        n = shape[0]
        what = ("was trained on sequences" if self.input_kind == "sequence" else
                "does not know whether it takes rows or sequences (not trained by fit)")
        if len(shape) == 1:
            return (f"x of shape {shape} is ambiguous: this model of 1 feature {what}; "
                    f"pass X[None, :, None] (one sequence of {n} steps) or X[:, None, None] "
                    f"({n} rows), or say sequence=True (one sequence) / sequence=False")
        return (f"x of shape {shape} is ambiguous: this model (input_size {F}) {what}. "
                f"Reshape it: X[None] is one sequence of {n} steps, X[:, None, :] is {n} rows "
                f"of one step of {shape[1]} features each (tabular data), X[:, :, None] is {n} "
                f"sequences of {shape[1]} steps of one feature (needs input_size 1); or say "
                "sequence=True (one sequence) / sequence=False (one sample per row)")

    def _bad_width(self, shape):
        F = self.input_size
        return (f"x of shape {shape} does not fit this model (input_size {F}): give rows "
                f"[n, {F}], one sequence [T, {F}] (sequence=True) or a batch [B, T, {F}]"
                + (" (as it was trained on rows of one step)" if self.input_kind == "tabular"
                   else ""))

    def _note_input(self, x):
        """At :meth:`fit`: remember whether ``x`` (``[B, T, F]``) held rows of
        one step (``"tabular"``) or sequences, and a DataFrame's column names."""
        if self.embed is None:
            self.input_kind = "tabular" if np.shape(x)[1] == 1 else "sequence"
        names = getattr(self, "_fit_names", None)
        self._fit_names = None
        if names is not None:
            self.feature_names = names

    def _preprocess(self, x, lengths):
        """Apply the model's input scaler (if any) to raw batch-major ``x``;
        padded steps (after ``lengths``) stay zero."""
        sc = self.scaler if self.embed is None else None
        if sc is None:
            return x
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            x = x[:, :, None]
        z = sc.transform(x)
        if lengths is not None and z.ndim == 3:
            lengths = _validate.lengths(lengths, z.shape[1], z.shape[0])
            z[np.arange(z.shape[1])[None, :] >= lengths[:, None]] = 0
        return z.astype(self.dtype)

    def _infer(self, x, lengths):
        """Forward in eval mode (the inference kernels) on prepared input."""
        was = self.training
        self.eval()
        try:
            return self.forward(x, lengths)
        finally:
            self.train(was)

    def _encode(self, x, lengths):
        if self.device == "cuda":
            return self._encode_device(x, lengths)
        x = np.asarray(x)
        T_in = x.shape[1] if x.ndim >= 2 else None
        if lengths is not None:
            # integers in [1, T] only: floats are not truncated, bools not taken as 1
            lengths = (_validate.lengths(lengths, x.shape[1], x.shape[0]) if x.ndim >= 2
                       else np.asarray(lengths))
            if self._trim and x.ndim >= 2 and lengths.size and 1 <= lengths.max() < x.shape[1]:
                # run only to the batch's longest sequence: the steps after it
                # change nothing (outputs zero, states untouched, no gradient)
                x = x[:, :int(lengths.max())]
        if self.embed is not None:
            if x.ndim != 2:
                raise ValueError(f"x must be token ids [B, T], got shape {x.shape}")
            e = self.embed(x.T)                                   # [T, B, E]
        else:
            if x.ndim == 2:
                x = x[:, :, None]
            if x.ndim != 3:
                raise ValueError(f"x must be [B, T, F], got shape {x.shape}")
            e = np.ascontiguousarray(x.transpose(1, 0, 2), dtype=self.rnn.dtype)  # [T, B, F]
        return self._encode_rest(e, lengths, T_in,
                                 lambda h_n, D: np.concatenate(list(h_n[-D:]), axis=1))

    def _encode_rest(self, e, lengths, T_in, pool_last):
        """:meth:`_encode` from the recurrent layers on, host or device:
        ``e [T, B, F]``; ``pool_last(h_n, D)`` -> the top ``D`` rows of
        ``h_n`` side by side ``[B, D*H]``."""
        T, B = e.shape[:2]
        y, state = self.rnn(e, None, lengths)                     # [T, B, D*H]
        h_n = state[0] if isinstance(state, tuple) else state      # [L*D, B, H]
        if self.pooling == "attention":
            pooled = self.attn(y, lengths)                         # [B, D*H]
        else:
            pooled = pool_last(h_n, self.rnn.num_directions)       # [B, D*H]
        self._shape = (T, B, y.shape[2], tuple(h_n.shape))
        self._T_in = T_in                                          # x's length before trimming
        return self.head(self.drop(pooled))

    def _encode_device(self, x, lengths):
        """:meth:`_encode` for a model on the GPU: a host batch is cut to its
        longest sequence and copied over once (a device batch is taken as it is)."""
        k = _device.kernels()
        on_dev = _device.on_device(x)
        if not on_dev:
            x = np.asarray(x)
        shape = tuple(x.shape)
        T_in = shape[1] if len(shape) >= 2 else None
        if lengths is not None:
            lengths = _device.to_host(lengths)
            lengths = (_validate.lengths(lengths, shape[1], shape[0]) if len(shape) >= 2
                       else np.asarray(lengths))
            if self._trim and len(shape) >= 2 and lengths.size and 1 <= lengths.max() < shape[1]:
                x = x[:, :int(lengths.max())]
                shape = tuple(x.shape)
        if self.embed is not None:
            if len(shape) != 2:
                raise ValueError(f"x must be token ids [B, T], got shape {shape}")
            e = self.embed(k.swap01(x) if on_dev else x.T)            # [T, B, E]
        else:
            if len(shape) == 2:
                x = x[:, :, None] if not on_dev else k.contiguous(x).reshape(shape + (1,))
                shape = shape + (1,)
            if len(shape) != 3:
                raise ValueError(f"x must be [B, T, F], got shape {shape}")
            if on_dev:
                if np.dtype(x.dtype) != self.rnn.dtype:
                    raise TypeError(f"x must have dtype {self.rnn.dtype} like the model, got "
                                    f"{np.dtype(x.dtype)}")
                e = k.swap01(x)                                          # [T, B, F]
            else:
                e = k.to_device(np.ascontiguousarray(x.transpose(1, 0, 2), dtype=self.rnn.dtype))
        return self._encode_rest(e, lengths, T_in, k.pool_last)

    def _backward_encode_device(self, dout, retain_graph):
        k = _device.kernels()
        dpooled = self.drop.backward(self.head.backward(dout))     # [B, D*H]
        T, B, W, sshape = self._shape
        if self.pooling == "attention":
            dy, dstate = self.attn.backward(dpooled), None
        else:
            dy = k.zeros((T, B, W), self.rnn.dtype)
            dh = k.unpool_last(dpooled, sshape, self.rnn.num_directions)
            dstate = (dh, None) if self.rnn.cell.has_cell else dh
        dx, _ = self.rnn.backward(dy, dstate, retain_graph=retain_graph)
        if self.embed is not None:
            self.embed.backward(dx)
            return None
        T_in = getattr(self, "_T_in", T)
        return k.swap01(dx, T_in)                                  # [B, T_in, F], zero-padded

    def _backward_encode(self, dout, retain_graph=False):
        if self.device == "cuda":
            return self._backward_encode_device(dout, retain_graph)
        dpooled = self.drop.backward(self.head.backward(dout))     # [B, D*H]
        T, B, W, sshape = self._shape
        dt = self.rnn.dtype
        if self.pooling == "attention":
            dy = self.attn.backward(dpooled).astype(dt, copy=False)
            dstate = None
        else:
            dy = np.zeros((T, B, W), dt)
            dh = np.zeros(sshape, dt)
            D, H = self.rnn.num_directions, self.rnn.hidden_size
            for d in range(D):
                dh[sshape[0] - D + d] = dpooled[:, d * H:(d + 1) * H]
            dstate = (dh, None) if self.rnn.cell.has_cell else dh
        dx, _ = self.rnn.backward(dy, dstate, retain_graph=retain_graph)
        if self.embed is not None:
            self.embed.backward(dx)
            return None
        dx = dx.transpose(1, 0, 2)                                 # [B, T, F]
        T_in = getattr(self, "_T_in", T)
        if T_in is not None and T_in > T:                          # steps trimmed in _encode
            dx = np.concatenate([dx, np.zeros((B, T_in - T, dx.shape[2]), dx.dtype)], axis=1)
        return dx

    @staticmethod
    def _unpack(batch):
        x, y = batch[0], batch[1]
        lengths = batch[2] if len(batch) > 2 else None
        return x, y, lengths


class SequenceClassifier(_SequenceToVector):
    """Sequence classification: recurrent stack, pooling (``"last"`` valid
    step or ``"attention"``), linear head to ``num_classes`` logits.

    The attention LSTM in one line:
    ``SequenceClassifier(input_size=F, num_classes=C, cell="lstm", pooling="attention")``.
    ``forward(x [B, T, F] | ids [B, T], lengths=None) -> logits [B, C]``.
    :meth:`fit` sets :attr:`classes` (any labels) and :attr:`scaler`, so that
    :meth:`predict` takes raw features and returns the original labels.
    ``fit``, ``predict``, ``predict_proba`` and ``score`` read arrays by one
    rule (:data:`INPUT_RULE`): a model trained on tabular rows takes ``[n, F]``
    as ``n`` rows; any other refuses an ambiguous 2-D array unless
    ``sequence=True/False`` says how to read it.

    Parameters
    ----------
    num_classes : int
        ``C``, the number of classes (logits per sequence).
    input_size : int, optional
        ``F``, features per time step; required unless ``vocab_size`` is given.
    hidden_size : int, default 64
        Hidden units per recurrent layer and direction.
    num_layers : int, default 1
        Stacked recurrent layers.
    cell : str, default "lstm"
        The recurrent cell: ``"lstm"``, ``"gru"``, ``"gru_reset_before"``,
        ``"rnn_tanh"`` (or ``"rnn"``), ``"rnn_relu"``, ``"peephole"``
        (``"peephole_diagonal"``) or ``"peephole_full"`` (see :data:`CELL_TYPES`).
    pooling : {"last", "attention"}, default "last"
        How a sequence becomes one vector: the top layer's state at the last
        valid step (both directions), or additive attention over the valid
        steps (:class:`fastrnn.blocks.AttentionPool`).
    bidirectional : bool, default False
        Bidirectional recurrent layers.
    dropout : float in [0, 1), default 0.0
        Dropout between recurrent layers and before the head (training only).
    attn_size : int, optional
        Width ``A`` of the attention's hidden layer (default: the pooled width
        ``D*H``); only with ``pooling="attention"``.
    vocab_size : int, optional
        Inputs are token ids ``[B, T]`` embedded first (then ``embed_dim`` is
        required and ``input_size`` unused).
    embed_dim : int, optional
        Width of the token embedding, with ``vocab_size``.
    backend : {"auto", "numpy", "cpu", "cuda"}, default "auto"
        Where the recurrent layers run (see :class:`fastrnn.LSTM`).
    dtype : {"float32", "float64"}, default "float32"
        Parameter dtype (inputs are converted to it).
    seed : int or None, default None
        Seeds the initial weights and the dropout masks.
    compute_dtype : {None, "bfloat16"}, default None
        ``"bfloat16"``: the recurrent layers' matrix products take bfloat16
        operands, summed in float32 (float32 models on the CPU; see
        :attr:`fastrnn.LSTM.compute_dtype`). Parameters, gradients and the
        optimizer state stay float32.

    Examples
    --------
    >>> import numpy as np
    >>> from fastrnn import SequenceClassifier
    >>> X = np.random.default_rng(0).standard_normal((40, 6, 3))   # (B, T, F)
    >>> y = np.where(X[:, 0, 0] > 0, "up", "down")
    >>> model = SequenceClassifier(2, input_size=3, hidden_size=8, seed=0)
    >>> model = model.fit(X, y, epochs=2)
    >>> sorted(model.classes), model.predict(X[:2]).shape
    (['down', 'up'], (2,))
    """

    loss_unit = "nats per sequence"     # cross-entropy (history files say so)

    def __init__(self, num_classes: int, input_size: int | None = None, hidden_size: int = 64,
                 num_layers: int = 1, cell: str = "lstm", pooling: str = "last",
                 bidirectional: bool = False, dropout: float = 0.0,
                 attn_size: int | None = None, vocab_size: int | None = None,
                 embed_dim: int | None = None, backend: str = "auto",
                 dtype: str = "float32", seed: int | None = None,
                 compute_dtype: str | None = None) -> None:
        _validate.model_args(dict(num_classes=num_classes, hidden_size=hidden_size,
                                  num_layers=num_layers),
                             dict(input_size=input_size, attn_size=attn_size, vocab_size=vocab_size,
                                  embed_dim=embed_dim),
                             dropout=dropout, bidirectional=bidirectional, seed_=seed, dtype=dtype)
        compute_dtype = _compute_dtype(compute_dtype, dtype, backend)
        super().__init__(dict(num_classes=int(num_classes), input_size=input_size,
                              hidden_size=int(hidden_size), num_layers=int(num_layers),
                              cell=cell, pooling=pooling, bidirectional=bool(bidirectional),
                              dropout=float(dropout), attn_size=attn_size,
                              vocab_size=vocab_size, embed_dim=embed_dim, backend=backend,
                              dtype=_dtype_name(dtype), seed=seed, compute_dtype=compute_dtype))
        self.num_classes = int(num_classes)
        self._build(input_size, num_classes, hidden_size, num_layers, cell, pooling,
                    bidirectional, dropout, attn_size, vocab_size, embed_dim, backend,
                    dtype, as_rng(seed), compute_dtype)

    def forward(self, x, lengths=None):
        """Logits ``[B, C]`` of prepared input (no scaler, no label mapping:
        :meth:`predict` does those).

        Parameters
        ----------
        x : array ``[B, T, F]`` (``[B, T]`` when ``F = 1``), or token ids ``[B, T]``
            Batch-major; a batch, always (use :meth:`predict` for the other
            shapes of :data:`INPUT_RULE`).
        lengths : int array ``[B]``, optional
            Valid steps of each padded sequence.

        In training mode the pass is kept for :meth:`backward`.
        """
        return self._encode(x, lengths)

    __call__ = forward

    def backward(self, dlogits, retain_graph=False):
        """Back-propagate ``dlogits [B, C]`` of the last forward; returns dL/dx
        (``None`` for token ids). A second call needs ``retain_graph=True``
        in the first (``batch_loss`` keeps the graph for one more call)."""
        return self._backward_encode(dlogits, retain_graph)

    # ---------------------------------------------------------------- labels
    @property
    def classes(self):
        """The original labels, ``classes[k]`` for class index ``k`` (saved in
        ``meta["classes"]``), or ``None``: :meth:`predict` then returns class
        indices. Strings, integers or floats; :meth:`fit` sets them."""
        c = self.meta.get("classes")
        return None if c is None else list(c)

    @classes.setter
    def classes(self, labels):
        if labels is None:
            self.meta.pop("classes", None)
            return
        labels = [_plain(v) for v in labels]
        if len(labels) != self.num_classes:
            raise ValueError(f"classes must list num_classes = {self.num_classes} labels, "
                             f"got {len(labels)}")
        if len(set(labels)) != len(labels):
            raise ValueError("classes must be unique")
        self.meta["classes"] = labels

    def encode_labels(self, y):
        """Class indices ``[B]`` of original labels ``y`` (see :attr:`classes`);
        an unknown label is a ValueError naming it."""
        c = self.classes
        if c is None:
            return _labels_or_hint(y, self.num_classes)
        index = {v: i for i, v in enumerate(c)}
        out = np.empty(np.shape(y)[0] if np.ndim(y) else 1, dtype=np.int64)
        for k, v in enumerate(np.atleast_1d(np.asarray(y, dtype=object))):
            try:
                out[k] = index[_plain(v)]
            except (KeyError, TypeError):
                raise ValueError(f"label {v!r} is not one of the model's classes "
                                 f"{_short(c)}") from None
        return out

    def _targets(self, y):
        """Labels of a training batch: class indices, or original labels
        (strings...) mapped through :attr:`classes`."""
        kind = np.asarray(y).dtype.kind
        if self.classes is not None and kind not in "iufb":
            return self.encode_labels(y)
        return _labels_or_hint(y, self.num_classes)

    def batch_loss(self, batch, train=True):
        """``batch = (x, labels [B]) or (x, labels, lengths)``; labels are class
        indices, or original labels when :attr:`classes` is set."""
        x, y, lengths = self._unpack(batch)
        y = _validate.class_labels(self._targets(y), "y (class labels)", self.num_classes, len(x))
        logits = self.forward(x, lengths)
        loss, d = softmax_cross_entropy(logits, np.asarray(y), grad=train,
                                        out=logits if train else None)
        if train:
            self.backward(d, retain_graph=True)      # a caller may ask for dL/dx after
            self._scored = None
        else:
            self._scored = (batch, _device.to_host(logits).argmax(axis=1))   # for batch_metrics
        return loss, len(y)

    def batch_metrics(self, batch):
        """Accuracy on a batch (for the Trainer); reuses the predictions of a
        ``batch_loss(batch, train=False)`` call on the same batch object
        instead of running the network again."""
        x, y, lengths = self._unpack(batch)
        scored = getattr(self, "_scored", None)
        if scored is not None and scored[0] is batch and not self.training:
            pred = scored[1]
        else:
            pred = _device.to_host(self._infer(x, lengths)).argmax(axis=1)   # prepared input
        self._scored = None
        return {"accuracy": float(np.mean(pred == self._targets(y)))}

    @_with_input_rule
    def predict_proba(self, x, lengths=None, *, sequence=None):
        """Class probabilities ``[B, C]`` (``[C]`` for one unbatched sequence).

        Parameters
        ----------
        x : array_like
            Raw features (the model's :attr:`scaler` is applied), or token ids
            ``[B, T]`` (``[T]``: one sequence) for a model with an embedding.
            The rule for arrays of features (:data:`INPUT_RULE`):

            {INPUT_RULE}

        lengths : array_like of int, optional
            ``[B]`` valid steps of each padded sequence.
        sequence : bool, optional
            How to read a 2-D ``x``: ``True`` one sequence ``[T, F]``,
            ``False`` one sample per row; ``None`` (default) by the rule.

        Returns
        -------
        ndarray of float64
            Column ``k`` is the probability of ``classes[k]``.
        """
        x, lengths, one = self._as_batch(x, lengths, sequence)
        z = _device.to_host(self._infer(self._preprocess(x, lengths), lengths)).astype(np.float64)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        p = z / z.sum(axis=1, keepdims=True)
        return p[0] if one else p

    def predict(self, x, lengths=None, *, sequence=None):
        """Predicted labels ``[B]`` (one label for an unbatched sequence): the
        original labels of :attr:`classes` when set, else class indices.
        ``x``, ``lengths`` and ``sequence`` as in :meth:`predict_proba`: a
        model trained on rows takes ``[n, F]`` as ``n`` rows (``n`` labels);
        any other model refuses an ambiguous 2-D array unless ``sequence=``
        says how to read it (see :data:`INPUT_RULE`).

        Examples
        --------
        >>> clf.fit(X, ["cat", "dog", ...])        # doctest: +SKIP
        >>> clf.predict(X[:2])                      # doctest: +SKIP
        array(['cat', 'dog'], dtype='<U3')
        """
        idx = self.predict_proba(x, lengths, sequence=sequence).argmax(axis=-1)
        c = self.classes
        return idx if c is None else np.asarray(c)[idx]

    def stream(self, batch_size: int = 1):
        """A :class:`fastrnn.stream.ModelStream`: ``s.step(x_t) ->
        probabilities`` ``(B, C)`` (``(C,)`` for one step ``(I,)``) of the
        sequence fed so far, as :meth:`predict_proba` gives for it, the state
        kept between calls (raw features: the :attr:`scaler` is applied;
        token ids for a model with an embedding). Last-step pooling only:
        attention pools over every step, which a stream has not seen yet.

        The weights and scaler are a snapshot: call ``s.refresh()`` after
        training or loading. The returned array is a buffer the next step
        overwrites."""
        if self.pooling != "last":
            raise ValueError(f"a classifier with pooling={self.pooling!r} cannot stream: "
                             "attention weighs every step of the sequence, which a stream "
                             "has not seen yet; use pooling='last'")
        from ..stream import ModelStream
        return ModelStream(self, "classifier", batch_size)

    def score(self, x, y, lengths=None, *, sequence=None):
        """Accuracy of :meth:`predict` against the labels ``y`` (original
        labels when :attr:`classes` is set); ``x``, ``lengths`` and
        ``sequence`` as in :meth:`predict_proba` (:data:`INPUT_RULE`)."""
        pred = np.atleast_1d(self.predict(x, lengths, sequence=sequence))
        y = np.atleast_1d(np.asarray(y))
        if len(y) != len(pred):
            raise ValueError(f"y has {len(y)} labels for {len(pred)} sequences")
        return float(np.mean([_plain(a) == _plain(b) for a, b in zip(pred, y)]))

    def fit(self, x, y, lengths=None, *, epochs=10, batch_size=32, lr=3e-3, optimizer="adam",
            val_fraction=0.1, standardize=True, clip_norm=1.0, seed=0, progress=False,
            sequence=None, **trainer_kwargs):
        """Train on raw data with the model's own preprocessing, keeping it.

        Sets :attr:`classes` from ``y`` (sorted; any labels: strings,
        integers...), fits :attr:`scaler` on the training split's valid steps
        (``standardize``), then trains with :class:`fastrnn.train.Trainer`
        (``val_fraction`` of the rows held out for validation). Afterwards
        :meth:`predict` takes raw inputs and returns the original labels, and
        :meth:`save` keeps both.

        Parameters
        ----------
        x : array_like
            ``[B, T, F]`` sequences, a list of sequences ``[T_i, F]``,
            ``[B, T]`` (``F = 1``), or tabular rows ``[n, F]`` (a DataFrame
            too: its column names are kept in :attr:`feature_names`). The
            model records which it was (:attr:`input_kind`: ``"tabular"``
            when every sample is one step), and later calls read 2-D arrays
            by that (:data:`INPUT_RULE`).
        y : array_like
            ``[B]`` labels.
        lengths : array_like of int, optional
            ``[B]`` valid steps when ``x`` is padded.
        epochs, batch_size, lr, optimizer, clip_norm, seed, progress
            As for :class:`fastrnn.train.Trainer` and
            :func:`fastrnn.optim.get_optimizer`.

        Returns
        -------
        self
            With ``history`` (the Trainer's history) and ``trainer``.
        """
        from ..data import ArrayBatches, Standardizer, train_val_split
        from ..optim import get_optimizer
        from ..train import Trainer
        x, lengths, one = self._as_batch(x, lengths, False if sequence is None else sequence,
                                         fitting=True)
        if one:
            raise ValueError("fit needs a batch of sequences or rows, got one unbatched "
                             "sequence: give [B, T, F] sequences or [n, F] rows")
        y = np.asarray(y)
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} sequences but y has {len(y)} labels")
        self._note_input(x)
        if self.classes is None:
            uniq = np.unique(y).tolist()
            if len(uniq) == self.num_classes:
                self.classes = uniq
            elif (y.dtype.kind in "iu" and len(uniq) < self.num_classes and min(uniq) >= 0
                  and max(uniq) < self.num_classes):
                self.classes = list(range(self.num_classes))
            else:
                raise ValueError(f"y has {len(uniq)} distinct labels but the model has "
                                 f"num_classes = {self.num_classes}")
        t = self.encode_labels(y)
        tr, va = train_val_split(len(t), val_fraction, rng=seed)
        if self.embed is None:
            x = np.asarray(x, dtype=np.float64)
            if x.ndim == 2:
                x = x[:, :, None]
            if standardize:
                steps = x[tr] if lengths is None else np.concatenate(
                    [x[i, :lengths[i]] for i in tr])
                self.scaler = Standardizer().fit(steps.reshape(-1, x.shape[-1]))
            x = self._preprocess(x, lengths) if standardize else x.astype(self.dtype)
        ln = (lambda idx: None) if lengths is None else (lambda idx: np.asarray(lengths)[idx])
        train = ArrayBatches(x[tr], t[tr], lengths=ln(tr), batch_size=batch_size)
        val = (ArrayBatches(x[va], t[va], lengths=ln(va), batch_size=256, shuffle=False)
               if len(va) else None)
        self.trainer = Trainer(self, get_optimizer(optimizer, self, lr=lr), train, val,
                               clip_norm=clip_norm or None, seed=seed, progress=progress,
                               unit="seq", **trainer_kwargs)
        self.history = self.trainer.fit(epochs)
        return self


class SequenceRegressor(_SequenceToVector):
    """Forecast ``horizon`` steps of ``output_size`` values from a window.

    ``forward(x [B, T, F], lengths=None) -> [B, horizon, output_size]``,
    trained with mean squared error. ``forecast`` rolls the one-step model
    forward on its own predictions when ``output_size == input_size``.
    :meth:`fit` sets :attr:`scaler` and :attr:`target_scaler` (and
    :attr:`difference` for a model of changes), so that :meth:`predict`
    takes and returns values in the data's own units. ``fit``, ``predict``
    and ``forecast`` read arrays by one rule (:data:`INPUT_RULE`): a model
    trained on tabular rows takes ``[n, F]`` as ``n`` rows; any other refuses
    an ambiguous 2-D array unless ``sequence=True/False`` says how to read it.

    Parameters
    ----------
    input_size : int
        ``F``, features per time step of the window.
    output_size : int, optional
        Values predicted per step (default ``input_size``).
    horizon : int, default 1
        Steps predicted after the window.
    hidden_size : int, default 64
        Hidden units per recurrent layer and direction.
    num_layers : int, default 1
        Stacked recurrent layers.
    cell : str, default "lstm"
        The recurrent cell: ``"lstm"``, ``"gru"``, ``"gru_reset_before"``,
        ``"rnn_tanh"`` (or ``"rnn"``), ``"rnn_relu"``, ``"peephole"``
        (``"peephole_diagonal"``) or ``"peephole_full"`` (see :data:`CELL_TYPES`).
    pooling : {"last", "attention"}, default "last"
        How a sequence becomes one vector: the top layer's state at the last
        valid step (both directions), or additive attention over the valid
        steps (:class:`fastrnn.blocks.AttentionPool`).
    bidirectional : bool, default False
        Bidirectional recurrent layers.
    dropout : float in [0, 1), default 0.0
        Dropout between recurrent layers and before the head (training only).
    attn_size : int, optional
        Width ``A`` of the attention's hidden layer (default: the pooled width
        ``D*H``); only with ``pooling="attention"``.
    backend : {"auto", "numpy", "cpu", "cuda"}, default "auto"
        Where the recurrent layers run (see :class:`fastrnn.LSTM`).
    dtype : {"float32", "float64"}, default "float32"
        Parameter dtype (inputs are converted to it).
    seed : int or None, default None
        Seeds the initial weights and the dropout masks.
    compute_dtype : {None, "bfloat16"}, default None
        ``"bfloat16"``: the recurrent layers' matrix products take bfloat16
        operands, summed in float32 (float32 models on the CPU; see
        :attr:`fastrnn.LSTM.compute_dtype`). Parameters, gradients and the
        optimizer state stay float32.

    Examples
    --------
    >>> import numpy as np
    >>> from fastrnn import SequenceRegressor
    >>> from fastrnn.data import sliding_windows
    >>> X, Y = sliding_windows(np.sin(np.arange(200) / 5), 12, 2)   # (N, 12), (N, 2)
    >>> model = SequenceRegressor(1, horizon=2, hidden_size=8, seed=0).fit(X, Y, epochs=2)
    >>> model.predict(X[:3]).shape                    # (B, horizon, output_size)
    (3, 2, 1)
    """

    # what the history files call the loss
    loss_unit = "mean squared error of the targets as the model sees them (standardised by fit)"

    def __init__(self, input_size: int, output_size: int | None = None, horizon: int = 1,
                 hidden_size: int = 64, num_layers: int = 1, cell: str = "lstm",
                 pooling: str = "last", bidirectional: bool = False, dropout: float = 0.0,
                 attn_size: int | None = None, backend: str = "auto", dtype: str = "float32",
                 seed: int | None = None, compute_dtype: str | None = None) -> None:
        _validate.model_args(dict(input_size=input_size, horizon=horizon, hidden_size=hidden_size,
                                  num_layers=num_layers),
                             dict(output_size=output_size, attn_size=attn_size),
                             dropout=dropout, bidirectional=bidirectional, seed_=seed, dtype=dtype)
        compute_dtype = _compute_dtype(compute_dtype, dtype, backend)
        output_size = int(output_size or input_size)
        super().__init__(dict(input_size=int(input_size), output_size=output_size,
                              horizon=int(horizon), hidden_size=int(hidden_size),
                              num_layers=int(num_layers), cell=cell, pooling=pooling,
                              bidirectional=bool(bidirectional), dropout=float(dropout),
                              attn_size=attn_size, backend=backend,
                              dtype=_dtype_name(dtype), seed=seed, compute_dtype=compute_dtype))
        self.output_size, self.horizon = output_size, int(horizon)
        self._build(input_size, output_size * self.horizon, hidden_size, num_layers, cell,
                    pooling, bidirectional, dropout, attn_size, None, None, backend,
                    dtype, as_rng(seed), compute_dtype)

    def forward(self, x, lengths=None):
        """Predictions ``[B, horizon, output_size]`` of prepared (standardised)
        input ``x [B, T, F]`` (``[B, T]`` when ``F = 1``), with optional
        ``lengths [B]``; no scaler or differencing (:meth:`predict` applies
        them). In training mode the pass is kept for :meth:`backward`."""
        out = self._encode(x, lengths)
        return out.reshape(int(out.shape[0]), self.horizon, self.output_size)

    __call__ = forward

    def backward(self, dpred, retain_graph=False):
        """Back-propagate ``dpred [B, horizon, output_size]``; returns dL/dx."""
        if not _device.on_device(dpred):
            dpred = np.asarray(dpred)
        B = int(dpred.shape[0])
        return self._backward_encode(dpred.reshape(B, int(np.prod(dpred.shape)) // max(B, 1)),
                                     retain_graph)

    def batch_loss(self, batch, train=True):
        """``batch = (x [B, T, F], y [B, horizon, output_size])`` (+ lengths);
        ``y`` of shape ``[B, output_size]`` is taken as horizon 1."""
        x, y, lengths = self._unpack(batch)
        pred = self.forward(x, lengths)
        if _device.on_device(y):
            y = _device.to_host(y)
        y = _validate.regression_targets(y, tuple(pred.shape)).astype(pred.dtype, copy=False)
        loss, d = mse(pred, y)
        if train:
            self.backward(d, retain_graph=True)      # a caller may ask for dL/dx after
        return loss, len(y)

    @property
    def target_scaler(self):
        """The :class:`fastrnn.data.Standardizer` whose ``inverse_transform``
        :meth:`predict` applies to the outputs (``meta["target_scaler"]``;
        ``None``: outputs as computed)."""
        d = self.meta.get("target_scaler")
        if d is None and "window" in self.meta and "scaler" in self.meta:
            d = self.meta["scaler"]          # forecasters saved before target_scaler existed
        if d is None:
            return None
        from ..data import Standardizer
        return Standardizer.from_dict(d)

    @target_scaler.setter
    def target_scaler(self, value):
        self.meta.pop("target_scaler", None) if value is None else self.meta.__setitem__(
            "target_scaler", _scaler_dict(value, self.output_size, "target_scaler"))

    @property
    def difference(self):
        """Lag of the differencing the model was trained on (``meta["difference"]``,
        0: none). With a lag ``k`` the network sees ``x[t] - x[t-k]``;
        :meth:`predict` differences raw windows and integrates the predicted
        changes back, so inputs and outputs stay in original units."""
        return int(self.meta.get("difference") or 0)

    @difference.setter
    def difference(self, lag):
        lag = _validate.nonneg_int("difference", lag)
        if lag and self.output_size != self.input_size:
            raise ValueError("difference needs output_size == input_size")
        self.meta.pop("difference", None) if not lag else self.meta.__setitem__("difference", lag)

    @_with_input_rule
    def predict(self, x, lengths=None, *, sequence=None):
        """Predict ``[B, horizon, output_size]`` (``[horizon, output_size]`` for
        one unbatched window) from raw windows or rows.

        Parameters
        ----------
        x : array_like
            Raw windows or rows. The model's :attr:`scaler`,
            :attr:`difference` and :attr:`target_scaler` are applied, so both
            inputs and predictions are in original units (a model trained on
            differences needs ``T > difference``). The rule for arrays
            (:data:`INPUT_RULE`):

            {INPUT_RULE}

        lengths : array_like of int, optional
            ``[B]`` valid steps (not with differencing).
        sequence : bool, optional
            How to read a 2-D ``x``: ``True`` one window ``[T, F]``, ``False``
            one sample per row; ``None`` (default) by the rule.
        """
        x, lengths, one = self._as_batch(x, lengths, sequence)
        lag = self.difference
        base = None
        if lag:
            if lengths is not None:
                raise ValueError("lengths are not supported by a differenced model")
            x = np.asarray(x, dtype=np.float64)
            if x.ndim == 2:
                x = x[:, :, None]
            if x.shape[1] <= lag:
                raise ValueError(f"windows need more than difference = {lag} steps, "
                                 f"got {x.shape[1]}")
            base = x[:, -lag:]                                    # [B, lag, F]
            x = x[:, lag:] - x[:, :-lag]
        out = _device.to_host(self._infer(self._preprocess(x, lengths), lengths))
        ts = self.target_scaler
        if ts is not None:
            out = ts.inverse_transform(out.astype(np.float64))
        if base is not None:
            hist = base
            for k in range(out.shape[1]):
                out[:, k] = out[:, k] + hist[:, -lag]
                hist = np.concatenate([hist, out[:, k:k + 1]], axis=1)
        return out[0] if one else out

    def stream(self, batch_size: int = 1):
        """A :class:`fastrnn.stream.ModelStream`: ``s.step(x_t) -> prediction``
        ``(B, horizon, output_size)`` (``(horizon, output_size)`` for one step
        ``(I,)``) of the sequence fed so far, in original units as
        :meth:`predict` gives it (input and target scalers folded into the
        prepared weights), the state kept between calls. Not for a
        differenced model (:attr:`difference`), whose inputs depend on earlier
        frames.

        The weights and scalers are a snapshot: call ``s.refresh()`` after
        training or loading. The returned array is a buffer the next step
        overwrites; it has the model's dtype (:meth:`predict` returns float64)."""
        if self.difference:
            raise ValueError("a differenced model (difference > 0) cannot stream: feed "
                             "windows to predict()")
        if self.pooling != "last":
            raise ValueError(f"a regressor with pooling={self.pooling!r} cannot stream: "
                             "attention weighs every step of the sequence, which a stream "
                             "has not seen yet; use pooling='last'")
        from ..stream import ModelStream
        return ModelStream(self, "regressor", batch_size)

    def forecast(self, x, steps, *, sequence=None):
        """Predict ``steps`` values after each window of ``x [B, T, F]`` (or one
        window ``[T]`` of a univariate model, or ``[T, F]`` with
        ``sequence=True``: a 2-D array is read by :data:`INPUT_RULE`, as in
        :meth:`predict`) by feeding predictions back (needs ``output_size ==
        input_size``); original units, as :meth:`predict`."""
        steps = _validate.positive_int("steps", steps)
        if self.output_size != self.input_size:
            raise ValueError("forecast() feeds outputs back: output_size must equal input_size")
        x, _, one = self._as_batch(x, None, sequence)
        transformed = self.scaler is not None or self.difference or self.target_scaler is not None
        x = np.asarray(x, dtype=np.float64 if transformed else self.rnn.dtype)
        if x.ndim == 2:
            x = x[:, :, None]
        outs = []
        while sum(o.shape[1] for o in outs) < steps:
            p = self.predict(x)                                 # [B, horizon, F]
            outs.append(p)
            x = np.concatenate([x, p.astype(x.dtype)], axis=1)[:, p.shape[1]:]
        out = np.concatenate(outs, axis=1)[:, :steps]
        return out[0] if one else out

    def fit(self, x, y, lengths=None, *, epochs=10, batch_size=32, lr=3e-3, optimizer="adam",
            val_fraction=0.1, standardize=True, clip_norm=1.0, seed=0, progress=False,
            sequence=None, **trainer_kwargs):
        """Train on raw windows ``x [B, T, input_size]`` (``[B, T]`` when
        ``input_size == 1``), or tabular rows ``[n, input_size]`` (a DataFrame
        too: its column names are kept in :attr:`feature_names`), and targets
        ``y [B, horizon, output_size]`` (or ``[B, output_size]``); the model
        records which kind of input it was (:attr:`input_kind`, used by
        :data:`INPUT_RULE` later), keeping the
        preprocessing: with ``standardize``, :attr:`scaler` and
        :attr:`target_scaler` are fitted on the training split and saved with
        the model, so :meth:`predict` takes and returns original units.
        Returns ``self`` (with ``history`` and ``trainer``); the other
        arguments as in :meth:`SequenceClassifier.fit`."""
        from ..data import ArrayBatches, Standardizer, train_val_split
        from ..optim import get_optimizer
        from ..train import Trainer
        x, lengths, one = self._as_batch(x, lengths, False if sequence is None else sequence,
                                         fitting=True)
        if one:
            raise ValueError("fit needs a batch of windows or rows, got one unbatched window")
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if y.size != len(x) * self.horizon * self.output_size:
            raise ValueError(f"y has shape {y.shape}: expected [B, horizon, output_size] = "
                             f"[{len(x)}, {self.horizon}, {self.output_size}] (or [B, "
                             f"output_size])")
        y = y.reshape(len(x), self.horizon, self.output_size)
        self._note_input(x)
        tr, va = train_val_split(len(x), val_fraction, rng=seed)
        if standardize:
            steps = x[tr] if lengths is None else np.concatenate([x[i, :lengths[i]] for i in tr])
            self.scaler = Standardizer().fit(steps.reshape(-1, x.shape[-1]))
            self.target_scaler = Standardizer().fit(y[tr].reshape(-1, self.output_size))
            x = self._preprocess(x, lengths)
            y = self.target_scaler.transform(y)
        x, y = x.astype(self.dtype), y.astype(self.dtype)
        ln = (lambda idx: None) if lengths is None else (lambda idx: np.asarray(lengths)[idx])
        train = ArrayBatches(x[tr], y[tr], lengths=ln(tr), batch_size=batch_size)
        val = (ArrayBatches(x[va], y[va], lengths=ln(va), batch_size=256, shuffle=False)
               if len(va) else None)
        self.trainer = Trainer(self, get_optimizer(optimizer, self, lr=lr), train, val,
                               clip_norm=clip_norm or None, seed=seed, progress=progress,
                               unit="win", **trainer_kwargs)
        self.history = self.trainer.fit(epochs)
        return self


def _plain(v):
    """A label as a plain JSON-able Python value (NumPy scalars unwrapped)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (str, int, float)) or v is None:
        return v
    raise TypeError(f"labels must be strings or numbers, got {v!r} ({type(v).__name__})")


def _short(seq, n=6):
    seq = list(seq)
    return repr(seq) if len(seq) <= n else repr(seq[:n])[:-1] + f", ... ({len(seq)} in all)]"


def _labels_or_hint(y, num_classes):
    arr = np.asarray(y)
    if arr.dtype.kind in "USO":
        raise TypeError(f"y (class labels) {_short(arr.ravel()[:3].tolist())}... are not class "
                        "indices: "
                        "set model.classes = sorted(set(y)) first (SequenceClassifier.fit "
                        "does it), or pass indices in [0, num_classes)")
    return arr


def _scaler_dict(value, size, name):
    d = value.to_dict() if hasattr(value, "to_dict") else dict(value)
    for k in ("mean", "std"):
        v = np.atleast_1d(np.asarray(d[k], dtype=np.float64))
        if v.ndim != 1 or len(v) not in (1, size) or not np.isfinite(v).all():
            raise ValueError(f"{name}.{k} must hold 1 or {size} finite values, got shape {v.shape}")
    return {"mean": np.atleast_1d(np.asarray(d["mean"], float)).tolist(),
            "std": np.atleast_1d(np.asarray(d["std"], float)).tolist()}


_MODELS = {c.__name__: c for c in (LanguageModel, SequenceClassifier, SequenceRegressor)}
