"""The communicators of a training run: the world, a data group's time ranks, and the data
groups of one time block (``--data-parallel``)."""
import time

import numpy as np

from ..distributed import SelfComm, TimeComm, get_comm, split_data_time

__all__ = ["_Ranks"]


class _Ranks:
    """The communicators of a run: world, time (one data group) and data (same time block).

    Parameters
    ----------
    comm : mpi4py communicator or None
        The run's ranks (None: MPI's world under a launcher, else one process).
    data_parallel : int
        Number of data groups; the world is split into ``data_parallel`` x time ranks.

    Attributes
    ----------
    world, time, data : communicators
    rank, size : int
        This rank and the world's size.
    group : int
        This rank's data group (0 .. ``groups`` - 1).
    groups : int
    root : bool
        This is rank 0 of the world (it writes the outputs).
    """

    def __init__(self, comm, data_parallel):
        self.world = get_comm(comm)
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        if self.size == 1 and data_parallel == 1:
            self.time, self.data, self.group = self.world, SelfComm(), 0
        else:
            self.time, self.data, self.group = split_data_time(self.world, data_parallel)
        self.groups = data_parallel
        self.root = self.rank == 0
        self._over_world, self._over_data = TimeComm(self.world), TimeComm(self.data)

    def sum_over_data(self, arr):
        """Sum an array over the data groups (returns the sum)."""
        return arr if self.groups == 1 else self._over_data.allreduce(arr)

    def max_over_world(self, values):
        """The largest of ``values`` (float64 array) over all ranks, entry by entry."""
        return self._over_world.allreduce(np.asarray(values, np.float64), op="max")

    def sum_over_world(self, values):
        """The sum of ``values`` (float64 array) over all ranks, entry by entry."""
        return self._over_world.allreduce(np.asarray(values, np.float64))

    def share(self, idx):
        """This data group's share of the rows ``idx`` of a batch (int ndarray, shape (b_g,))."""
        return np.array_split(idx, self.groups)[self.group]

    def common_scale(self, grad, exponent):
        """Put the data groups' gradients on one scale: ``grad`` is 2^-``exponent`` times this
        rank's gradient (a scaled adjoint's); returns it rescaled to the largest exponent of
        any rank, and that exponent (collective with several ranks)."""
        if self.size == 1:
            return grad, exponent
        top = int(self.max_over_world([exponent])[0])
        if top != exponent:
            grad = np.ldexp(grad, exponent - top).astype(grad.dtype)
        return grad, top

    def reduce_batch(self, batch, loss, grad, info, times):
        """Sum this data group's share of a batch's loss, gradient and correct count over the
        groups (each weighted by its share of the batch), and take the largest step counts
        over the ranks.

        Parameters
        ----------
        batch : Batch
        loss : float
            This group's mean loss.
        grad : ndarray, shape (P,), float32 or float64
            This group's flat gradient of its mean loss.
        info : dict
            The diagnostics of ``loss_and_grad_flat`` (its ``logits``, (b_g, C), and times).
        times : dict
            The epoch's seconds: the solves' times and the waits are added.

        Returns
        -------
        grad : ndarray, shape (P,)
            The gradient of the whole batch's mean loss.
        loss, n_correct : numpy scalars of ``grad``'s dtype
        evals : ndarray, shape (2,), float64
            Forward and adjoint step evaluations, the most of any rank.
        """
        weight = len(batch.part) / len(batch.idx)
        t0 = time.perf_counter()
        stats = self.sum_over_data(np.concatenate(
            [grad * grad.dtype.type(weight),
             np.array([loss * weight, np.sum(np.argmax(info["logits"], 1) == batch.y)],
                      grad.dtype)]))
        times["wait"] += (time.perf_counter() - t0 + info["time_reduce"]
                          + info["forward"].wait_time + info["adjoint"].wait_time)
        times["forward"] += info["time_forward"]
        times["adjoint"] += info["time_adjoint"]
        evals = self.max_over_world([info["forward"].step_evals, info["adjoint"].step_evals])
        return stats[:-2], stats[-2], stats[-1], evals
