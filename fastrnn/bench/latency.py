"""``fastrnn bench --latency``: one recurrent step per call, the state carried.

Times, on ONE thread each, in one process, interleaved (each round runs a
burst of calls of every implementation in turn), B = 1:

- ``fastrnn``: ``layer.stream().step(x_t)`` (:mod:`fastrnn.stream`);
- ``torch cell``: ``torch.nn.LSTMCell`` / ``GRUCell`` / ``RNNCell`` under
  ``torch.inference_mode()``;
- ``torch T=1``: ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` on a one-step sequence
  with the state passed in and out;
- ``ort T=1``: onnxruntime running a one-node ONNX LSTM / GRU / RNN over one
  step, the state as inputs ``h0`` (``c0``) and outputs ``Yh`` (``Yc``) fed
  back.

Every implementation is first checked to agree with the stream over a few
steps (a wrong model is never timed). Each call is timed on its own
(``perf_counter_ns``): p50 and p99 over every call of every round. Then the
language-model step (a 2-layer LSTM with an embedding and a Linear head,
``LanguageModel.stream().step``) against the one-layer stream, each beside
its memory floor (the same weight bytes read alone, and one core's read
bandwidth from L2 and from L3), and whole-sequence LSTM inference at batch 1 (``layer(x)`` in eval mode) against
onnxruntime and torch.
"""
from __future__ import annotations

import time

import numpy as np

from ..cells import get_cell
from .onnx_peer import onnx_rnn_model, onnx_weights, ort_available, ort_session

#: (I, H) of the step table (the issue's rows)
STEP_SHAPES = [(32, 32), (64, 128), (128, 256)]
STEP_CELLS = ["lstm", "gru", "rnn_tanh"]
#: (T, B, I, H) of the whole-sequence rows
SEQ_SHAPES = [(200, 1, 32, 32), (100, 1, 64, 64)]
AGREE_ATOL = 2e-5


def _percentiles(samples_ns):
    a = np.asarray(samples_ns, np.float64) / 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def time_calls(fns, rounds, calls, warmup=50):
    """``{name: [per-call ns]}``: ``rounds`` rounds, each running ``calls``
    timed calls of every function in turn (interleaved)."""
    clock = time.perf_counter_ns
    out = {k: [] for k in fns}
    for f in fns.values():
        for _ in range(warmup):
            f()
    for _ in range(rounds):
        for k, f in fns.items():
            acc = out[k]
            for _ in range(calls):
                t0 = clock()
                f()
                acc.append(clock() - t0)
    return out


def _median_of_rounds(fns, rounds, reps):
    """``{name: median seconds per call}``, interleaved rounds of ``reps`` calls."""
    res = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            res[k].append((time.perf_counter() - t0) / reps)
    return {k: float(np.median(v)) for k, v in res.items()}


