"""Data-parallel scaling of the demo's LSTM language model over MPI ranks.

    python bench/distributed.py                 # 1 and 2 ranks, one thread each
    python bench/distributed.py --ranks 1 2 4 --steps 40 --json out.json

For each world size N it launches ``mpiexec -n N`` on this script
(``--worker``), which trains the demo's model (``fastrnn demo``: character
LSTM, embedding 32, hidden 128, BPTT 64, Adam, gradient-norm clip 1) with
:class:`fastrnn.distributed.DistributedTrainer` on the demo corpus and
reports, after a warm-up (JIT compile or cache load kept out):

- the step time and the throughput (characters per second, all ranks),
- the time per step spent in the gradient all-reduce during training (which
  includes waiting for the slowest rank) and its share of the step,
- the all-reduce of the same buffer alone, ranks already in step (the pure
  communication cost the scaling model below uses).

Two batch regimes: ``weak`` keeps the per-rank batch (32 sequences per rank,
global 32 N: the usual data-parallel set-up, where the step time should stay
flat and throughput grow with N) and ``strong`` keeps the global batch (32,
so 32 / N per rank: the same training, split).

It then prints a ring all-reduce model for N nodes: each step sends and
receives ``2 (N-1)/N`` times the gradient bytes ``S`` and pays ``2 (N-1)``
latencies ``a``, so ``t_ar(N) = 2 (N-1) a + 2 (N-1)/N * S / bw``, against the
measured one-rank compute time of a step (at the demo's size and at hidden
1024, where one step is measured too), for the links given by ``--links``.

Each rank runs one thread (``--threads``; the environment's OMP/NUMBA/BLAS
thread counts are set to it), so N ranks need N cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: the demo's model and step (fastrnn/cli/demo.py: cmd_demo)
DEMO = {"embed": 32, "hidden": 128, "batch": 32, "bptt": 64, "lr": 2e-2, "clip": 1.0}


def _mpiexec():
    own = Path(sys.executable).parent / "mpiexec"
    found = str(own) if own.exists() else shutil.which("mpiexec")
    if found is None:
        raise SystemExit("no mpiexec: pip install 'fastrnn[mpi]' (mpi4py and the mpich wheel)")
    return found


def _hydra(mpiexec):
    try:
        r = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "HYDRA" in r.stdout


# ------------------------------------------------------------------ worker
def worker(args):
    """One rank: train the demo LM for warm-up + timed steps; rank 0 prints
    one JSON line."""
    from mpi4py import MPI

    import fastrnn
    from fastrnn.cli import default_corpus
    from fastrnn.data import CharVocab, LMBatches
    from fastrnn.distributed import DistributedTrainer, rank_world
    from fastrnn.models import LanguageModel
    from fastrnn.optim import Adam

    fastrnn.set_num_threads(args.threads)
    comm = MPI.COMM_WORLD
    rank, world = rank_world()
    text = default_corpus()
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    per_rank = args.batch if args.mode == "weak" else args.batch / world
    global_batch = args.batch * world if args.mode == "weak" else args.batch
    model = LanguageModel(len(vocab), embed_dim=DEMO["embed"], hidden_size=args.hidden,
                          cell="lstm", seed=0)
    data = LMBatches(ids, global_batch, args.bptt, rank=rank, world=world)
    trainer = DistributedTrainer(model, Adam(model, lr=DEMO["lr"]), data,
                                 clip_norm=DEMO["clip"], progress=False)
    trainer.fit(steps=args.warmup)
    red = trainer.reducer
    s0 = red.seconds
    comm.Barrier()
    t0 = time.perf_counter()
    trainer.fit(steps=args.steps)
    wall = time.perf_counter() - t0
    in_ar = (red.seconds - s0) / args.steps
    # the same all-reduce alone, ranks in step (back-to-back calls keep them so)
    alone = 0.0
    if world > 1:
        buf = np.zeros_like(red._buf)
        for _ in range(3):
            comm.Allreduce(MPI.IN_PLACE, buf)
        comm.Barrier()
        t = time.perf_counter()
        for _ in range(args.ar_reps):
            comm.Allreduce(MPI.IN_PLACE, buf)
        alone = (time.perf_counter() - t) / args.ar_reps
    wall = comm.allreduce(wall, op=MPI.MAX)                # the slowest rank's time
    if rank == 0:
        step = wall / args.steps
        print(json.dumps({
            "ranks": world, "mode": args.mode, "hidden": args.hidden,
            "per_rank_batch": per_rank, "global_batch": global_batch,
            "params": model.num_params(),
            "grad_bytes": int(sum(v.nbytes for v in model.params.values())),
            "step_s": step, "chars_per_s": global_batch * args.bptt / step,
            "allreduce_in_step_s": in_ar, "allreduce_alone_s": alone,
            "steps": args.steps, "threads_per_rank": args.threads}), flush=True)


# ------------------------------------------------------------------ driver
def _launch(mpiexec, hydra, n, mode, args, hidden, steps, warmup):
    env = dict(os.environ)
    t = str(args.threads)
    env.update(OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, MKL_NUM_THREADS=t,
               NUMBA_NUM_THREADS=t)
    cmd = [mpiexec] + (["-launcher", "fork"] if hydra else []) + [
        "-n", str(n), sys.executable, os.path.abspath(__file__), "--worker",
        "--mode", mode, "--hidden", str(hidden), "--steps", str(steps),
        "--warmup", str(warmup), "--batch", str(args.batch), "--bptt", str(args.bptt),
        "--threads", t, "--ar-reps", str(args.ar_reps)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ring_allreduce_s(nbytes, n, latency_s, bytes_per_s):
    """Ring all-reduce time: ``2 (n-1)`` latencies and ``2 (n-1)/n`` of the
    buffer through each link (reduce-scatter, then all-gather)."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) * latency_s + 2 * (n - 1) / n * nbytes / bytes_per_s


