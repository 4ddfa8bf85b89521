"""Model files and training checkpoints on disk: atomic writes, and reads that
turn every kind of broken file into one :class:`CheckpointError`.

The format is written here only: :func:`save_model` (a model file: a JSON
``__header__`` and ``param/<name>`` arrays) and :func:`save_trainer` (the
same plus the trainer's ``__trainer__`` JSON and its arrays: ``optim/``,
``es_best/``, ``last/``, ``carry/``); :func:`resume_trainer` reads it back.

The header's ``meta`` is the model's own JSON (vocabulary, classes,
scalers, ``feature_names``, ``input`` (``"tabular"`` or
``"sequence"``) and ``data``: the training file's name, size, SHA-256 and
held-out part); every key is optional, so files written before a key
existed load as they did.

Writing (:func:`atomic_savez`): the ``.npz`` goes to a temporary file in the
destination's folder, is flushed and fsynced, then renamed over the
destination with :func:`os.replace` (atomic on POSIX and Windows). A crash or
an exception at any point leaves the previous file untouched; on an exception
the temporary file is removed.

Reading (:func:`read_npz`, :func:`read_model`): a missing file is a
:class:`FileNotFoundError`; anything else wrong — an empty or truncated
file, flipped bytes (bad CRC), a ``.npy`` or random bytes, an entry that is
not valid JSON, a header of the wrong format, a config the model class
rejects, parameters of the wrong names or shapes — is a
:class:`CheckpointError` (a :class:`ValueError`) naming the file and what is
wrong. Every array is read (and CRC-checked) before anything is returned.

:func:`resume_trainer` checks a whole training checkpoint against a
:class:`fastrnn.train.Trainer` before it writes anything into the model,
optimizer, generators or early-stopping state: a failed resume leaves the
trainer exactly as it was.
"""
from __future__ import annotations

import json
import numbers
import os
import uuid

import numpy as np

__all__ = ["CheckpointError", "FORMAT", "MODELS", "register_model", "atomic_savez", "save_model",
           "save_trainer", "read_npz", "read_json_entry", "read_model", "check_state_dict",
           "resume_trainer"]

#: the ``format`` field of the JSON header of every fastrnn model file
FORMAT = "fastrnn-model/1"


#: the model classes a file may hold, by the name its header records
#: (``"SequenceClassifier"``...): the model modules of :mod:`fastrnn.models`
#: enter theirs with :func:`register_model` as they are imported, so this
#: module imports none of them
MODELS = {}


def register_model(cls):
    """Class decorator: enter a model class in :data:`MODELS` under its name."""
    MODELS[cls.__name__] = cls
    return cls


class CheckpointError(ValueError):
    """A file is not a valid fastrnn model file or training checkpoint (or holds
    another kind of model); the message names the file and what is wrong."""


# ---------------------------------------------------------------- writing
def npz_path(path):
    """``path`` as a string, with ``.npz`` appended when missing (as np.savez does)."""
    path = os.fspath(path)
    return path if path.endswith(".npz") else path + ".npz"


def _write_npz(f, arrays):
    """Write ``arrays`` as an ``.npz`` archive into the open binary file ``f``
    (the one place bytes are written; tests replace it to simulate a crash)."""
    np.savez(f, **arrays)


def _fsync_dir(folder):
    # make the rename itself durable; not possible everywhere (Windows): best effort
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_savez(path, arrays):
    """Write ``arrays`` (name -> array) to ``path`` (``.npz`` appended when
    missing) atomically; returns the path written."""
    path = npz_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path!r}: it is a directory")
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    # O_EXCL: never clobber anything; 0o666 & ~umask, the mode np.savez would give
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    return path


def _model_entries(model, params):
    """The entries every model file starts with: the JSON header (format,
    model class, config, meta) and the parameters (host arrays)."""
    header = {"format": FORMAT, "model": type(model).__name__,
              "config": getattr(model, "config", {}), "meta": getattr(model, "meta", {})}
    return {"__header__": np.array(json.dumps(header)),
            **{"param/" + k: v for k, v in params.items()}}