# --------------------------------------------------------------------------- onnx
def onnx_step_model(cell, w, B, I, H):
    """A one-node ONNX model (bytes): one step of ``cell`` from ``X [1, B, I]``,
    ``h0 [1, B, H]`` (and ``c0``) to ``Yh`` (and ``Yc``) ``[1, B, H]``."""
    from onnx import TensorProto, helper
    op, attrs, inits = onnx_weights(cell, w, H)
    names = ["X", "W", "R", "B", "", "h0"]
    vi = helper.make_tensor_value_info
    feeds = [vi("X", TensorProto.FLOAT, [1, B, I]), vi("h0", TensorProto.FLOAT, [1, B, H])]
    outs = ["", "Yh"]
    results = [vi("Yh", TensorProto.FLOAT, [1, B, H])]
    if cell.has_cell:
        names.append("c0")
        feeds.append(vi("c0", TensorProto.FLOAT, [1, B, H]))
        outs.append("Yc")
        results.append(vi("Yc", TensorProto.FLOAT, [1, B, H]))
    if cell.peephole is not None:
        names.append("P")
    node = helper.make_node(op, names, outs, hidden_size=H, **attrs)
    graph = helper.make_graph([node], f"fastrnn_{cell.name}_step", feeds, results, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    return model.SerializeToString()


# --------------------------------------------------------------------------- runners
def _runners(cell, I, H, torch, ort, seed=0):
    """``({name: step fn}, {name: h after the check steps})`` for one cell and shape."""
    import fastrnn
    spec = get_cell(cell)
    layer = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}.get(spec.family, fastrnn.RNN)(
        I, H, seed=seed, backend="cpu").eval()
    w = layer._weights("_l0")
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((8, 1, I)).astype(np.float32)
    fns, finals = {}, {}

    s = layer.stream()
    x2 = xs[0]
    fns["fastrnn"] = lambda: s.step(x2)
    for t in range(8):
        s.step(xs[t])
    finals["fastrnn"] = s.state[0][0] if spec.has_cell else s.state[0]
    s.reset()

    if torch is not None:
        nn = torch.nn
        cls = {"lstm": "LSTM", "gru": "GRU"}.get(spec.family, "RNN")
        kw = {} if cls != "RNN" else {"nonlinearity": "tanh"}
        mod = getattr(nn, cls)(I, H, **kw)
        cellm = getattr(nn, cls + "Cell")(I, H, **kw)
        sd = {k + "_l0": torch.from_numpy(np.array(v)) for k, v in
              dict(weight_ih=w.w_ih, weight_hh=w.w_hh, bias_ih=w.b_ih, bias_hh=w.b_hh).items()}
        mod.load_state_dict(sd)
        cellm.load_state_dict({k[:-3]: v for k, v in sd.items()})
        tx = [torch.from_numpy(xs[t]) for t in range(8)]
        z = torch.zeros(1, H)
        st_c = [(z, z.clone()) if spec.has_cell else z]
        st_m = [(z[None], z[None].clone()) if spec.has_cell else z[None]]
        x1, x13 = tx[0], tx[0][None]

        def cell_step():
            with torch.inference_mode():
                st_c[0] = cellm(x1, st_c[0])

        def mod_step():
            with torch.inference_mode():
                st_m[0] = mod(x13, st_m[0])[1]

        with torch.inference_mode():
            for t in range(8):
                st_c[0] = cellm(tx[t], st_c[0])
                st_m[0] = mod(tx[t][None], st_m[0])[1]
        h_c = st_c[0][0] if spec.has_cell else st_c[0]
        h_m = st_m[0][0] if spec.has_cell else st_m[0]
        finals["torch cell"] = h_c.numpy()
        finals["torch T=1"] = h_m[0].numpy()
        fns["torch cell"], fns["torch T=1"] = cell_step, mod_step

    if ort is not None:
        sess = ort_session(ort, onnx_step_model(spec, w, 1, I, H), 1)
        z = np.zeros((1, 1, H), np.float32)
        feeds = {"X": xs[0][None], "h0": z}
        outs = ["Yh"]
        if spec.has_cell:
            feeds["c0"] = z.copy()
            outs.append("Yc")

        def ort_step():
            r = sess.run(outs, feeds)
            feeds["h0"] = r[0]
            if len(r) > 1:
                feeds["c0"] = r[1]

        for t in range(8):
            feeds["X"] = xs[t][None]
            ort_step()
        finals["ort T=1"] = feeds["h0"][0]
        feeds["X"] = xs[0][None]
        fns["ort T=1"] = ort_step
    for k, h in finals.items():
        err = float(np.abs(np.asarray(h) - finals["fastrnn"]).max())
        if not err <= AGREE_ATOL:
            raise RuntimeError(f"{k} disagrees with the fastrnn stream for {cell} (I={I}, "
                               f"H={H}): max |dh| = {err:.3g} after 8 steps")
    return fns


