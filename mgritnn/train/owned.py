"""Owned layers: an ODENet's ranks (of a time-parallel solver) each update only their own block
of layers (and the shared opening and classifier); the other layer rows are stale on a rank
until :meth:`OwnedLayers.sync`.

The reduction is the model's (``loss_and_grad_flat(..., owned=True)`` sums only the shared
parameters' gradient; :meth:`~mgritnn.odenet.ODENet.grad_norm` the norm for ``--clip``); the
update stays row-local because the optimizer's state is zero in the rows a rank does not own
(masked updates: Adam and SGD move a row only where its gradient or state is nonzero).
"""
from ..optim import state_to_arrays

__all__ = ["OwnedLayers"]


class OwnedLayers:
    """The layer ownership of a run's ranks.

    Parameters
    ----------
    solver : solver
        The time solver (its ``local_steps`` give a rank's block of layers).
    enabled : bool
        The ranks own their layers' updates (else every method does nothing).
    """

    def __init__(self, solver, enabled):
        self.solver, self.enabled = solver, bool(enabled)

    def param_arrays(self, model, arrays):
        """The entries of ``arrays`` (an iterable of ndarrays) laid out like ``model.flat``."""
        return [a for a in arrays if a.shape == model.flat.shape]

    def state_arrays(self, model, state):
        """Copies of the arrays of the optimizer state ``state`` laid out like the parameters
        (Adam's moments, SGD's momentum buffer; from :func:`~mgritnn.optim.state_to_arrays`)."""
        return self.param_arrays(model, state_to_arrays(state).values())

    def sync(self, model, *arrays):
        """Make every layer row of ``model.flat`` (and of ``arrays``, laid out like it) current on
        every rank, from their owners, in place (collective over the time ranks)."""
        if self.enabled:
            model.sync_layers(self.solver, model.flat, *arrays)

    def checkpoint_arrays(self, model, state):
        """:func:`~mgritnn.optim.state_to_arrays` of ``state`` with every layer row current
        (from its owner), after those of ``model.flat`` (collective). The run's own state keeps
        zero rows where a rank does not own, so that they never move; the checkpoint holds the
        full state."""
        arrays = state_to_arrays(state)
        if self.enabled:
            model.sync_layers(self.solver, model.flat,
                              *self.param_arrays(model, arrays.values()))
        return arrays

    def mask(self, model, arrays):
        """Zero, in place, the rows of the layers this rank does not own in the entries of
        ``arrays`` (a dict of an optimizer state's checkpoint form) laid out like the
        parameters, so that their updates are zero."""
        if not self.enabled:
            return
        lo, hi = self.solver.local_steps(model.depth)
        for a in self.param_arrays(model, arrays.values()):
            rows = model.layer_rows(a)
            rows[:lo] = 0
            rows[hi:] = 0
