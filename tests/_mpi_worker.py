"""Run under ``mpiexec -n W python tests/_mpi_worker.py SCENARIO OUT [...]``
by tests/test_distributed.py; writes what the test checks into the folder OUT.

Scenarios:

train OUT [CKPT_W1]
    The LM and classifier cases of _mpi_cases with DistributedTrainer: the
    LM pauses after LM_PAUSE steps to write a mid-epoch checkpoint (gathered
    carried state), then trains on; the classifier writes its progress and
    log to per-rank files and checkpoints to a per-rank path (only rank 0's
    may exist). The indices each rank's shards hold over two epochs are
    gathered. With CKPT_W1 (a checkpoint written by one process), the LM is
    also resumed from it and trained to the end.
die MODE STEP
    The LM case, where rank 1 ends at its STEP-th batch: MODE ``exit``
    (os._exit, no clean-up) or ``raise`` (an exception).
device OUT
    GradientReducer on device arrays (run with NUMBA_ENABLE_CUDASIM=1),
    staged through the host and with FASTRNN_MPI_CUDA_AWARE=1.
"""
import json
import os
import sys

import numpy as np

import _mpi_cases as cases
from fastrnn.data import ArrayBatches
from fastrnn.distributed import DistributedTrainer, GradientReducer, rank_world


def _save_params(path, model):
    np.savez(path, **model.params)


def train(out, ckpt_w1=None):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, world = rank_world()
    # --- data sharded for another world is refused (before any collective)
    model, opt, tr, va, kw = cases.lm_setup(0, world + 1)
    try:
        DistributedTrainer(model, opt, tr, va, progress=False, **kw)
        refused = None
    except ValueError as exc:
        refused = str(exc)
    # --- LM: pause mid-epoch, checkpoint (collective), continue
    model, opt, tr, va, kw = cases.lm_setup(rank, world)
    t = DistributedTrainer(model, opt, tr, va, progress=False, **kw)
    t.fit(cases.LM_EPOCHS, steps=cases.LM_PAUSE)
    assert t.stop_reason == "paused", t.stop_reason
    written = t.save_checkpoint(os.path.join(out, f"lm_mid_w{world}.npz"))
    assert (written is not None) == (rank == 0)
    t.fit(cases.LM_EPOCHS)
    if rank == 0:
        _save_params(os.path.join(out, f"lm_w{world}.npz"), model)
        with open(os.path.join(out, f"lm_w{world}.json"), "w") as f:
            json.dump(t.history, f)
    # --- LM resumed from a one-process checkpoint
    if ckpt_w1:
        model, opt, tr, va, kw = cases.lm_setup(rank, world)
        t = DistributedTrainer(model, opt, tr, va, progress=False, **kw)
        t.resume(ckpt_w1)
        t.fit(cases.LM_EPOCHS)
        if rank == 0:
            _save_params(os.path.join(out, f"lm_from_w1_w{world}.npz"), model)
    # --- classifier: rank-0-only progress, log and checkpoints
    model, opt, tr, va, kw = cases.clf_setup(rank, world)
    with open(os.path.join(out, f"progress_r{rank}.txt"), "w") as bar, \
            open(os.path.join(out, f"log_r{rank}.txt"), "w") as log:
        # tiny buckets: the gradient buffer goes out in several all-reduce calls
        t = DistributedTrainer(model, opt, tr, va, progress=True, file=bar,
                               log=lambda line: log.write(line + "\n"), bucket_bytes=256,
                               checkpoint=os.path.join(out, f"clf_ckpt_r{rank}.npz"), **kw)
        # the sample indices of this rank's shards in the next two epochs: the
        # same batching over arange(n), driven by the trainer's (shared) generator
        g = np.random.default_rng()
        g.bit_generator.state = t.rng.bit_generator.state
        index = ArrayBatches(np.arange(cases.CLF_N), lengths=tr.lengths, batch_size=tr.batch_size,
                             bucket=tr.bucket, rank=rank, world=world)
        seen = [[b[0].tolist() for b in index.batches(g)] for _ in range(2)]
        t.fit(cases.CLF_EPOCHS)
    seen_all = comm.gather(seen, root=0)
    if rank == 0:
        _save_params(os.path.join(out, f"clf_w{world}.npz"), model)
        with open(os.path.join(out, f"clf_w{world}.json"), "w") as f:
            json.dump({"history": t.history, "seen": seen_all, "refused": refused,
                       "allreduce_calls": t.reducer.calls}, f)


def die(mode, step):
    rank, world = rank_world()
    model, opt, tr, va, kw = cases.lm_setup(rank, world)
    calls = [0]
    inner = model.batch_loss

    def batch_loss(batch, train=True):
        calls[0] += 1
        if rank == 1 and calls[0] == step:
            if mode == "exit":
                sys.stderr.write("worker: rank 1 exits now\n")
                sys.stderr.flush()
                os._exit(3)
            raise RuntimeError("worker: rank 1 fails on purpose")
        return inner(batch, train)

    model.batch_loss = batch_loss
    DistributedTrainer(model, opt, tr, va, progress=False, **kw).fit(cases.LM_EPOCHS)
    print(f"rank {rank}: finished", flush=True)


def device(out):
    from numba import cuda
    rank, world = rank_world()
    res = {}
    for aware in (False, True):
        red = GradientReducer(cuda_aware=aware)
        grads = {"dev": cuda.to_device(np.full((2, 3), rank + 1.0)),
                 "host": np.full(4, 10.0 * (rank + 1))}
        count = 1 + 2 * rank            # rank 0: 1 sample, rank 1: 3
        total, loss, _ = red.reduce(grads, count, loss=float(rank))
        res[str(aware)] = {"dev": grads["dev"].copy_to_host().tolist(),
                           "host": grads["host"].tolist(), "total": total, "loss": loss}
    if rank == 0:
        with open(os.path.join(out, "device.json"), "w") as f:
            json.dump(res, f)


if __name__ == "__main__":
    scenario, args = sys.argv[1], sys.argv[2:]
    if scenario == "train":
        train(*args)
    elif scenario == "die":
        die(args[0], int(args[1]))
    elif scenario == "device":
        device(*args)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