def _links(specs):
    out = []
    for spec in specs:
        name, gbit, us = spec.split(":")
        out.append((name, float(gbit) * 1e9 / 8, float(us) * 1e-6))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--modes", nargs="+", choices=("weak", "strong"), default=["weak", "strong"])
    p.add_argument("--steps", type=int, default=30, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch", type=int, default=DEMO["batch"])
    p.add_argument("--bptt", type=int, default=DEMO["bptt"])
    p.add_argument("--hidden", type=int, default=DEMO["hidden"])
    p.add_argument("--big-hidden", type=int, default=1024,
                   help="also time one rank's step at this hidden size (0: skip)")
    p.add_argument("--big-steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads per rank")
    p.add_argument("--ar-reps", type=int, default=50, help="repetitions of the lone all-reduce")
    p.add_argument("--links", nargs="+", default=["10GbE:10:20", "100Gb-IB:100:2"],
                   metavar="NAME:GBIT:LATENCY_US", help="links of the scaling model")
    p.add_argument("--json", default=None, help="write the measurements here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="weak", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    mpiexec = _mpiexec()
    hydra = _hydra(mpiexec)
    rows = []
    for mode in args.modes:
        for n in args.ranks:
            rows.append(_launch(mpiexec, hydra, n, mode, args, args.hidden, args.steps,
                                args.warmup))
    big = None
    if args.big_hidden:
        big = _launch(mpiexec, hydra, 1, "weak", args, args.big_hidden, args.big_steps, 1)

    print(f"demo LSTM LM (hidden {args.hidden}, {rows[0]['params']:,} parameters, "
          f"{rows[0]['grad_bytes'] / 1e6:.2f} MB of gradients), BPTT {args.bptt}, "
          f"{args.threads} thread(s) per rank, {os.cpu_count()} cores; {args.steps} timed steps")
    print(f"{'ranks':>5} {'batch/rank':>10} {'global':>6} {'step ms':>8} {'char/s':>9} "
          f"{'speed-up':>8} {'allreduce ms':>12} {'share':>6} {'alone ms':>8}")
    for mode in args.modes:
        base = next(r for r in rows if r["mode"] == mode and r["ranks"] == min(args.ranks))
        print(f"  {mode} scaling:")
        for r in (r for r in rows if r["mode"] == mode):
            share = r["allreduce_in_step_s"] / r["step_s"]
            print(f"{r['ranks']:>5} {r['per_rank_batch']:>10g} {r['global_batch']:>6} "
                  f"{r['step_s'] * 1e3:>8.1f} {r['chars_per_s']:>9,.0f} "
                  f"{r['chars_per_s'] / base['chars_per_s']:>7.2f}x "
                  f"{r['allreduce_in_step_s'] * 1e3:>12.2f} {share:>6.1%} "
                  f"{r['allreduce_alone_s'] * 1e3:>8.3f}")

    # ---- the ring all-reduce model
    one = next(r for r in rows if r["ranks"] == 1 and r["mode"] == "weak") if 1 in args.ranks \
        else None
    sizes = []
    if one is not None:
        sizes.append((f"hidden {args.hidden}", one["params"], one["grad_bytes"], one["step_s"]))
    if big is not None:
        sizes.append((f"hidden {args.big_hidden}", big["params"], big["grad_bytes"], big["step_s"]))
    if sizes:
        print("\nring all-reduce model, per-rank batch "
              f"{args.batch} x {args.bptt}: t_ar(N) = 2(N-1) a + 2(N-1)/N S/bw; "
              "efficiency = t_step / (t_step + t_ar) (no overlap of communication and compute)")
        for name, params, nbytes, step in sizes:
            print(f"  {name}: {params:,} parameters, S = {nbytes / 1e6:.1f} MB, one-rank step "
                  f"{step * 1e3:.0f} ms")
            for link, bw, lat in _links(args.links):
                cells = []
                for n in (2, 8, 64):
                    t = ring_allreduce_s(nbytes, n, lat, bw)
                    cells.append(f"N={n}: {t * 1e3:.2f} ms ({step / (step + t):.0%})")
                print(f"    {link:<9} " + "   ".join(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": rows, "big": big, "cores": os.cpu_count()}, f, indent=1)
        print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
