"""The language model: :class:`LanguageModel` (embedding, recurrent stack,
dropout, projection to the vocabulary), its truncated-BPTT training step
that carries the state across chunks, scoring, and generation (sampling,
token streams)."""
from __future__ import annotations

import numpy as np

from .. import _device, _validate
from ..blocks import Dropout, Embedding, Linear, as_rng, softmax_cross_entropy
from .base import _compute_dtype, _dtype_name, _register, _Model, _seed, make_recurrent


@_register
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
        ``"bfloat16"``: the matrix products of the recurrent layers and of
        the head take bfloat16 operands, summed in float32 (float32 models on
        the CPU; see :attr:`fastrnn.LSTM.compute_dtype` and
        :class:`fastrnn.blocks.Linear`). Parameters, gradients and the
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
        # the head's products follow the mode: at a character vocabulary a small
        # part of a training step's arithmetic, but a large part of the bf16
        # step's time if left in float32
        self.head = Linear(hidden_size, vocab_size, dtype=dt, rng=rng,
                           compute_dtype=compute_dtype)
        self._modules = {"embed": self.embed, "rnn": self.rnn, "head": self.head,
                         "drop": self.drop}
        self._carry = None
        if backend == "cuda":
            self.to("cuda")

    @property
    def compute_dtype(self):
        """The compute mode of the recurrent layers and the head (their matrix
        products): None or ``"bfloat16"``; the embedding (a lookup) has none.
        Settable; saved with the model."""
        return self.rnn.compute_dtype

    @compute_dtype.setter
    def compute_dtype(self, value):
        _Model.compute_dtype.fset(self, value)
        self.head.compute_dtype = self.rnn.compute_dtype

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