def save_model(path, model, params):
    """Write the model file of ``model`` with ``params`` (name -> host array)
    to ``path`` atomically; returns the path written."""
    return atomic_savez(path, _model_entries(model, params))


# the in-epoch state of a training checkpoint (Trainer.fit(steps=...))
_OPEN_KEYS = ("rng_start", "count", "items", "loss_sum", "loss_n", "time")


def save_trainer(trainer, path):
    """Write everything :func:`resume_trainer` needs to continue ``trainer``
    exactly (a model file too) to ``path`` atomically; returns the path."""
    from ._device import to_host
    model, opt = trainer.model, trainer.optimizer
    arrays = _model_entries(model, {k: to_host(v) for k, v in model.params.items()})
    ost = opt.state_dict()
    scalars = {}
    for name, st in ost.pop("state").items():
        for buf, v in st.items():
            if isinstance(v, np.ndarray):
                arrays[f"optim/{name}/{buf}"] = v
            else:
                scalars.setdefault(name, {})[buf] = v
    es = trainer.early_stopping
    if es is not None and es.best_params is not None:
        arrays.update({"es_best/" + k: v for k, v in es.best_params.items()})
    state = {
        "epoch": trainer.epoch, "global_step": trainer.global_step, "history": trainer.history,
        "rng": [g.bit_generator.state for g in trainer._generators()],
        "optimizer": ost, "optimizer_scalars": scalars,
        "early_stopping": None if es is None else es.state(),
    }
    # the trained parameters kept aside while the best ones are restored
    if trainer._last_params is not None:
        arrays.update({"last/" + k: v for k, v in trainer._last_params.items()})
    state["open_epoch"] = _open_epoch(trainer, arrays)
    header = arrays.pop("__header__")
    return atomic_savez(path, {"__header__": header,
                               "__trainer__": np.array(json.dumps(state)), **arrays})


def _open_epoch(trainer, arrays):
    """The JSON of the epoch ``fit(steps=...)`` left open (None if none),
    its carried state added to ``arrays`` as ``carry/<i>``."""
    from ._device import to_host
    ep = trainer._open
    if ep is None:
        return None
    out = {k: ep[k] for k in _OPEN_KEYS}
    carry = getattr(trainer.model, "carried_state", None)
    out["carry"] = None if carry is None else (len(carry) if isinstance(carry, tuple) else 0)
    if carry is not None:
        for i, a in enumerate(carry if isinstance(carry, tuple) else (carry,)):
            arrays[f"carry/{i}"] = to_host(a)
    return out


# ---------------------------------------------------------------- reading
def resolve(path):
    """The existing file ``path`` (or ``path + ".npz"``), else FileNotFoundError."""
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path += ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint: {path!r}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path!r} is a directory, not a fastrnn model file")
    return path


def read_npz(path, what="model file"):
    """Return ``(resolved path, {name: array})`` with every array read and
    CRC-checked; any broken file raises :class:`CheckpointError`."""
    path = resolve(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except OSError as exc:
        raise CheckpointError(f"{path!r} cannot be read: {exc}") from exc
    if not magic:
        raise CheckpointError(f"{path!r} is empty (0 bytes), not a fastrnn {what}")
    if magic.startswith(b"\x93NUMPY"):
        raise CheckpointError(f"{path!r} is a single .npy array, not a fastrnn {what} "
                              "(an .npz archive)")
    if not magic.startswith(b"PK"):
        raise CheckpointError(f"{path!r} is not a fastrnn {what}: not an .npz (zip) archive")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except MemoryError:
        raise
    except Exception as exc:   # BadZipFile (bad CRC, truncated), EOFError, zlib, ValueError...
        raise CheckpointError(f"{path!r} is corrupt or truncated, not a readable fastrnn "
                              f"{what} ({type(exc).__name__}: {exc})") from exc
    return path, arrays


def read_json_entry(path, arrays, key, label):
    """Parse the JSON string stored under ``key``; must be a JSON object."""
    a = arrays[key]
    if a.shape != () or a.dtype.kind not in "US":
        raise CheckpointError(f"{path!r} has a corrupt {label}: not a JSON string")
    try:
        d = json.loads(str(a))
    except ValueError as exc:
        raise CheckpointError(f"{path!r} has a corrupt {label}: invalid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path!r} has a corrupt {label}: not a JSON object")
    return d


def _header(path, arrays, models):
    if "__header__" not in arrays:
        raise CheckpointError(f"{path!r} is not a fastrnn model checkpoint (no header)")
    header = read_json_entry(path, arrays, "__header__", "header")
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a fastrnn model checkpoint "
                              f"(format {header.get('format')!r}, expected {FORMAT!r})")
    if header.get("model") not in models:
        raise CheckpointError(f"{path!r} is not a fastrnn model checkpoint: unknown model "
                              f"{header.get('model')!r} (expected one of {sorted(models)})")
    if not isinstance(header.get("config"), dict):
        raise CheckpointError(f"{path!r} has a corrupt header: 'config' is not a JSON object")
    if not isinstance(header.setdefault("meta", {}), dict):
        raise CheckpointError(f"{path!r} has a corrupt header: 'meta' is not a JSON object")
    return header


