"""Data-parallel training and sharded inference over MPI (fastrnn.distributed).

The sharding of the data helpers is checked in this process. Everything
that needs MPI runs as ``mpiexec -n 2`` (or ``-n 1``) subprocesses of
tests/_mpi_worker.py or of the CLI, with timeouts, one thread per rank;
this process never starts MPI itself. The one-process references are
computed here with the plain Trainer on the same set-ups (tests/_mpi_cases.py).

The mpiexec tests are skipped when mpi4py or mpiexec is missing
(``pip install 'fastrnn[mpi]'``; ``make install`` installs it, so CI runs them).
"""
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import _mpi_cases as cases
from fastrnn.data import ArrayBatches, LMBatches, shard_range
from fastrnn.train import Trainer

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_mpi_worker.py"


# ------------------------------------------------------------------ launching
def _mpiexec():
    """The venv's mpiexec (the mpich wheel puts it beside python), else PATH's."""
    own = Path(sys.executable).parent / "mpiexec"
    return str(own) if own.exists() else shutil.which("mpiexec")


@functools.lru_cache(maxsize=None)
def _hydra():
    """Is mpiexec MPICH's Hydra (which takes -launcher and -disable-auto-cleanup)?"""
    try:
        r = subprocess.run([_mpiexec(), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "HYDRA" in r.stdout


def _have_mpi():
    import importlib.util
    # find the package only: importing mpi4py.MPI would start MPI in this process
    return importlib.util.find_spec("mpi4py") is not None and _mpiexec() is not None


needs_mpi = pytest.mark.skipif(not _have_mpi(), reason="needs mpi4py and mpiexec: "
                               "pip install 'fastrnn[mpi]' (make install does)")


def _env(**extra):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    # one thread per rank: two ranks on the two cores of the CI machine
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1", FASTRNN_MPI_TIMEOUT="60")
    env.update(extra)
    return env


def mpirun(n, *argv, cwd, timeout=120, launcher_args=(), **env):
    """``mpiexec -n n argv...`` in ``cwd``; returns (CompletedProcess, seconds).
    With Hydra the fork launcher is named: in a container there is no ssh."""
    cmd = [_mpiexec()] + (["-launcher", "fork"] if _hydra() else []) + list(launcher_args)
    cmd += ["-n", str(n), *map(str, argv)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True,
                       timeout=timeout)
    return r, time.perf_counter() - t0


def _params(path):
    """The parameters in an .npz (a model file's are the ``param/`` entries)."""
    with np.load(path) as f:
        keys = [k for k in f.files if k.startswith("param/")] or f.files
        return {k.removeprefix("param/"): f[k] for k in keys}


def assert_same_params(a, b, atol=1e-12):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=atol, err_msg=k)


# ------------------------------------------------ references (one process)
def _reference(setup, epochs, pause=None, resume=None, save_at_pause=None):
    model, opt, tr, va, kw = setup()
    t = Trainer(model, opt, tr, va, progress=False, **kw)
    if resume is not None:
        t.resume(resume)
    if pause is not None:
        t.fit(epochs, steps=pause)
        if save_at_pause is not None:
            t.save_checkpoint(save_at_pause)
    t.fit(epochs)
    return model.state_dict(), t.history


@pytest.fixture(scope="module")
def lm_ref():
    return _reference(cases.lm_setup, cases.LM_EPOCHS)


@pytest.fixture(scope="module")
def clf_ref():
    return _reference(cases.clf_setup, cases.CLF_EPOCHS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The worker's train scenario at 2 ranks (also resuming the LM from a
    checkpoint one process wrote mid-epoch) and at 1 rank."""
    if not _have_mpi():
        pytest.skip("needs mpi4py and mpiexec: pip install 'fastrnn[mpi]'")
    out = tmp_path_factory.mktemp("mpi")
    ckpt_w1 = out / "lm_mid_w1_by_trainer.npz"
    _reference(cases.lm_setup, cases.LM_EPOCHS, pause=cases.LM_PAUSE, save_at_pause=ckpt_w1)
    for n, extra in ((2, [ckpt_w1]), (1, [])):
        r, _ = mpirun(n, sys.executable, WORKER, "train", out, *extra, cwd=out)
        assert r.returncode == 0, f"mpiexec -n {n} failed:\n{r.stdout}\n{r.stderr}"
    return out


# ------------------------------------------------------------- sharding (no MPI)
@pytest.mark.parametrize("n", [0, 1, 2, 7, 12])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_range_tiles_in_rank_order(n, world):
    parts = [shard_range(n, r, world) for r in range(world)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("bad, err", [((5, 2, 2), ValueError), ((5, -1, 2), ValueError),
                                      ((5, 0, 0), ValueError), ((5, 0.5, 2), TypeError),
                                      ((-1, 0, 1), ValueError), ((5, True, 2), TypeError)])
def test_shard_range_rejects_bad_arguments(bad, err):
    with pytest.raises(err, match="rank|world|n "):
        shard_range(*bad)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("bucket", [False, True])
def test_array_batches_shards_cover_every_sample_once(world, bucket):
    n, b = 23, 4                         # the last global batch has 3 rows
    lengths = np.random.default_rng(0).integers(1, 6, n)
    whole = ArrayBatches(np.arange(n), lengths=lengths, batch_size=b, bucket=bucket)
    shards = [ArrayBatches(np.arange(n), lengths=lengths, batch_size=b, bucket=bucket,
                           rank=r, world=world) for r in range(world)]
    assert all(len(s) == len(whole) for s in shards)
    for seed in (0, 1):                  # two epochs' shuffles
        ref = [bt[0] for bt in whole.batches(np.random.default_rng(seed))]
        got = [[bt[0] for bt in s.batches(np.random.default_rng(seed))] for s in shards]
        for k, batch in enumerate(ref):
            # each global batch is the ranks' shards, in rank order
            np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), batch)
        seen = np.concatenate([x for g in got for x in g])
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))


def test_array_batches_can_give_a_rank_an_empty_shard():
    # 9 = 2 * 4 + 1: the last global batch has one sample, rank 0's shard of it is empty
    s0 = ArrayBatches(np.arange(9), np.arange(9) * 2, batch_size=4, shuffle=False, rank=0, world=2)
    last = list(s0.batches(np.random.default_rng(0)))[-1]
    assert [a.shape for a in last] == [(0,), (0,)]


def test_lm_batches_shards_are_rows_of_the_global_batch():
    ids = np.arange(200)
    whole = LMBatches(ids, 5, 7)
    parts = [LMBatches(ids, 5, 7, rank=r, world=2) for r in range(2)]
    assert all(len(p) == len(whole) for p in parts)
    for (x, y), *shards in zip(whole.batches(), *(p.batches() for p in parts)):
        np.testing.assert_array_equal(np.concatenate([s[0] for s in shards], axis=1), x)
        np.testing.assert_array_equal(np.concatenate([s[1] for s in shards], axis=1), y)
    seen = np.concatenate([s[0].ravel() for p in parts for s in p.batches()])
    np.testing.assert_array_equal(np.sort(seen), np.arange(whole.n_steps * 5))


def test_data_helpers_reject_bad_rank_world():
    with pytest.raises(ValueError, match="smaller than world"):
        LMBatches(np.arange(100), 2, 5, rank=0, world=3)
    with pytest.raises(ValueError, match=r"rank must be in \[0, world\)"):
        ArrayBatches(np.arange(10), rank=2, world=2)
    with pytest.raises(TypeError, match="world must be an integer"):
        ArrayBatches(np.arange(10), rank=0, world=2.0)


# ------------------------------------------------------ without mpi4py
def test_without_mpi4py_import_works_and_use_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)          # import mpi4py -> ImportError
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    import fastrnn
    from fastrnn import distributed
    assert hasattr(fastrnn, "Trainer") and distributed.available() is False
    with pytest.raises(ImportError, match=r"pip install 'fastrnn\[mpi\]'"):
        distributed.get_comm()
    model, opt, tr, va, kw = cases.lm_setup()
    with pytest.raises(ImportError, match=r"fastrnn\[mpi\]"):
        distributed.DistributedTrainer(model, opt, tr, va, **kw)
    from fastrnn.cli import main
    rc = main(["train", "lm", "--data", "x.txt", "--distributed"])
    assert rc == 2 and "fastrnn[mpi]" in capsys.readouterr().err


def test_bad_arguments_are_refused_before_mpi_starts():
    from fastrnn import distributed
    with pytest.raises(ValueError, match="bucket_bytes"):
        distributed.GradientReducer(bucket_bytes=0)
    with pytest.raises(ValueError, match="timeout"):
        distributed.GradientReducer(timeout=-1)
    with pytest.raises(ValueError, match="different numbers of rows"):
        distributed.sharded_apply(len, np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="callable"):
        distributed.sharded_apply(None, np.zeros(3))


def test_timeout_from_the_environment(monkeypatch):
    from fastrnn.distributed import default_timeout
    monkeypatch.delenv("FASTRNN_MPI_TIMEOUT", raising=False)
    assert default_timeout() == 300.0
    monkeypatch.setenv("FASTRNN_MPI_TIMEOUT", "none")
    assert default_timeout() is None
    monkeypatch.setenv("FASTRNN_MPI_TIMEOUT", "2.5")
    assert default_timeout() == 2.5
    monkeypatch.setenv("FASTRNN_MPI_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="FASTRNN_MPI_TIMEOUT"):
        default_timeout()


# ----------------------------------------------------- mpiexec: training
@needs_mpi
def test_two_ranks_equal_one_process_language_model(runs, lm_ref):
    params, history = lm_ref
    assert_same_params(_params(runs / "lm_w2.npz"), params)
    h2 = json.loads((runs / "lm_w2.json").read_text())
    assert h2["epoch"] == history["epoch"]
    for key in ("loss", "val_loss"):                 # reduced over the ranks
        np.testing.assert_allclose(h2[key], history[key], rtol=1e-12)


@needs_mpi
def test_two_ranks_equal_one_process_classifier_with_uneven_and_empty_shards(runs, clf_ref):
    params, history = clf_ref
    assert_same_params(_params(runs / "clf_w2.npz"), params)
    got = json.loads((runs / "clf_w2.json").read_text())
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(got["history"][key], history[key], rtol=1e-12)
    # one step per global batch, each reduced in one (bucketed) exchange
    assert got["allreduce_calls"] == cases.CLF_EPOCHS * -(-cases.CLF_N // cases.CLF_BATCH)


@needs_mpi
def test_one_rank_distributed_trainer_is_the_trainer_bit_for_bit(runs, lm_ref, clf_ref):
    for name, (params, _) in (("lm", lm_ref), ("clf", clf_ref)):
        got = _params(runs / f"{name}_w1.npz")
        assert all(np.array_equal(got[k], params[k]) for k in params), name


@needs_mpi
def test_sharded_epochs_cover_every_sample_exactly_once(runs):
    seen = json.loads((runs / "clf_w2.json").read_text())["seen"]       # [rank][epoch][step]
    X, y, lengths = cases.clf_arrays()
    whole = ArrayBatches(np.arange(cases.CLF_N), lengths=lengths, batch_size=cases.CLF_BATCH,
                         bucket=True)
    g = np.random.default_rng(6)                     # the trainer's seed in clf_setup
    empty = 0
    for epoch in range(2):
        ref = [b[0].tolist() for b in whole.batches(g)]
        assert len(seen[0][epoch]) == len(seen[1][epoch]) == len(ref)
        for k, batch in enumerate(ref):
            assert seen[0][epoch][k] + seen[1][epoch][k] == batch
            empty += not seen[0][epoch][k] or not seen[1][epoch][k]
        flat = sorted(i for r in (0, 1) for b in seen[r][epoch] for i in b)
        assert flat == list(range(cases.CLF_N))
    assert empty == 2                                # the 1-sample last batch, each epoch


@needs_mpi
def test_only_rank_zero_prints_logs_and_writes_checkpoints(runs):
    bar0 = (runs / "progress_r0.txt").read_text()
    assert bar0.count("epoch ") == cases.CLF_EPOCHS and "val_accuracy" in bar0
    assert (runs / "log_r0.txt").read_text().count("epoch ") == cases.CLF_EPOCHS
    assert (runs / "progress_r1.txt").read_text() == ""
    assert (runs / "log_r1.txt").read_text() == ""
    assert (runs / "clf_ckpt_r0.npz").exists() and not (runs / "clf_ckpt_r1.npz").exists()


@needs_mpi
def test_data_sharded_for_another_world_is_refused(runs):
    msg = json.loads((runs / "clf_w2.json").read_text())["refused"]
    assert msg and "rank 0 of 3" in msg and "rank=0, world=2" in msg


@needs_mpi
def test_resume_across_world_sizes(runs, lm_ref):
    params, _ = lm_ref
    # written by 2 ranks mid-epoch: the carried state is the global batch's
    with np.load(runs / "lm_mid_w2.npz") as f:
        assert f["carry/0"].shape[1] == cases.LM_BATCH
    # ... resumed by one process
    got, _ = _reference(cases.lm_setup, cases.LM_EPOCHS, resume=runs / "lm_mid_w2.npz")
    assert_same_params(got, params)
    # written by one process mid-epoch, resumed by 2 ranks
    assert_same_params(_params(runs / "lm_from_w1_w2.npz"), params)


# ------------------------------------------------- mpiexec: a rank that dies
@needs_mpi
def test_a_rank_that_exits_makes_the_other_fail_with_a_clear_error(tmp_path):
    if not _hydra():
        pytest.skip("needs MPICH's mpiexec (-disable-auto-cleanup)")
    # the launcher is told not to clean up: the survivor must notice by itself
    r, took = mpirun(2, sys.executable, WORKER, "die", "exit", 3, cwd=tmp_path, timeout=90,
                     launcher_args=["-disable-auto-cleanup"], FASTRNN_MPI_TIMEOUT="4")
    assert r.returncode != 0 and took < 60
    assert "rank 1 exits now" in r.stderr
    assert "rank 0 of 2: the gradient all-reduce of step 3 did not complete within 4 s" in r.stderr
    assert "rank 0 of 2 failed (DistributedError): aborting all ranks" in r.stderr
    assert "finished" not in r.stdout


@needs_mpi
def test_a_rank_that_exits_under_the_default_launcher_ends_the_job(tmp_path):
    r, took = mpirun(2, sys.executable, WORKER, "die", "exit", 3, cwd=tmp_path, timeout=90)
    assert r.returncode != 0 and took < 60 and "finished" not in r.stdout


@needs_mpi
def test_an_exception_on_one_rank_aborts_all_ranks(tmp_path):
    # a generous collective timeout: the abort, not the timeout, must end it
    r, took = mpirun(2, sys.executable, WORKER, "die", "raise", 2, cwd=tmp_path, timeout=90,
                     FASTRNN_MPI_TIMEOUT="600")
    assert r.returncode != 0 and took < 60
    assert "RuntimeError: worker: rank 1 fails on purpose" in r.stderr
    assert "rank 1 of 2 failed (RuntimeError): aborting all ranks" in r.stderr


# --------------------------------------------------- mpiexec: device arrays
@needs_mpi
def test_device_gradients_staged_and_cuda_aware(tmp_path):
    pytest.importorskip("numba.cuda")
    r, _ = mpirun(2, sys.executable, WORKER, "device", tmp_path, cwd=tmp_path,
                  NUMBA_ENABLE_CUDASIM="1")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "device.json").read_text())
    for how in ("False", "True"):        # host-staged, then in device memory
        d = res[how]
        # rank 0: 1 sample, value 1 / 10; rank 1: 3 samples, value 2 / 20
        assert d["total"] == 4 and d["loss"] == pytest.approx(0.75)
        np.testing.assert_allclose(d["dev"], np.full((2, 3), 7 / 4))
        np.testing.assert_allclose(d["host"], np.full(4, 70 / 4))


# ------------------------------------------------------------ mpiexec: CLI
def _csv(path, n=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = ["label," + ",".join(f"x{i}" for i in range(6))]
    for _ in range(n):
        x = rng.standard_normal(6)
        rows.append(("up" if x[:3].sum() > 0 else "down") + "," + ",".join(f"{v:.4f}" for v in x))
    path.write_text("\n".join(rows) + "\n")


def _fastrnn(*argv, cwd):
    r = subprocess.run([sys.executable, "-m", "fastrnn", *map(str, argv)], cwd=cwd, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


@needs_mpi
def test_cli_two_ranks_train_classify_and_predict(tmp_path):
    _csv(tmp_path / "rows.csv")
    args = ["train", "classify", "--data", "rows.csv", "--hidden", "8", "--epochs", "2",
            "--batch-size", "16", "--backend", "numpy", "--no-plot"]
    r, _ = mpirun(2, sys.executable, "-m", "fastrnn", *args, "--out", "m2.npz",
                  "--checkpoint", "c2", "--distributed", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # rank 0 alone speaks: each line once, one progress line per epoch
    assert r.stdout.count("model saved to") == 1 and r.stdout.count("validation accuracy") == 1
    assert r.stderr.count("epoch 1/2") == 1 and r.stderr.count("epoch 2/2") == 1
    assert (tmp_path / "m2.history.json").exists() and (tmp_path / "c2.npz").exists()
    # the same command in one process, not distributed: the same model (float32 rounding)
    _fastrnn(*args, "--out", "m1.npz", "--no-progress", cwd=tmp_path)
    assert_same_params(_params(tmp_path / "m2.npz"), _params(tmp_path / "m1.npz"), atol=2e-5)
    # predict: rows split over the ranks, one output in input order
    pred = ["predict", "--model", "m1.npz", "--data", "rows.csv", "--proba"]
    r, _ = mpirun(2, sys.executable, "-m", "fastrnn", *pred, "--distributed", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    one = _fastrnn(*pred, cwd=tmp_path)
    assert r.stdout == one.stdout and r.stdout.count("\n") == 61


@needs_mpi
@pytest.mark.parametrize("task", ["lm", "forecast"])
def test_cli_two_ranks_train_lm_and_forecast(tmp_path, task):
    if task == "lm":
        (tmp_path / "d.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
        extra = ["--bptt", "16", "--batch-size", "4"]
    else:
        t = np.arange(300)
        (tmp_path / "d.txt").write_text("y\n" + "\n".join(f"{np.sin(v / 8):.5f}" for v in t))
        extra = ["--window", "12", "--batch-size", "16"]
    r, _ = mpirun(2, sys.executable, "-m", "fastrnn", "train", task, "--data", "d.txt",
                  "--hidden", "8", "--epochs", "1", "--backend", "numpy", "--no-plot",
                  "--no-progress", "--out", "m.npz", "--distributed", *extra, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("model saved to") == 1 and (tmp_path / "m.npz").exists()


@needs_mpi
def test_cli_error_on_all_ranks_ends_the_job(tmp_path):
    r, took = mpirun(2, sys.executable, "-m", "fastrnn", "train", "lm", "--data", "missing.txt",
                     "--distributed", cwd=tmp_path, timeout=90)
    assert r.returncode != 0 and took < 60
    assert "fastrnn: error: (rank" in r.stderr and "no such file: missing.txt" in r.stderr


def test_info_says_how_gpu_gradients_travel(capsys):
    from fastrnn.cli import main
    assert main(["info"]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("MPI:")]
    assert len(line) == 1
    if _have_mpi():
        assert "staged through host memory" in line[0] or "CUDA-aware" in line[0]
    else:
        assert "fastrnn[mpi]" in line[0]


def test_public_api_is_documented_and_typed():
    import inspect

    from fastrnn import distributed
    from test_docs import _documented
    for cls in (distributed.DistributedTrainer, distributed.GradientReducer):
        doc = inspect.getdoc(cls)
        sig = inspect.signature(cls.__init__)
        missing = [name for name, p in sig.parameters.items() if name != "self" and not (
            f"**{name}" in doc if p.kind is p.VAR_KEYWORD else name in _documented(doc))]
        assert not missing, f"{cls.__name__} does not document {missing}"
        assert all(p.annotation is not inspect.Parameter.empty
                   for name, p in sig.parameters.items() if name != "self"), cls
    for name in distributed.__all__:
        obj = getattr(distributed, name)
        if not callable(obj) or isinstance(obj, type):
            continue
        doc = inspect.getdoc(obj)
        sig = inspect.signature(obj)
        assert doc and sig.return_annotation is not inspect.Parameter.empty, name
        for p in sig.parameters.values():
            assert p.annotation is not inspect.Parameter.empty, f"{name}({p.name})"
            assert f"{p.name.lstrip('*')} :" in doc or f"*{p.name} :" in doc, f"{name}({p.name})"