def step_table(torch, ort, rounds, calls, shapes=STEP_SHAPES, cells=STEP_CELLS, out=print):
    """The step-latency table; returns its records."""
    recs = []
    names = ["fastrnn", "torch cell", "torch T=1", "ort T=1"]
    out("one step per call, B=1, one thread each; p50 / p99 in microseconds")
    out("| cell | I, H | " + " | ".join(names) + " | ort p50 / fastrnn p50 |")
    out("|---|---|" + "---|" * (len(names) + 1))
    for cell in cells:
        for I, H in shapes:
            fns = _runners(cell, I, H, torch, ort)
            t = time_calls(fns, rounds, calls)
            pc = {k: _percentiles(v) for k, v in t.items()}
            cols = [f"{pc[k][0]:.1f} / {pc[k][1]:.1f}" if k in pc else "-" for k in names]
            ratio = (f"{pc['ort T=1'][0] / pc['fastrnn'][0]:.1f}x" if "ort T=1" in pc else "-")
            out(f"| {cell} | {I}, {H} | " + " | ".join(cols) + f" | {ratio} |")
            recs.append(dict(kind="step", cell=cell, I=I, H=H,
                             **{k: dict(p50_us=v[0], p99_us=v[1]) for k, v in pc.items()}))
    return recs


def l2_bytes():
    """One core's L2 cache in bytes (Linux sysfs), or None where unknown."""
    import glob
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(d + "/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(d + "/size") as f:
                txt = f.read().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20}.get(txt[-1:], 1)
        try:
            return int(txt.rstrip("KM")) * mult
        except ValueError:
            return None
    return None


def lm_table(rounds, calls, sizes=(32, 128, 256), vocab=64, out=print):
    """The language-model step (2-layer LSTM + embedding + Linear head) against
    a one-layer LSTM stream of the same width, and beside them the memory
    floor of each: the time to read the weights one step reads, alone
    (:func:`fastrnn.kernels.latency.read_sum` over a buffer of that many
    float32, cycled like the steps and interleaved with them)."""
    import fastrnn
    from ..kernels import latency
    out("\nlanguage-model step (embedding, 2-layer LSTM, Linear head to V=%d) vs one "
        "LSTM layer (I=H), p50 us; 'read alone': the same number of weight bytes read "
        "with vector loads and nothing else (the floor of a step that reads them)" % vocab)
    out("| H | 1-layer stream | LanguageModel.stream().step | ratio | weights per step, MiB "
        "(1 layer / LM) | read alone, us (1 layer / LM) | read-alone ratio |")
    out("|---|---|---|---|---|---|---|")
    recs = []
    for H in sizes:
        s1 = fastrnn.LSTM(H, H, seed=0, backend="cpu").stream()
        x = np.random.default_rng(0).standard_normal((1, H)).astype(np.float32)
        lm = fastrnn.LanguageModel(vocab, embed_dim=H, hidden_size=H, num_layers=2, seed=0,
                                   backend="cpu")
        s2 = lm.stream()
        b1 = np.ones(latency.step_weights(s1._meta), np.float32)
        b2 = np.ones(latency.step_weights(s2._meta), np.float32)
        t = time_calls({"layer": lambda: s1.step(x), "lm": lambda: s2.step(7),
                        "read layer": lambda: latency.read_sum(b1),
                        "read lm": lambda: latency.read_sum(b2)}, rounds, calls)
        a, b = _percentiles(t["layer"])[0], _percentiles(t["lm"])[0]
        ra, rb = _percentiles(t["read layer"])[0], _percentiles(t["read lm"])[0]
        m1, m2 = b1.nbytes / 2 ** 20, b2.nbytes / 2 ** 20
        out(f"| {H} | {a:.1f} | {b:.1f} | {b / a:.2f}x | {m1:.2f} / {m2:.2f} | "
            f"{ra:.1f} / {rb:.1f} | {rb / ra:.2f}x |")
        recs.append(dict(kind="lm", H=H, layer_p50_us=a, lm_p50_us=b, layer_mib=m1, lm_mib=m2,
                         layer_read_p50_us=ra, lm_read_p50_us=rb))
    recs.append(read_bandwidth(rounds, calls, out=out))
    return recs