def read_model(path, models, what="model file"):
    """Return ``(path, header, {param name: array}, all arrays)`` of a model
    file or training checkpoint; ``models`` maps class names to classes."""
    path, arrays = read_npz(path, what)
    header = _header(path, arrays, models)
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    return path, header, params, arrays


def build_model(path, header, params, models, backend=None):
    """Construct the model a header describes and load ``params`` into it."""
    cls = models[header["model"]]
    config = dict(header["config"])
    if backend is not None:
        config["backend"] = backend
    elif config.get("backend") == "cuda":
        # saved on the GPU: load there when one is here, else on the host
        from .dispatch import BackendUnavailable, get_backend
        try:
            get_backend("cuda")
        except BackendUnavailable:
            config["backend"] = "auto"
    try:
        model = cls(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path!r} has an invalid {cls.__name__} config: {exc}") from exc
    try:
        model.load_state_dict(params)
    except CheckpointError as exc:
        raise CheckpointError(f"{path!r}: {exc}") from None
    model.meta = header.get("meta", {})
    return model


def check_state_dict(own, state, owner):
    """Check that ``state`` has exactly the names of ``own`` (name -> array)
    with the same shapes and floating-point values; returns the arrays."""
    if not hasattr(state, "keys"):
        raise CheckpointError(f"state must be a mapping of names to arrays, "
                              f"got {type(state).__name__}")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"parameters do not match this {owner}: "
                              f"missing {missing}, unexpected {unexpected}")
    out = {}
    for k in own:
        v = np.asarray(state[k])
        if v.shape != own[k].shape:
            raise CheckpointError(f"parameter {k!r} has shape {v.shape}, expected {own[k].shape}")
        if v.dtype.kind not in "fiu":
            raise CheckpointError(f"parameter {k!r} must hold numbers, got dtype {v.dtype}")
        out[k] = v
    return out


# --------------------------------------------------------------- resuming
def _read_open_epoch(path, arrays, st, own, owner):
    """``(open epoch, kept-aside trained parameters, carried state)`` of a
    training checkpoint (each None when absent), checked."""
    last = {k[5:]: v for k, v in arrays.items() if k.startswith("last/")} or None
    if last is not None:
        try:
            last = check_state_dict(own, last, owner)
        except CheckpointError as exc:
            raise CheckpointError(f"{path!r}: kept-aside trained parameters: {exc}") from None
    ep = st.get("open_epoch")
    if ep is None:
        return None, last, None
    if not isinstance(ep, dict) or any(k not in ep for k in _OPEN_KEYS + ("carry",)):
        raise CheckpointError(f"{path!r} has a corrupt open-epoch state")
    n = ep["carry"]
    carry = None
    if n is not None:
        parts = []
        for i in range(max(n, 1)):
            a = arrays.get(f"carry/{i}")
            if a is None or a.dtype.kind != "f" or a.ndim != 3:
                raise CheckpointError(f"{path!r} has a corrupt carried state (carry/{i})")
            parts.append(a)
        carry = tuple(parts) if n else parts[0]
    open_ep = {k: ep[k] for k in _OPEN_KEYS}
    open_ep["iter"] = None                    # rebuilt by fit(): replays the epoch's shuffle
    return open_ep, last, carry


