"""The full-batch L-BFGS driver (SciPy's L-BFGS-B): one epoch record per L-BFGS iteration."""
import numpy as np
from scipy.optimize import minimize

from .report import EpochTally, zero_times

__all__ = ["LBFGSDriver"]


class LBFGSDriver:
    """Full-batch L-BFGS on a trainer's current level of nested iteration.

    Every evaluation is the trainer's :meth:`~Trainer.gradient` of the whole training set
    (each data group its share); the loss and gradient SciPy sees are rank 0's, broadcast, so
    every rank runs the identical iterations. Each accepted iterate is an epoch: the trainer's
    :meth:`~Trainer.finish_epoch` evaluates, logs and checkpoints it.

    Parameters
    ----------
    trainer : Trainer
        Uses its public parts: ``model``, ``data``, ``ranks``, ``schedule``, ``times``,
        ``history``, :meth:`gradient`, :meth:`finish_epoch` and :meth:`stage_finished`.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def run(self, epoch):
        """Iterate from epoch ``epoch`` (0-based) for the rest of the level's budget (or until
        L-BFGS converges or stops); the model ends at the last accepted iterate and the level
        is over.

        Returns
        -------
        int
            The next epoch (0-based).
        """
        tr = self.trainer
        N = len(tr.data.X_train)
        full = tr.data.full_batch(epoch)
        run = dict(epoch=epoch, x=None, out=None, accepted=None)

        def new_iteration():
            tr.times = zero_times()
            run["tally"] = EpochTally()

        def fun(x):
            tr.model.flat[:] = x
            grad, r = tr.gradient(full._replace(epoch=run["epoch"]))
            out = np.concatenate([[r.loss, r.correct], grad]).astype(np.float64)
            if tr.ranks.size > 1:
                out = tr.ranks.world.bcast(out, root=0)     # nothing rank-local enters SciPy
            run.update(x=np.array(x, copy=True), out=out)
            run["tally"].add(r)
            return out[0], out[2:]

        def callback(intermediate_result):
            x = intermediate_result.x
            if run["x"] is None or not np.array_equal(x, run["x"]):
                fun(x)
            tr.model.flat[:] = x
            run["accepted"] = np.array(x, copy=True)
            tally = run["tally"]
            tally.loss, tally.accuracy = run["out"][0], run["out"][1] / N
            tr.finish_epoch(run["epoch"], tally)
            run["epoch"] += 1
            new_iteration()
            if tr.stage_finished(run["epoch"]):
                raise StopIteration

        new_iteration()
        x0 = tr.model.flat.astype(np.float64)
        minimize(fun, x0, jac=True, method="L-BFGS-B", callback=callback,
                 options=dict(maxiter=tr.schedule.budget_left(epoch)))
        tr.model.flat[:] = x0 if run["accepted"] is None else run["accepted"]
        tr.schedule.over = True                 # converged, stopped, or its budget spent
        return run["epoch"]
