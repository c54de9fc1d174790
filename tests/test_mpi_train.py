"""``mgritnn train`` under mpiexec: MGRIT or DEER over time ranks, data groups, and their 2-D split
give the single-process result; bad input stops every rank with a message and a non-zero status."""
import numpy as np
import pytest

from mgritnn.io import read_npz
from mgritnn.train import TrainConfig, train
from mpi_util import run_mpi

COMMON = ["--seq-len", "32", "--hidden", "8", "--layers", "2", "--epochs", "2", "--max-batches",
          "3", "--batch-size", "40", "--dtype", "float64", "--quiet"]
CFG = dict(seq_len=32, hidden=8, layers=2, epochs=2, max_batches=3, batch_size=40, dtype="float64")
MGRIT = dict(levels=3, cf=2, max_iter=2, adjoint_max_iter=1)
MGRIT_FLAGS = ["--solver", "mgrit", "--levels", "3", "--cf", "2", "--max-iter", "2",
               "--adjoint-max-iter", "1"]


def reference(**kw):
    model, hist = train(TrainConfig(**CFG, **kw), out=lambda *a: None, progress=False)
    return model.flat, hist


@pytest.mark.parametrize("nprocs, flags, kw", [
    (2, MGRIT_FLAGS, dict(solver="mgrit", solver_options=MGRIT)),
    (2, ["--data-parallel", "2"], dict()),
    (4, MGRIT_FLAGS + ["--data-parallel", "2"], dict(solver="mgrit", solver_options=MGRIT)),
    (3, ["--solver", "deer", "--atol", "1e-12", "--rtol", "0"],
     dict(solver="deer", solver_options=dict(atol=1e-12, rtol=0.0))),
])
def test_parallel_training_equals_one_process(tmp_path, nprocs, flags, kw):
    """Time ranks change only the order of the gradient's sums; data groups split each batch
    (their row blocks differ, so the rounding does too): parameters agree to 1e-9 after 6 steps."""
    ck, log = tmp_path / "ck.npz", tmp_path / "log.jsonl"
    r = run_mpi(nprocs, "cli.py", "train", *COMMON, *flags, "--checkpoint", ck, "--log", log,
                timeout=300, check=True)
    assert r.stdout.count("epoch ") == 2           # one line per epoch, from rank 0 only
    arrays, meta = read_npz(ck)
    flat, hist = reference(**kw)
    got = np.concatenate([arrays[k].ravel() for k in _names(arrays)])
    np.testing.assert_allclose(got, flat, rtol=1e-9, atol=1e-12)
    assert meta["history"][-1]["ranks"] == nprocs
    assert abs(meta["history"][-1]["loss"] - hist[-1]["loss"]) < 1e-9


def _names(arrays):
    """Parameter names in the model's flat order."""
    from mgritnn.model import param_shapes
    L = sum(k.startswith("weight_hh_l") for k in arrays)
    I, H = arrays["weight_ih_l0"].shape[1], arrays["weight_hh_l0"].shape[1]
    C = arrays["head.bias"].shape[0]
    return [n for n, _ in param_shapes(I, H, C, L)]


def test_bad_input_under_mpi_stops_every_rank(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, X_train=np.full((10, 8, 2), np.nan, np.float32), y_train=np.zeros(10, int),
             X_test=np.zeros((4, 8, 2), np.float32), y_test=np.zeros(4, int))
    r = run_mpi(2, "cli.py", "train", "--data", bad, "--solver", "mgrit", "--levels", "2",
                timeout=120)
    assert r.returncode != 0 and "NaN" in r.output
    r = run_mpi(2, "cli.py", "train", *COMMON, timeout=120)     # serial solver on 2 time ranks
    assert r.returncode != 0 and "one rank of time" in r.output
    r = run_mpi(2, "cli.py", "train", "--model", "odenet", "--data", "peaks", "--solver", "deer",
                timeout=120)                                  # a solver that has no layer route
    assert r.returncode != 0 and "does not apply to --model odenet" in r.output


def test_auto_with_data_groups_runs_on_its_time_communicator(tmp_path):
    """--solver auto with --data-parallel equal to the ranks: every data group has one time rank,
    and auto's routes use that group's communicator (not MPI's world). All of auto's routes are
    exact to DEER's default tolerance, so the run agrees with serial training to about 1e-6."""
    ck = tmp_path / "ck.npz"
    r = run_mpi(2, "cli.py", "train", *COMMON, "--solver", "auto", "--data-parallel", "2",
                "--checkpoint", ck, timeout=300, check=True)
    assert r.stdout.count("epoch ") == 2
    _, meta = read_npz(ck)
    _, hist = reference()
    assert meta["history"][-1]["solver"] == "auto"
    assert abs(meta["history"][-1]["loss"] - hist[-1]["loss"]) < 1e-5 * abs(hist[-1]["loss"])


def test_resume_with_warm_states_is_bit_for_bit_under_mpi(tmp_path):
    """The fast preset remembers each sample's C-point states on every rank; the checkpoint holds
    every rank's, so a run interrupted after epoch 1 and resumed on 2 ranks ends bit for bit where
    the uninterrupted one does."""
    full, part = tmp_path / "full.npz", tmp_path / "part.npz"
    flags = [*COMMON, "--solver", "mgrit", "--preset", "fast"]
    run_mpi(2, "cli.py", "train", *flags, "--checkpoint", full, timeout=300, check=True)
    run_mpi(2, "cli.py", "train", *flags, "--epochs", "1", "--checkpoint", part, timeout=300,
            check=True)
    r = run_mpi(2, "cli.py", "train", *flags, "--checkpoint", part, "--resume", timeout=300,
                check=True)
    assert "warning" not in r.output
    a, ma = read_npz(full)
    b, mb = read_npz(part)
    assert set(a) == set(b) and any(k.startswith("warm/r1/") for k in a)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
