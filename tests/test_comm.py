"""The time-communication service (``mgritnn.distributed.timecomm``): every operation on one
process (no MPI) and under ``mpiexec -n 2/3/4`` in both directions; the tags of different kinds of
messages never collide; no solver talks to MPI by itself."""
import pathlib

import numpy as np
import pytest

from mgritnn.distributed import TAGS, SelfComm, TimeComm
from mgritnn.distributed.timecomm import tag
from mgritnn.io import read_npz
from mpi_util import run_mpi


def test_one_process_needs_no_mpi():
    tc = TimeComm(SelfComm())
    assert (tc.rank, tc.size, tc.left, tc.right) == (0, 1, None, None)
    recv = np.full(2, -1.0)
    tc.shift(np.ones(2), recv, "mgrit-forward")
    assert np.all(recv == -1.0)                       # nobody before the first rank
    tc.recv_prev(recv, "deer-sweep")
    tc.send_next(recv, "deer-sweep")
    x = np.array([1.0, 2.0])
    s = tc.allreduce(x)
    assert np.array_equal(s, x) and s is not x
    assert np.array_equal(tc.allgather(x), [x])
    assert np.array_equal(tc.bcast(x.copy(), root=0), x)
    assert TimeComm(tc).comm is tc.comm


def test_tags_of_kinds_and_levels_never_collide():
    tags = {tag(k, i) for k in TAGS for i in range(100)}
    assert len(tags) == 100 * len(TAGS)
    with pytest.raises(ValueError):
        tag("mgrit-forward", 100)


def test_no_solver_imports_mpi4py():
    """Only mgritnn.distributed talks to mpi4py (and the CLI, which reports its version)."""
    root = pathlib.Path(__file__).resolve().parents[1] / "mgritnn"
    files = [*root.glob("solvers/*.py"), *root.glob("cells/*.py"), *root.glob("train/*.py"),
             *root.glob("plan/*.py"), root / "model.py"]
    for f in files:
        text = f.read_text()
        assert "import mpi4py" not in text and "from mpi4py" not in text, f


@pytest.mark.parametrize("P", [2, 3, 4])
def test_every_operation_under_mpi(tmp_path, P):
    out = tmp_path / "out.npz"
    run_mpi(P, "timecomm_case.py", out, timeout=120, check=True)
    arrays, _ = read_npz(out)
    assert np.array_equal(arrays["total"], [P * (P - 1) / 2, P])
