"""``mgritnn`` command line under mpiexec: ``mpiexec -n P python -m mpi4py cli.py train ...``."""
import sys

from mgritnn.cli import main

sys.exit(main(sys.argv[1:]))