def _need(path, d, key, kind, where="trainer state"):
    if key not in d:
        raise CheckpointError(f"{path!r} has a corrupt {where}: no {key!r}")
    v = d[key]
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
          "dict": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list),
          "dict_or_none": lambda v: v is None or isinstance(v, dict)}[kind](v)
    if not ok:
        raise CheckpointError(f"{path!r} has a corrupt {where}: {key!r} = {v!r} is not a valid "
                              + {"int": "count", "dict": "object", "list": "list",
                                 "dict_or_none": "object"}[kind])
    return v


def _check_optimizer(path, opt, ost, scalars, arrays, params):
    """Everything ``opt.load_state_dict`` will be given, checked; returns it."""
    name = type(opt).__name__
    if ost.get("type", name) != name:
        raise CheckpointError(f"{path!r} holds the state of a {ost.get('type')} optimizer, "
                              f"not of this trainer's {name}")
    for key in ("lr", "step_count"):
        if key not in ost:
            raise CheckpointError(f"{path!r} has a corrupt optimizer state: no {key!r}")
    hp = {h: ost[h] for h in opt._hparams if h in ost}
    try:    # the constructor checks every hyper-parameter (lr >= 0, betas in [0, 1)...)
        type(opt)({}, lr=ost["lr"], **hp)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path!r} has an invalid optimizer state: {exc}") from None
    if (isinstance(ost["step_count"], bool) or not isinstance(ost["step_count"], int)
            or ost["step_count"] < 0):
        raise CheckpointError(f"{path!r} has an invalid optimizer step_count {ost['step_count']!r}")
    state = {}
    for k, v in arrays.items():
        if k.startswith("optim/"):
            pname, buf = k[6:].rsplit("/", 1) if "/" in k[6:] else (k[6:], "")
            if pname not in params:
                raise CheckpointError(f"{path!r} has optimizer state for {pname!r}, which is "
                                      "not a parameter of this model")
            if v.shape != params[pname].shape or v.dtype.kind != "f":
                raise CheckpointError(f"{path!r}: optimizer buffer {buf!r} of {pname!r} has "
                                      f"shape {v.shape} ({v.dtype}), expected "
                                      f"{params[pname].shape} floats")
            state.setdefault(pname, {})[buf] = v
    if not isinstance(scalars, dict):
        raise CheckpointError(f"{path!r} has a corrupt trainer state: 'optimizer_scalars'")
    for pname, sc in scalars.items():
        if pname not in params or not isinstance(sc, dict) or not all(
                isinstance(x, numbers.Real) and not isinstance(x, bool) for x in sc.values()):
            raise CheckpointError(f"{path!r} has invalid optimizer scalars for {pname!r}")
        state.setdefault(pname, {}).update(sc)
    ost = dict(ost)
    ost["state"] = state
    return ost


def _check_generators(path, gens, states):
    if len(gens) != len(states):
        raise CheckpointError(f"{path!r} holds {len(states)} random-generator states, this "
                              f"trainer and model have {len(gens)}: not the same setup")
    for g, s in zip(gens, states):
        probe = type(g.bit_generator)()
        try:
            probe.state = s
        except Exception as exc:   # noqa: BLE001 - numpy raises TypeError/ValueError/KeyError
            raise CheckpointError(f"{path!r} has an invalid random-generator state "
                                  f"({type(exc).__name__}: {exc})") from None