def read_bandwidth(rounds, calls, sizes_mib=(1, 8), out=print):
    """One core's read bandwidth (GB/s, from the p50 of
    :func:`fastrnn.kernels.latency.read_sum` over buffers of ``sizes_mib``,
    interleaved): 1 MiB stays in a 2 MiB L2, 8 MiB comes from L3. Returns the
    record."""
    from ..kernels import latency
    bufs = {m: np.ones(m * 2 ** 18, np.float32) for m in sizes_mib}
    t = time_calls({m: (lambda b=b: latency.read_sum(b)) for m, b in bufs.items()},
                   rounds, max(calls // 5, 10))
    gbs = {m: bufs[m].nbytes / (_percentiles(t[m])[0] * 1e3) for m in sizes_mib}
    l2 = l2_bytes()
    out("one core reads " + ", ".join(f"{g:.0f} GB/s from a {m} MiB buffer" for m, g in
                                       gbs.items())
        + (f" (its L2: {l2 / 2 ** 20:.1f} MiB; weights beyond it stream from L3 every step)"
           if l2 else ""))
    return dict(kind="read", l2_bytes=l2, **{f"gbs_{m}mib": g for m, g in gbs.items()})


def seq_table(torch, ort, rounds, shapes=SEQ_SHAPES, out=print):
    """Whole-sequence LSTM inference at batch 1: ``layer(x)`` (eval) against
    onnxruntime and torch, one thread each."""
    import fastrnn
    out("\nwhole-sequence LSTM inference, one thread each, median ms per call")
    out("| T, B, I, H | fastrnn layer(x) | ort | torch | ort / fastrnn |")
    out("|---|---|---|---|---|")
    recs = []
    for T, B, I, H in shapes:
        layer = fastrnn.LSTM(I, H, seed=0, backend="cpu").eval()
        x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
        fns = {"fastrnn": lambda: layer(x)}
        w = layer._weights("_l0")
        if ort is not None:
            sess = ort_session(ort, onnx_rnn_model(get_cell("lstm"), w, T, B, I, H), 1)
            z = np.zeros((1, B, H), np.float32)
            feeds = {"X": x, "h0": z, "c0": z}
            err = float(np.abs(sess.run(["Y"], feeds)[0][:, 0] - layer(x)[0]).max())
            if not err <= AGREE_ATOL:
                raise RuntimeError(f"onnxruntime disagrees with fastrnn at {(T, B, I, H)}: {err}")
            fns["ort"] = lambda: sess.run(["Y"], feeds)
        if torch is not None:
            mod = torch.nn.LSTM(I, H)
            mod.load_state_dict({k: torch.from_numpy(np.array(v))
                                 for k, v in layer.state_dict().items()})
            tx = torch.from_numpy(x)

            def tstep():
                with torch.inference_mode():
                    mod(tx)
            fns["torch"] = tstep
        m = _median_of_rounds(fns, rounds, 20)
        cols = [f"{m[k] * 1e3:.3f}" if k in m else "-" for k in ("fastrnn", "ort", "torch")]
        ratio = f"{m['ort'] / m['fastrnn']:.2f}x" if "ort" in m else "-"
        out(f"| {T}, {B}, {I}, {H} | " + " | ".join(cols) + f" | {ratio} |")
        recs.append(dict(kind="sequence", shape=(T, B, I, H),
                         **{k + "_ms": v * 1e3 for k, v in m.items()}))
    return recs


def main(args):
    """``fastrnn bench --latency`` (``args`` from :func:`fastrnn.bench.parse_args`)."""
    import json

    from ..kernels import cpu
    torch = None
    if "torch" in args.impls.split(","):
        try:
            import torch
            torch.set_num_threads(1)
        except ImportError:
            print("torch is not installed: skipping the PyTorch columns")
    ort = None
    if "ort" in args.impls.split(","):
        mods = ort_available()
        ort = None if mods is None else mods[0]
        if ort is None:
            print("onnxruntime / onnx are not installed: skipping the onnxruntime column")
    old = cpu.get_num_threads()
    cpu.set_num_threads(1)
    rounds, calls = (3, 100) if args.quick else (20, 250)
    try:
        recs = step_table(torch, ort, rounds, calls,
                          cells=STEP_CELLS[:1] if args.quick else STEP_CELLS,
                          shapes=STEP_SHAPES[:1] if args.quick else STEP_SHAPES)
        recs += lm_table(rounds, calls, sizes=(32,) if args.quick else (32, 128, 256))
        recs += seq_table(torch, ort, 3 if args.quick else 15)
    finally:
        cpu.set_num_threads(old)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(recs, f, indent=1)
    return 0
