"""``fastrnn demo``: a character-level LSTM language model trained on the
text help of the Python it runs on, then scored, sampled and timed against
the NumPy reference."""
from __future__ import annotations

import math
import time

import numpy as np

from ..metrics import unigram_bits
from .train import _progress_ok


def default_corpus():
    """The demo corpus: the topic help texts that ship with CPython
    (``pydoc_data.topics``, about 0.45 MB of English prose and code)."""
    import pydoc_data.topics as topics
    return "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics))


def cmd_demo(args):
    from ..data import CharVocab, LMBatches
    from ..dispatch import resolve_backend
    from ..models import LanguageModel, make_recurrent
    from ..optim import Adam, CosineDecay
    from ..train import Trainer

    t_all = time.perf_counter()
    seconds = args.seconds if args.seconds is not None else (8.0 if args.quick else 100.0)
    hidden = 32 if args.quick else args.hidden
    text = default_corpus()
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    cut = int(len(ids) * 0.95)
    train_ids, test_ids = ids[:cut], ids[cut:]
    if args.quick:
        test_ids = test_ids[:5000]
    backend = resolve_backend(args.backend)
    print(f"corpus: pydoc_data.topics, {len(ids):,} characters, vocabulary {len(vocab)}; "
          f"held out: last {len(test_ids):,} characters")
    model = LanguageModel(len(vocab), embed_dim=32, hidden_size=hidden, cell="lstm",
                          backend=args.backend, seed=args.seed)
    model.meta["vocab"] = vocab.to_dict()
    print(f"model: char LSTM, hidden {hidden}, {model.num_params():,} parameters, "
          f"backend {backend!r}; training for {seconds:g} s"
          + (f" or {args.steps} steps" if args.steps else ""))
    # compile (or load from Numba's cache) the kernels before the clock starts
    t0 = time.perf_counter()
    warm = train_ids[:8].reshape(4, 2)
    model.batch_loss((warm, warm))
    model.zero_grad()
    model.evaluate(train_ids[:64], batch_size=2, bptt=16)
    print(f"kernels ready in {time.perf_counter() - t0:.1f} s (JIT compile or cache load)")
    opt = Adam(model, lr=args.lr)
    # the learning rate follows a cosine over the budget (time or steps), so the
    # model ends its run annealed whatever the machine's speed
    trainer = Trainer(model, opt, LMBatches(train_ids, args.batch_size, args.bptt),
                      schedule=CosineDecay(args.lr, 1.0, args.lr / 20), schedule_unit="budget",
                      clip_norm=1.0, seed=args.seed, progress=_progress_ok(args),
                      max_seconds=seconds, max_steps=args.steps, unit="char")
    t0 = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - t0
    chars = sum(h * t for h, t in zip(trainer.history["throughput"], trainer.history["time"]))
    bpc = model.evaluate(test_ids, batch_size=64, bptt=256) / math.log(2)
    base = unigram_bits(train_ids, test_ids, len(vocab))
    why = {"time": f"the {seconds:g} s budget ran out",
           "steps": f"--steps {args.steps} reached"}.get(trainer.stop_reason,
                                                          trainer.stop_reason or "done")
    print(f"trained {trainer.global_step} steps ({chars / 1e6:.2f} M characters) in "
          f"{train_s:.0f} s; stopped: {why}")
    print(f"held-out bits per character: LSTM {bpc:.3f}   unigram baseline {base:.3f}")
    rng = np.random.default_rng(args.seed)
    for prime, temp in (("The ", 0.5), ("def ", 0.8)):
        out = vocab.decode(model.sample(200 if not args.quick else 60, vocab.encode(prime),
                                        temperature=temp, rng=rng))
        print(f"\nsample (temperature {temp}, prime {prime!r}):\n{prime}{out}")
    print("\nthroughput, one training step (forward + backward) of the LSTM layer, "
          "T=64 B=32:")
    layers = {}
    for be in dict.fromkeys((backend, "numpy")):
        layers[be] = make_recurrent("lstm", 32, hidden, backend=be, seed=0)
        layers[be].load_state_dict(model.rnn.state_dict())
    from ..bench.throughput import layer_throughput
    rates = layer_throughput(layers, reps=1 if args.quick else 3)
    for be, r in rates.items():
        label = "NumPy reference" if be == "numpy" else f"compiled ({be})"
        print(f"  {label:<18} {r:12,.0f} char/s")
    if backend == "numpy":
        print("  (the compiled CPU backend is not available here: the demo ran the NumPy reference)")
    else:
        print(f"  speed-up {rates[backend] / rates['numpy']:.1f}x")
    if args.save:
        path = model.save(args.save)
        print(f"model saved to {path}")
    print(f"total time {time.perf_counter() - t_all:.0f} s")
    return 0
