"""The ODENet's ranks own their layers' updates (``Trainer.owned``): under mpiexec -n 2 and 3,
``tests/mpi/owned_case.py`` checks the gradient each rank holds after the reduction (its own layer
rows, zeros elsewhere, the shared parts summed), the regularization against one process, training
with Adam, SGD (momentum) and --clip against the full-allreduce path (bitwise; clip: to
round-off), that the rows a rank does not own never move before the sync, and checkpoint/resume
bit for bit."""
import pytest

from mpi_util import find_mpiexec, run_mpi

pytestmark = pytest.mark.skipif(find_mpiexec() is None, reason="no mpiexec")


@pytest.mark.parametrize("P", [2, 3])
def test_owned_layers(tmp_path, P):
    r = run_mpi(P, "owned_case.py", tmp_path, timeout=300, check=True)
    for what in ("gradient", "adam", "sgd", "clip", "still adam", "still sgd", "resume adam",
                 "resume sgd"):
        assert r.stdout.count(f"ok {what}") == P, r.stdout