def resume_trainer(trainer, path):
    """Restore a checkpoint written by :func:`save_trainer` into ``trainer``:
    check everything, then write (see the module docstring). An epoch left
    open by ``fit(steps=...)`` comes back open (with the language model's
    carried state), kept-aside trained parameters come back kept aside."""
    model, opt = trainer.model, trainer.optimizer
    path, header, params, arrays = read_model(path, MODELS, what="training checkpoint")
    if "__trainer__" not in arrays:
        raise CheckpointError(f"{path!r} is a model file, not a training checkpoint "
                              "(no trainer state): load it with fastrnn.load_model")
    if header["model"] != type(model).__name__:
        raise CheckpointError(f"{path!r} holds a {header['model']}, not a "
                              f"{type(model).__name__}")
    own_cfg = getattr(model, "config", None)
    if isinstance(own_cfg, dict):
        # same names and shapes are not enough (GRU reset_after True/False share them);
        # what may differ: where and in which compute mode it runs (the parameters
        # are float32 master weights either way), and the training-only dropout and seed
        cfg = header["config"]
        diff = sorted(k for k in set(own_cfg) | set(cfg)
                      if k not in ("backend", "seed", "dropout", "compute_dtype")
                      and own_cfg.get(k) != cfg.get(k))
        if diff:
            raise CheckpointError(
                f"{path!r} was saved from a {header['model']} with another configuration: "
                + ", ".join(f"{k}={cfg.get(k)!r} (this one: {own_cfg.get(k)!r})" for k in diff))
    st = read_json_entry(path, arrays, "__trainer__", "trainer state")
    epoch = _need(path, st, "epoch", "int")
    global_step = _need(path, st, "global_step", "int")
    history = _need(path, st, "history", "dict")
    rng_states = _need(path, st, "rng", "list")
    ost = _need(path, st, "optimizer", "dict")
    scalars = _need(path, st, "optimizer_scalars", "dict")
    es_state = _need(path, st, "early_stopping", "dict_or_none")
    # ---- check
    own = model.params
    try:
        new_params = check_state_dict(own, params, type(model).__name__)
    except CheckpointError as exc:
        raise CheckpointError(f"{path!r}: {exc}") from None
    ost = _check_optimizer(path, opt, ost, scalars, arrays, own)
    gens = trainer._generators()
    _check_generators(path, gens, rng_states)
    es = trainer.early_stopping
    best = None
    if es is not None and es_state is not None:
        for key in ("best", "best_epoch", "wait", "stopped"):
            if key not in es_state:
                raise CheckpointError(f"{path!r} has a corrupt early-stopping state: no {key!r}")
        best = {k[8:]: v for k, v in arrays.items() if k.startswith("es_best/")} or None
        if best is not None:
            try:
                check_state_dict(own, best, type(model).__name__)
            except CheckpointError as exc:
                raise CheckpointError(f"{path!r}: early-stopping best parameters: {exc}") from None
    open_ep, last, carry = _read_open_epoch(path, arrays, st, own, type(model).__name__)
    # ---- write (nothing above touched the trainer); roll back if anything still fails
    # the trainer's in-epoch state, where it has one (an epoch paused by fit(steps=...))
    extra = {a: getattr(trainer, a) for a in ("_open", "_last_params") if hasattr(trainer, a)}
    new_extra = {"_open": open_ep, "_last_params": last}
    saved = (model.state_dict(), opt.state_dict(), [g.bit_generator.state for g in gens],
             trainer.epoch, trainer.global_step, trainer.history,
             None if es is None else (es.state(), es.best_params))
    from ._device import assign
    try:
        for k, v in new_params.items():
            assign(own[k], v)
        opt.load_state_dict(ost)
        for g, s in zip(gens, rng_states):
            g.bit_generator.state = s
        trainer.epoch, trainer.global_step, trainer.history = epoch, global_step, history
        if es is not None and es_state is not None:
            es.load_state(es_state, best)
        for attr in extra:
            setattr(trainer, attr, new_extra[attr])
    except BaseException:
        for k, v in saved[0].items():
            assign(own[k], v)
        opt.load_state_dict(saved[1])
        for g, s in zip(gens, saved[2]):
            g.bit_generator.state = s
        trainer.epoch, trainer.global_step, trainer.history = saved[3:6]
        if es is not None:
            es.load_state(*saved[6])
        for attr, v in extra.items():
            setattr(trainer, attr, v)
        raise
    if carry is not None:
        model.carried_state = carry
    return trainer
