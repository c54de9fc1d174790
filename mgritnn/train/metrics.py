"""The evaluation of a model: mean cross-entropy and accuracy on a data set, in batches."""
import numpy as np

from ..errors import DataError
from ..model import as_model_array, check_labels
from ..options import check_int
from ..runtime import entry_point

__all__ = ["evaluate"]


def _samples(model, X, y, lengths):
    """X (N, ...), y (N,) and lengths (N,) or None of :func:`evaluate`, checked before any solve:
    at least one sample; y one label per sample in the model's classes; lengths one per sample
    (DataError otherwise, naming the fix)."""
    if not hasattr(X, "shape"):
        X = as_model_array(X, model.dtype)
    if X.ndim == 0:
        raise DataError("X must be an array of samples, got a scalar")
    N = len(X)
    if N == 0:
        raise DataError("X is empty (no samples): need at least one to evaluate")
    y = check_labels(y, N, model.num_classes)
    if lengths is not None:
        try:
            shape = np.shape(lengths)
        except ValueError:
            shape = None
        if shape != (N,):
            raise DataError(f"lengths must have shape ({N},), one per sequence, got {shape}: "
                            "pass exactly one entry per sample, in the order of X")
        lengths = np.asarray(lengths)
    return X, y, lengths


@entry_point
def evaluate(model, X, y, batch_size=100, solver="serial", comm=None, lengths=None, pad="end"):
    """Mean cross-entropy and accuracy of ``model`` on (X, y), in batches (exact serial forward by default).

    Parameters
    ----------
    X : ndarray, shape (N, T, I)
    y : ndarray, shape (N,), int
        Labels in 0 .. C-1, one per sample (a DataError otherwise, before any solve; X itself is
        checked by ``model.forward``, batch by batch, as in
        :func:`~mgritnn.model.as_model_array`).
    batch_size : int
        Samples per forward call.
    solver : str or solver config
    comm : communicator, optional
        With the serial solver, the ranks of ``comm`` share the batches (batch k on rank
        k mod P) and gather the logits: every rank returns the same result, which does not depend
        on the number of ranks (the batches are the same).
    lengths : ndarray, shape (N,), int, optional
        True lengths of variable-length sequences (1 .. T; see :meth:`GRUClassifier.forward`).
    pad : {"end", "front"}
        Where their padding lies.

    Returns
    -------
    dict with ``loss`` (float), ``accuracy`` (float in [0, 1]) and ``logits`` (N, C)
    """
    batch_size = check_int("batch_size", batch_size, least=1)
    X, y, lengths = _samples(model, X, y, lengths)
    N = len(X)
    starts = range(0, N, batch_size)

    def fwd(i):
        part = None if lengths is None else lengths[i:i + batch_size]
        return model.forward(X[i:i + batch_size], solver, lengths=part, pad=pad)

    if comm is None or comm.Get_size() == 1 or solver != "serial":
        logits = np.concatenate([fwd(i) for i in starts])
    else:
        rank, size = comm.Get_rank(), comm.Get_size()
        mine = {i: fwd(i) for i in starts[rank::size]}
        parts = {}
        for d in comm.allgather(mine):
            parts.update(d)
        logits = np.concatenate([parts[i] for i in starts])
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1))
    loss = float(np.mean(lse - shifted[np.arange(len(y)), y]))
    return dict(loss=loss, accuracy=float(np.mean(np.argmax(logits, 1) == y)), logits=logits)
