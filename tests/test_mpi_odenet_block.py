"""Layer-parallel memory: under mpiexec -n 2, 3 and 4, ``tests/mpi/block_case.py`` checks that a
rank's ODENet stores only its own layers (the block model's sizes, the trainer's Adam and SGD
state), that it computes the whole network's bits (gradient, loss, --clip's norm, the pipelined
forward of evaluation, a training run's parameters, history and checkpoint file against the
full-allreduce path; on 4 ranks also with 2 data groups), and that a checkpoint of P ranks resumes on P - 1."""
import pytest

from mpi_util import find_mpiexec, run_mpi

pytestmark = pytest.mark.skipif(find_mpiexec() is None, reason="no mpiexec")


@pytest.mark.parametrize("P", [2, 3, 4])
def test_block_models(tmp_path, P):
    r = run_mpi(P, "block_case.py", tmp_path, timeout=300, check=True)
    for what in ("block", "train adam", "train sgd", "data groups", f"resume on {P - 1}"):
        assert r.stdout.count(f"ok {what}") == P, r.stdout
