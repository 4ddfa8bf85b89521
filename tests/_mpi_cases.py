"""The training set-ups of the MPI tests, built the same way by the mpiexec
worker (tests/_mpi_worker.py, W ranks) and by the test itself (the one-process
reference), so that the two runs differ only in the world size.

float64 and the NumPy reference backend: the comparison is then limited by
summation order alone (about 1e-15), and no process compiles a kernel."""
import numpy as np

from fastrnn.data import ArrayBatches, LMBatches
from fastrnn.models import LanguageModel, SequenceClassifier
from fastrnn.optim import Adam

LM_BATCH = 6          # global rows; 3 per rank at W=2
LM_BPTT = 7
LM_EPOCHS = 2
LM_PAUSE = 5          # steps before the mid-epoch checkpoint (epoch 1 has 9 steps)
CLF_N = 41            # 41 = 5 * 8 + 1: the last global batch has one sample, so
CLF_BATCH = 8         # rank 0's shard of it is empty at W=2
CLF_EPOCHS = 3


def lm_ids():
    rng = np.random.default_rng(1)
    return rng.integers(0, 13, 400)


def lm_setup(rank=0, world=1):
    """(model, optimizer, train data, val data, trainer kwargs) of the LM case."""
    ids = lm_ids()
    model = LanguageModel(13, embed_dim=5, hidden_size=8, backend="numpy", dtype="float64",
                          seed=3)
    train = LMBatches(ids[:340], LM_BATCH, LM_BPTT, rank=rank, world=world)
    val = LMBatches(ids[340:], 4, LM_BPTT, rank=rank, world=world)
    return model, Adam(model, lr=1e-2), train, val, {"clip_norm": 0.5, "seed": 5}


def clf_arrays():
    rng = np.random.default_rng(2)
    lengths = rng.integers(2, 9, CLF_N)
    X = rng.standard_normal((CLF_N, 8, 3))
    X[np.arange(8)[None, :] >= lengths[:, None]] = 0.0
    y = (X[:, 0, 0] + X[:, 1, 1] > 0).astype(np.int64)
    return X, y, lengths


def clf_setup(rank=0, world=1):
    """(model, optimizer, train data, val data, trainer kwargs) of the
    classifier case: ragged lengths, length buckets, an empty shard."""
    X, y, lengths = clf_arrays()
    model = SequenceClassifier(2, input_size=3, hidden_size=6, backend="numpy",
                               dtype="float64", seed=4)
    train = ArrayBatches(X, y, lengths=lengths, batch_size=CLF_BATCH, bucket=True,
                         rank=rank, world=world)
    val = ArrayBatches(X[:13], y[:13], lengths=lengths[:13], batch_size=5, shuffle=False,
                       rank=rank, world=world)
    return model, Adam(model, lr=2e-2), train, val, {"clip_norm": 1.0, "seed": 6}
