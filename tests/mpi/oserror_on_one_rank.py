"""``mgritnn`` command line where rank 1 alone meets an operating-system error it does not wrap.

Usage (under mpiexec; see ``tests/mpi_util.run_mpi``)::

    mpiexec -n P python -m mpi4py tests/mpi/oserror_on_one_rank.py PATH train ...

On rank 1 only, loading the data raises ``PermissionError(EACCES, ..., PATH)``, as reading a file
without permission would; rank 0 goes on and blocks in the first collective of training. ``main``
must report one line ``mgritnn: error: [rank 1] cannot access 'PATH': Permission denied ...`` and
end every rank with status 2 (not a traceback with status 1, not a hang).
"""
import errno
import sys

from mpi4py import MPI

import mgritnn.datasets
from mgritnn.cli import main


def fail(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", sys.argv[1])


if MPI.COMM_WORLD.Get_rank() == 1:
    mgritnn.datasets.load = fail
sys.exit(main(sys.argv[2:]))
