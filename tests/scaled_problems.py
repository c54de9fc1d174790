"""Float32 GRU classifiers whose adjoint outgrows float32's range (shared by the scaled-fallback
tests, ``tests/test_scaled_fallback.py``, and their MPI script ``tests/mpi/scaled_case.py``)."""
import numpy as np

import mgritnn
from test_scaled_adjoint import chaotic_problem


def exploding_model(cell="classic", layers=1, T=1000, B=3, H=16, gain=3.0, seed=1):
    """A float32 GRUClassifier (input 3, hidden H, 2 classes) with the weights of
    ``test_scaled_adjoint.chaotic_problem`` (a chaotic forward: the adjoint grows exponentially
    backward in time, far beyond float32's range at T = 1000); inputs X (B, T, 3), labels y (B,).
    The implicit cell's step is dt = 8 (its adjoint grows as fast as the classic cell's at 1)."""
    p, x, _, rng = chaotic_problem(layers, T, B, H, (gain,) * layers, (1.0,) * layers, seed)
    m = mgritnn.GRUClassifier(3, H, 2, num_layers=layers, cell=cell, dtype="float32", seed=seed,
                                dt=8.0 if cell == "implicit" else 1.0)
    for k, v in p.items():
        m.params[k][...] = v
    return m, np.ascontiguousarray(x.transpose(1, 0, 2)), rng.integers(0, 2, B)


def true_direction(grad):
    """The unit vector of ``grad`` in float64: the true gradient's direction (a scaled gradient,
    2^-E times the true one, has it too; the true norm may exceed even float64's range)."""
    g = grad.astype(np.float64)
    return g / np.linalg.norm(g)
