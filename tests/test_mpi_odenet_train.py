"""``mgritnn train --model odenet`` under mpiexec: the layers split over the ranks give the
one-process training (MGRIT at fixed settings: the same on 1, 2 and 3 ranks up to the order of
sums; at a tight tolerance, full-batch L-BFGS equals serial L-BFGS)."""
import numpy as np
import pytest

from mgritnn.io import read_npz
from mgritnn.odenet import odenet_shapes
from mgritnn.train import TrainConfig, train
from mpi_util import find_mpiexec, run_mpi

pytestmark = pytest.mark.skipif(find_mpiexec() is None, reason="no mpiexec")

COMMON = ["--model", "odenet", "--data", "peaks", "--width", "4", "--activation", "smoothrelu",
          "--dtype", "float64", "--quiet", "--threads", "1"]
CFG = dict(model="odenet", data="peaks", width=4, activation="smoothrelu", dtype="float64",
           threads=1)


def flat_of(path):
    arrays, meta = read_npz(path)
    m = meta["model"]
    names = [n for n, _ in odenet_shapes(m["num_features"], m["width"], m["num_classes"],
                                         m["depth"], m["opening"])]
    return np.concatenate([arrays[n].ravel() for n in names]), meta


def test_lbfgs_on_two_ranks_equals_serial_lbfgs(tmp_path):
    """Tight MGRIT over the layers on 2 ranks: every rank runs SciPy's identical iterations on
    the broadcast loss and gradient, and they are serial L-BFGS's (1e-9)."""
    ck = tmp_path / "ck.npz"
    ref, hist = train(TrainConfig(**CFG, depth=8, epochs=4, optimizer="lbfgs"), out=lambda *a: 0,
                      progress=False)
    r = run_mpi(2, "cli.py", "train", *COMMON, "--depth", "8", "--epochs", "4", "--optimizer",
                "lbfgs", "--solver", "mgrit", "--levels", "2", "--cf", "2", "--max-iter", "60",
                "--adjoint-max-iter", "60", "--atol-l2", "1e-15", "--checkpoint", ck, timeout=300,
                check=True)
    assert r.stdout.count("epoch ") == 4
    got, meta = flat_of(ck)
    np.testing.assert_allclose(got, ref.flat, rtol=1e-9, atol=1e-12)
    assert abs(meta["history"][-1]["loss"] - hist[-1]["loss"]) < 1e-9


def test_mgrit_training_is_rank_independent(tmp_path):
    """Adam minibatches with nested iteration (depth 12, then 24), MGRIT at 2 cycles (not
    converged) on 2 and 3 ranks: the same parameters as one process, up to the order of sums."""
    flags = ["--depth", "24", "--nested-levels", "1", "--nested-epochs", "1", "--epochs", "1",
             "--batch-size", "500", "--max-batches", "3", "--lr", "0.02", "--solver", "mgrit",
             "--levels", "2", "--cf", "2", "--relax", "F", "--max-iter", "2",
             "--adjoint-max-iter", "2"]
    ref, hist = train(TrainConfig(**CFG, depth=24, nested_levels=1, nested_epochs=1, epochs=1,
                                  batch_size=500, max_batches=3, lr=0.02, solver="mgrit",
                                  solver_options=dict(levels=2, cf=2, relax="F", max_iter=2,
                                                      adjoint_max_iter=2)),
                      out=lambda *a: 0, progress=False)
    assert [h["depth"] for h in hist] == [12, 24]
    for P in (2, 3):
        ck = tmp_path / f"ck{P}.npz"
        r = run_mpi(P, "cli.py", "train", *flags, *COMMON, "--checkpoint", ck, timeout=300,
                    check=True)
        assert "depth 12 -> 24" in r.stdout
        got, meta = flat_of(ck)
        assert meta["history"][-1]["ranks"] == P
        np.testing.assert_allclose(got, ref.flat, rtol=1e-9, atol=1e-12)
