"""LSTM training step and inference in the bfloat16 compute mode: fastrnn bf16 vs
fastrnn float32 vs torch bf16 vs torch float32 (torch: the faster of 1 and 2
threads; module and input ``.to(torch.bfloat16)``), interleaved in one process.

    python bench/bf16_lstm.py [--rounds 15] [--shapes 64,32,64,256 100,32,64,128 ...]
                              [--route amx|native|emulated] [--no-torch]
                              [--threads N] [--infer-only | --train-only]
    python bench/bf16_lstm.py --peak       # vdpbf16ps, tdpbf16ps and the AMX GEMM, one thread
    python bench/bf16_lstm.py --pieces [--threads N] [--against REV]   # where the AMX route's time goes
    python bench/bf16_lstm.py --against REV --no-torch   # + fastrnn bf16 at git REV
    python bench/bf16_lstm.py --mm 2048   # + torch.mm bf16 in the same rounds: % of its rate
    python bench/bf16_lstm.py --gemm --against REV [--shapes ...]   # the products after
                                           # the backward loop, one thread, REV vs this
    python bench/bf16_lstm.py --bwd --against REV [--threads N]   # the backward alone,
                                           # per-round paired ratios, REV vs this

Prints, per shape and mode (train = forward + backward, infer = forward without
a cache; each round runs the contenders in a new random order, each after a 5
ms pause), the median and minimum milliseconds of each contender and the ratios
of the medians. ``--against REV`` adds the bf16 mode of the package at git
revision ``REV`` (loaded beside this one as ``fastrnn_old``, as
``bench/ab_package.py`` does) to the same interleaved rounds.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import numpy as np

SHAPES = [(64, 32, 64, 256), (100, 32, 64, 128), (50, 64, 256, 512)]


def _fastrnn(T, B, I, H, compute_dtype, train, rng, pkg=None):
    name = "fastrnn" if pkg is None else pkg.__name__
    cell = importlib.import_module(name + ".cells").get_cell("lstm")
    Weights = importlib.import_module(name + ".contract").Weights
    cpu = importlib.import_module(name + ".kernels.cpu")
    k = 1 / np.sqrt(H)
    f = lambda *s, a=1.0: rng.uniform(-a, a, s).astype(np.float32)  # noqa: E731
    w = Weights(f(4 * H, I, a=k), f(4 * H, H, a=k), f(4 * H, a=k), f(4 * H, a=k), None)
    x, h0, c0 = f(T, B, I), f(B, H), f(B, H)
    dy, dh = f(T, B, H), f(B, H)

    def run():
        y, h, c, cache = cpu.forward(cell, x, h0, c0, w, training=train,
                                     compute_dtype=compute_dtype)
        if train:
            cpu.backward(cell, cache, dy, dh, dh)
    return run


def _torch(T, B, I, H, dtype, train, threads):
    import torch
    return torch_run(torch.nn.LSTM(I, H), torch.randn(T, B, I), dtype, train, threads)


def torch_run(m, x, dtype, train, threads):
    """One call of torch module ``m`` on ``x``, both ``.to(dtype)``, at ``threads``
    threads: forward + backward of ``y.sum()`` (``train``) or a no-grad forward."""
    import torch
    m, x = m.to(dtype), x.to(dtype)

    def run():
        torch.set_num_threads(threads)
        if train:
            xx = x.clone().requires_grad_(True)
            y, _ = m(xx)
            y.sum().backward()
        else:
            with torch.no_grad():
                m(x)
    return run


def _torch_mm(torch, n):
    """``torch.mm`` of two bf16 ``n x n`` matrices on 2 threads (float32 sums): the
    bf16 GEMM rate that ``fastrnn bench`` reads the bf16 rows against, timed here in
    the same interleaved rounds as the LSTMs (the machine's speed drifts)."""
    a = torch.from_numpy(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    a = a.to(torch.bfloat16)
    b = a.t().contiguous()

    def run():
        torch.set_num_threads(2)
        torch.mm(a, b)
    return run


def tile_rates(rounds=5):
    """One thread's ``tdpbf16ps`` rate, GFLOP/s (best of ``rounds``), in the kernels'
    2 x 2 pattern (:func:`fastrnn.kernels.amx_bf16.probe`): the tile unit's own
    (operands in tiles: the peak), and with the four operand tiles of each round
    loaded from buffers of 16 KiB (L1), 1 MiB (L2) and 32 MiB (L3) of random bf16
    numbers, with only the A pair streamed from 1 MiB while the B pair stays in L1, and with tile
    rows that straddle two cache lines (a buffer 16 bytes off a 64-byte boundary,
    where NumPy's large arrays start)."""
    from fastrnn.kernels import amx_bf16
    from fastrnn.kernels.packed_bf16 import aligned, to_bits
    out = {}
    if not amx_bf16.available():        # a tile instruction without the grant is SIGILL
        return out
    rng = np.random.default_rng(0)
    for name, span, half, misaligned in (
            ("peak (tiles in registers)", 0, False, 0), ("tiles from L1 (16 KiB)", 4, False, 0),
            ("tiles from L2 (1 MiB)", 256, False, 0), ("tiles from L3 (32 MiB)", 8192, False, 0),
            ("A from L2, B from L1", 256, True, 0),
            ("tiles from L2, rows 16 bytes off a line", 256, False, 1)):
        buf = aligned(4096 * max(span, 4) + 4096 + 16, np.uint8)[16 * misaligned:]
        # bf16 numbers of a normal draw in every byte: fresh zeros would all read
        # one shared zero page (the "L2" and "L3" buffers served from L1), and
        # zero operands run the tile unit faster than real data
        words = buf[:buf.size // 2 * 2].view(np.uint16)
        words[:] = to_bits(rng.standard_normal(words.size).astype(np.float32))
        first = words[:2048].copy()       # the probe stores its sums over the first 4 KiB
        n = 100_000
        amx_bf16.probe(buf, 10, span, half)
        ts = []
        for _ in range(rounds):
            words[:2048] = first
            t0 = time.perf_counter()
            amx_bf16.probe(buf, n, span, half)
            ts.append(time.perf_counter() - t0)
        out[name] = n * 4 * 16384 / min(ts) / 1e9
    return out


def dp_rates(rounds=5, n=2_000_000):
    """One thread's rate of bf16-pair products on registers, GFLOP/s (best of
    ``rounds``): ``vdpbf16ps`` (where the CPU has AVX512-BF16) and its float32
    emulation (two FMAs per pair: the emulated route's products): the measured
    dot-product peaks of the native and emulated routes, to read their kernels
    against."""
    from numba import njit
    from fastrnn.bf16 import has_avx512_bf16
    from fastrnn.kernels.bf16_simd import EMULATED, NATIVE, PROBE_ACCS, uk_dp_probe

    @njit
    def run(tag, n):
        return uk_dp_probe(tag, n)
    out = {}
    for name, tag in (("vdpbf16ps", NATIVE), ("float32 FMA emulation", EMULATED)):
        if tag is NATIVE and not has_avx512_bf16():
            continue
        run(tag, 10)
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            run(tag, n)
            ts.append(time.perf_counter() - t0)
        out[name] = n * PROBE_ACCS * 64 / min(ts) / 1e9
    return out


def peak(rounds=5):
    """The bf16 product rates this machine reaches: the tile unit (:func:`tile_rates`),
    ``amx_gemm.dwt_gemm`` (AMX tiles, one thread) at the weight-gradient shape of
    (50,64,256,512), and NumPy's float32 GEMM at the same shape, GFLOP/s (best of
    ``rounds``)."""
    from fastrnn.kernels.packed_bf16 import to_bits
    try:
        from fastrnn.kernels import amx_bf16
    except Exception:  # an LLVM without the AMX intrinsics
        amx_bf16 = None
    M, K, N = 768, 3200, 2048
    rng = np.random.default_rng(0)
    a = rng.standard_normal((K, M)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    out = {}
    for k, v in dp_rates(rounds).items():
        print(f"{k}, 1 thread, registers: {v:.0f} GFLOP/s")
    if amx_bf16 is not None and amx_bf16.available():
        for k, v in tile_rates(rounds).items():
            print(f"tdpbf16ps, 1 thread, {k}: {v:.0f} GFLOP/s")
        from fastrnn.kernels import amx_gemm
        from fastrnn.kernels.packed_bf16 import aligned
        at = aligned((M // 16, K // 32, 16, 32), np.uint16)
        amx_gemm.pack_a_steps(to_bits(a)[None], K, at)
        bt = aligned((N // 16, K // 2, 16, 2), np.uint16)
        amx_gemm.pack_b_steps(to_bits(b)[None], K, bt, 0, N)
        c = aligned((N // 16, M // 16, 16, 16), np.float32)
        dw = np.empty((N, M), np.float32)      # dW = (aᵀ b)ᵀ as the weight gradient of x
        fn = lambda: amx_gemm.dwt_gemm(at, bt, c, M, M, N // 4, N // 4, dw, dw[:, :0],  # noqa
                                       0, N)
        fn()
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out["amx bf16 gemm, 1 thread"] = 2.0 * M * N * K / min(ts) / 1e9
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a.T @ b
        ts.append(time.perf_counter() - t0)
    out["numpy float32 gemm (its BLAS threads)"] = 2.0 * M * N * K / min(ts) / 1e9
    print(f"peak at {M}x{K}x{N}: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in out.items()))


def _time_launches(plan_mod, add):
    """``plan_mod.Plan.launch`` (the drivers' one way to run a time loop) timed: each
    call's seconds go to ``add(kernel name, plan, seconds)``. Returns the untimed
    ``launch`` to put back; a second call replaces the first timer, not wraps it."""
    launch = getattr(plan_mod.Plan.launch, "untimed", plan_mod.Plan.launch)

    def timed(self, kernel, args_of):
        t0 = time.perf_counter()
        try:
            return launch(self, kernel, args_of)
        finally:
            add(kernel.__name__, self, time.perf_counter() - t0)
    timed.untimed = launch
    plan_mod.Plan.launch = timed
    return launch


def pieces(shapes, rounds, threads, pkg=None, trains=(True, False)):
    """Where the bf16 LSTM's time goes on the AMX route: the time of each piece per
    call (training: forward + backward; inference), summed over the threads that
    ran it, and the rate of the products against one core's tile peak. The pieces
    are timed by wrapping the functions the drivers call (``Plan.launch`` runs
    the time loops; ``dwt_gemm``/``dx_gemm`` the weight gradient and dx). ``pkg``: the package
    (default ``fastrnn``; ``--against`` loads an older one beside it); ``trains``: the
    modes (True: training)."""
    import collections

    name = "fastrnn" if pkg is None else pkg.__name__
    amx_bf16 = importlib.import_module(name + ".kernels.amx_bf16")
    cpu = importlib.import_module(name + ".kernels.cpu")
    pb = importlib.import_module(name + ".kernels.packed_bf16")
    plan_mod = importlib.import_module(name + ".kernels.plan")
    cpu.configure(bf16_native=True, bf16_amx=True)
    if threads is not None:
        cpu.set_num_threads(threads)
    if not amx_bf16.available():
        raise SystemExit("--pieces: this CPU or process may not use AMX-BF16 tiles")
    peak = tile_rates(3)["peak (tiles in registers)"]
    acc = collections.defaultdict(float)
    modes = set()

    def wrap(mod, name, label):
        f = getattr(mod, name)

        def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                return f(*args, **kw)
            finally:
                acc[label] += time.perf_counter() - t0
        setattr(mod, name, timed)
        return f
    # the products after the loop: amx_gemm's (older packages: amx_bf16's)
    try:
        gm = importlib.import_module(name + ".kernels.amx_gemm")
    except ImportError:
        gm = amx_bf16
    saved = [(gm, n, wrap(gm, n, n)) for n in
             ("pack_a_steps", "pack_b_steps", "pack_rows_steps", "gemm", "pack_wih", "dx_gemm",
              "dh0_gemm", "dwt_gemm") if hasattr(gm, n)]
    saved += [(pb, n, wrap(pb, n, lab)) for n, lab in
              (("pack_bf16", "pack_bf16 (weights)"), ("to_bits", "to_bits (x)"),
               ("_x_bits", "to_bits (x)"), ("lstm_forward", "forward, all"),
               ("lstm_backward", "backward, all")) if hasattr(pb, n)]
    def add(kname, plan, t):
        name = "forward loop" if "fwd" in kname else "backward loop"
        acc[name] += t
        modes.add(f"{name}: {plan.mode} on {plan.nthr}")
    launch = _time_launches(plan_mod, add)
    print(f"{name}: one core's tdpbf16ps peak {peak:.0f} GFLOP/s; {cpu.get_num_threads()} "
          f"threads; load average {os.getloadavg()[0]:.2f}")
    try:
        rng = np.random.default_rng(0)
        for T, B, I, H in shapes:
            fl = {"loop": 2.0 * T * B * 4 * H * (I + H), "bloop": 2.0 * T * B * 4 * H * H,
                  "dx": 2.0 * T * B * 4 * H * I, "dw": 2.0 * T * B * 4 * H * (I + H)}
            for train in trains:
                run = _fastrnn(T, B, I, H, "bfloat16", train, rng, pkg)
                run()
                acc.clear()
                modes.clear()
                t0 = time.perf_counter()
                for _ in range(rounds):
                    run()
                tot = (time.perf_counter() - t0) / rounds
                print(f"{(T, B, I, H)} {'train' if train else 'infer'}: {1e3 * tot:.2f} ms "
                      f"per call ({'; '.join(sorted(modes))} threads)")
                for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
                    ms = 1e3 * v / rounds
                    f = {"forward loop": fl["loop"], "backward loop": fl["bloop"],
                         "dx_gemm": fl["dx"], "dwt_gemm": fl["dw"]}.get(k)
                    rate = "" if f is None else (f"  {f / (ms * 1e6):6.0f} GFLOP/s, "
                                                 f"{100 * f / (ms * 1e6) / peak:4.1f}% of one core")
                    print(f"    {k:34s} {ms:8.2f} ms{rate}")
    finally:
        plan_mod.Plan.launch = launch
        for mod, n, f in saved:
            setattr(mod, n, f)


def _full_speed(ts, tm, flops, mm_flops, near=0.9):
    """fastrnn's rate as a fraction of torch.mm's with the host at its best: the
    host slows the tile unit for long stretches (torch.mm anywhere from a quarter of
    its rate up), and torch.mm loses more to that than the LSTM does, so the
    medians' fraction depends on the host's state. Here: the rounds in which
    torch.mm ran within ``near`` of its fastest, each round's pair as a ratio
    (median), and both at their best (fastest call of each)."""
    ts, tm = np.asarray(ts), np.asarray(tm)
    peak = mm_flops / tm.min()
    fast = tm <= tm.min() / near
    per = (flops / ts[fast]) / (mm_flops / tm[fast])
    return (f"host at full speed: torch.mm's best {peak / 1e9:.0f} GFLOP/s; in the {fast.sum()} of "
            f"{len(tm)} rounds with torch.mm within {100 * (1 - near):.0f}% of it fastrnn "
            f"{100 * float(np.median(per)):.0f}% of that round's torch.mm (median); best vs best "
            f"{100 * flops / ts.min() / peak:.0f}%")


def gemm_ab(shapes, rounds, rev):
    """The AMX products after the bf16 LSTM's backward loop (``amx_gemm``'s
    ``dwt_gemm`` on half the columns, as one task of two; ``dx_gemm`` on all rows;
    ``pack_wih``; ``pack_a_steps``) of this package and of git revision ``rev``, on the
    same operands, one thread, timed by the thread's CPU time (other processes on the
    machine then cost less of the measure), old and new alternating in each round;
    asserts both give bitwise the same results."""
    from fastrnn.kernels import amx_bf16
    from fastrnn.kernels import amx_gemm as ag
    from fastrnn.kernels.packed_bf16 import aligned, to_bits
    if not amx_bf16.available():
        raise SystemExit("--gemm: this CPU or process may not use AMX-BF16 tiles")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ab_package import load_old
    old = load_old(rev)
    ago = importlib.import_module(old.__name__ + ".kernels.amx_gemm")
    for T, B, I, H in shapes:
        Ip, Hp = -(-I // 16) * 16, -(-H // 16) * 16
        Nx, GH, R = Ip + -(-Hp // 32) * 32, 4 * Hp, T * B
        Rp = -(-R // 32) * 32
        rng = np.random.default_rng(0)
        xh = to_bits(rng.standard_normal((T, B, Nx)).astype(np.float32))
        dg = to_bits(rng.standard_normal((T, B, GH)).astype(np.float32))
        vs = ag.vnni_shape(T, B, GH)
        vt = aligned(vs, np.uint16)
        ag.pack_b_steps(dg, B, vt, 0, GH)
        at = aligned((Nx // 16, vs[1] // 16, 16, 32), np.uint16)
        ag.pack_a_steps(xh, B, at)
        ct = aligned((GH // 16, Nx // 16, 16, 16), np.float32)
        dgf = aligned((Rp + 32, GH + (32 if GH % 2048 == 0 else 0)), np.uint16)
        dgf[:R, :GH] = dg.reshape(R, GH)
        wb = to_bits(rng.standard_normal((4 * H, I)).astype(np.float32))

        def mk(mod):
            dwi, dwh = np.zeros((4 * H, I), np.float32), np.zeros((4 * H, H), np.float32)
            dx = aligned((Rp + 32, Ip), np.float32)
            wt = aligned((Ip // 16, GH // 2, 16, 2), np.uint16)
            mod.pack_wih(wb, H, Hp, wt)
            return {"dwt_gemm (half)": lambda: mod.dwt_gemm(at, vt, ct, I, Ip, H, Hp, dwi, dwh,
                                                            0, GH // 64 * 32),
                    "dx_gemm": lambda: mod.dx_gemm(dgf, wt, dx, 0, Rp),
                    "pack_wih": lambda: mod.pack_wih(wb, H, Hp, wt),
                    "pack_a_steps": lambda: mod.pack_a_steps(xh, B, at)}, (dwi, dwh, dx, wt)
        (fo, oo), (fn, on) = mk(ago), mk(ag)
        for k in fo:
            fo[k]()
            fn[k]()
        for x, y in zip(oo, on):
            if not np.array_equal(x, y):
                raise SystemExit(f"--gemm: {rev} and this package differ at {(T, B, I, H)}")
        ts = {k: ([], []) for k in fo}
        for r in range(rounds):
            for k in fo:
                for i, f in ((0, fo[k]), (1, fn[k]))[::1 if r % 2 == 0 else -1]:
                    t0 = time.thread_time()
                    f()
                    ts[k][i].append(time.thread_time() - t0)
        print(f"{(T, B, I, H)}: one thread, thread CPU time, {rounds} rounds, {rev} vs this "
              f"package; load average {os.getloadavg()[0]:.2f}")
        for k, (a, b) in ts.items():
            a, b = 1e3 * np.array(a), 1e3 * np.array(b)
            print(f"    {k:16s} {rev} min {a.min():7.3f} med {np.median(a):7.3f} ms, new min "
                  f"{b.min():7.3f} med {np.median(b):7.3f} ms: new/old min "
                  f"{b.min() / a.min():.3f}, medians {np.median(b) / np.median(a):.3f}",
                  flush=True)


def bwd_ab(shapes, rounds, rev, threads):
    """The bf16 LSTM's backward (``cpu.backward`` after a training forward) of this
    package and of git revision ``rev``, alternating in each round (old-new, then
    new-old): the medians and quartiles of the per-round new/old ratios (paired:
    the host's speed drifts less within a round than between rounds) of the
    backward's wall time and of its time loop's (``Plan.launch``); checks that both
    give the same gradients (prints their largest relative difference)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ab_package import load_old
    old = load_old(rev)

    def make(name, shape):
        T, B, I, H = shape
        cell = importlib.import_module(name + ".cells").get_cell("lstm")
        Weights = importlib.import_module(name + ".contract").Weights
        cpu = importlib.import_module(name + ".kernels.cpu")
        plan = importlib.import_module(name + ".kernels.plan")
        cpu.configure(bf16_native=True, bf16_amx=True)
        if threads is not None:
            cpu.set_num_threads(threads)
        rng = np.random.default_rng(0)
        k = 1 / np.sqrt(H)
        f = lambda *s, a=1.0: rng.uniform(-a, a, s).astype(np.float32)  # noqa: E731
        w = Weights(f(4 * H, I, a=k), f(4 * H, H, a=k), f(4 * H, a=k), f(4 * H, a=k), None)
        x, h0, c0 = f(T, B, I), f(B, H), f(B, H)
        dy, dh = f(T, B, H), f(B, H)
        loop = [0.0]

        def add(kname, plan_, t):
            if "fwd" not in kname:
                loop[0] += t
        _time_launches(plan, add)

        def run():
            cache = cpu.forward(cell, x, h0, c0, w, training=True, compute_dtype="bfloat16")[3]
            loop[0] = 0.0
            t0 = time.perf_counter()
            g = cpu.backward(cell, cache, dy, dh, dh)
            return time.perf_counter() - t0, loop[0], g
        return run

    for shape in shapes:
        fo, fn = make(old.__name__, shape), make("fastrnn", shape)
        def flat(g):
            return [a for v in g if v is not None
                    for a in (flat(v) if isinstance(v, tuple) else [np.asarray(v)])]
        go, gn = flat(fo()[2]), flat(fn()[2])
        diff = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-30))
                   for a, b in zip(go, gn))
        ts = {"old": [], "new": []}
        for r in range(rounds):
            for k, f in (("old", fo), ("new", fn))[::1 if r % 2 == 0 else -1]:
                time.sleep(0.005)
                ts[k].append(f()[:2])
        o, n = 1e3 * np.array(ts["old"]), 1e3 * np.array(ts["new"])
        print(f"{shape} backward, {rounds} rounds, {rev} vs this package, threads "
              f"{threads or 'default'}; load average {os.getloadavg()[0]:.2f}; gradients' "
              f"largest relative difference {diff:.2g}")
        for j, lab in enumerate(("backward", "backward loop")):
            q = np.quantile(n[:, j] / o[:, j], [0.25, 0.5, 0.75])
            print(f"    {lab:14s} new/old per round: median {q[1]:.3f} (quartiles {q[0]:.3f}, "
                  f"{q[2]:.3f}); {rev} med {np.median(o[:, j]):7.2f} ms, new med "
                  f"{np.median(n[:, j]):7.2f} ms", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--shapes", nargs="*", default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--route", choices=("amx", "native", "emulated"), default=None,
                    help="force a route of fastrnn.kernels.cpu.route_bf16 (default: the "
                         "machine's)")
    ap.add_argument("--peak", action="store_true", help="only time the GEMM rates (peak())")
    ap.add_argument("--pieces", action="store_true",
                    help="only time the pieces of the AMX route (pieces())")
    ap.add_argument("--gemm", action="store_true",
                    help="only the products after the backward loop, one thread, against "
                         "--against REV (gemm_ab())")
    ap.add_argument("--bwd", action="store_true",
                    help="only the LSTM's backward, against --against REV, per-round "
                         "paired ratios (bwd_ab())")
    ap.add_argument("--threads", type=int, default=None,
                    help="fastrnn's threads (default: its own setting)")
    ap.add_argument("--infer-only", action="store_true", help="only the inference rows")
    ap.add_argument("--train-only", action="store_true", help="only the training rows")
    ap.add_argument("--mm", type=int, default=0, metavar="N",
                    help="also time torch.mm of two bf16 N x N matrices (2 threads) in the same "
                         "rounds and print fastrnn bf16's rate as a fraction of it (2048: the "
                         "peak of fastrnn bench's bf16 rows)")
    ap.add_argument("--against", default=None, metavar="REV",
                    help="also time the bf16 mode of the package at git revision REV")
    a = ap.parse_args(argv)
    if a.peak:
        return peak()
    if a.gemm:
        if not a.against:
            raise SystemExit("--gemm needs --against REV")
        return gemm_ab([tuple(int(v) for v in sh.split(",")) for sh in
                        (a.shapes or ["50,64,256,512"])], a.rounds, a.against)
    if a.bwd:
        if not a.against:
            raise SystemExit("--bwd needs --against REV")
        return bwd_ab([tuple(int(v) for v in sh.split(",")) for sh in
                       (a.shapes or ["50,64,256,512"])], a.rounds, a.against, a.threads)
    if a.pieces:
        shapes = [(50, 64, 256, 512), (64, 32, 64, 256)] if not a.shapes else [
            tuple(int(v) for v in sh.split(",")) for sh in a.shapes]
    old = None
    if a.against:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from ab_package import load_old
        old = load_old(a.against)
    modes = [m for m, off in ((True, a.infer_only), (False, a.train_only)) if not off]
    if a.pieces:
        # with --against: this package and the older one in turn, twice each
        for pkg in ([None, old] * 2 if old is not None else [None]):
            pieces(shapes, a.rounds, a.threads, pkg, modes)
        return None
    if a.route is not None:
        from fastrnn.kernels import cpu
        for c in (cpu,) + ((importlib.import_module(old.__name__ + ".kernels.cpu"),) if old
                           else ()):
            c.configure(bf16_native=a.route != "emulated", bf16_amx=a.route == "amx")
    if a.threads is not None:
        from fastrnn.kernels import cpu
        for c in (cpu,) + ((importlib.import_module(old.__name__ + ".kernels.cpu"),) if old
                           else ()):
            c.set_num_threads(a.threads)
    shapes = SHAPES if not a.shapes else [tuple(int(v) for v in s.split(",")) for s in a.shapes]
    rng = np.random.default_rng(0)
    order_rng = np.random.default_rng(1)
    try:
        import torch
    except ImportError:
        torch = None

    from fastrnn.kernels import cpu
    print(f"fastrnn: {cpu.describe_bf16()}; {cpu.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)
    for shape in shapes:
        for train in modes:
            runs = {"fastrnn bf16": _fastrnn(*shape, "bfloat16", train, rng),
                    "fastrnn f32": _fastrnn(*shape, None, train, rng)}
            if old is not None:
                runs["fastrnn bf16 " + a.against] = _fastrnn(*shape, "bfloat16", train, rng, old)
            if torch is not None and not a.no_torch:
                for nm, dt in (("torch bf16", torch.bfloat16), ("torch f32", torch.float32)):
                    for t in (1, 2):
                        runs[f"{nm} {t}t"] = _torch(*shape, dt, train, t)
            if torch is not None and a.mm:
                runs["torch.mm bf16"] = _torch_mm(torch, a.mm)
            times = {k: [] for k in runs}
            for fn in runs.values():            # warm up (compiles)
                fn()
            keys = list(runs)
            for _ in range(a.rounds):
                # each round in a new order, after a pause: the one after torch on two
                # threads otherwise meets its OpenMP threads still spinning
                for i in order_rng.permutation(len(keys)):
                    k = keys[i]
                    time.sleep(0.005)
                    t0 = time.perf_counter()
                    runs[k]()
                    times[k].append(time.perf_counter() - t0)
            med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
            mn = {k: 1e3 * float(np.min(v)) for k, v in times.items()}
            for nm in ("torch bf16", "torch f32"):
                ks = [k for k in med if k.startswith(nm)]
                if ks:
                    best = min(ks, key=med.get)
                    med[nm], mn[nm] = med[best], mn[best]
            mode = "train" if train else "infer"
            print(f"{shape} {mode}: " + ", ".join(
                f"{k} {med[k]:.2f} (min {mn[k]:.2f}) ms" for k in
                ("fastrnn bf16", "fastrnn bf16 " + str(a.against), "fastrnn f32", "torch bf16",
                 "torch f32") if k in med))
            fb = med["fastrnn bf16"]
            rat = [f"bf16/f32 fastrnn speedup {med['fastrnn f32'] / fb:.2f}x"]
            if old is not None:
                ko = "fastrnn bf16 " + a.against
                rat += [f"new/old bf16 medians {fb / med[ko]:.2f}, minima "
                        f"{mn['fastrnn bf16'] / mn[ko]:.2f}"]
            if "torch bf16" in med:
                rat += [f"vs torch bf16 {med['torch bf16'] / fb:.2f}x",
                        f"vs torch f32 {med['torch f32'] / fb:.2f}x"]
            if "torch.mm bf16" in med:
                T, B, I, H = shape
                flops = 2.0 * T * B * 4 * H * (I + H) * (3 if train else 1)
                mm = 2.0 * a.mm ** 3 / (med["torch.mm bf16"] / 1e3)
                rat += [f"{flops / (fb / 1e3) / 1e9:.0f} GFLOP/s = "
                        f"{100 * flops / (fb / 1e3) / mm:.0f}% of torch.mm bf16 "
                        f"({mm / 1e9:.0f} GFLOP/s, same rounds)"]
            print("    " + ", ".join(rat), flush=True)
            if "torch.mm bf16" in med:
                print("    " + _full_speed(times["fastrnn bf16"], times["torch.mm bf16"], flops,
                                           2.0 * a.mm ** 3), flush=True)


if __name__ == "__main__":
    main()
