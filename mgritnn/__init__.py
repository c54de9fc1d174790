"""mgritnn: parallel-in-time training of GRU networks (MGRIT and DEER) with numba and MPI."""
from . import config  # noqa: F401  (caps BLAS threads before NumPy loads a BLAS)
from .errors import CheckpointError, ConfigError, DataError, MgritnnError
from .model import GRUClassifier, load

__version__ = "0.1.0"

__all__ = ["GRUClassifier", "load", "MgritnnError", "DataError", "ConfigError", "CheckpointError",
           "__version__"]
