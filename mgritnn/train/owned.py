"""Owned layers: an ODENet's ranks (of a time-parallel solver) each update only their own block
of layers (and the shared opening and classifier), and store only that block.

The run's model is the rank's block model (:meth:`~mgritnn.odenet.ODENet.block`): its
:attr:`~mgritnn.odenet.ODENet.flat` holds the opening, the layers [lo, hi) =
``solver.local_steps(depth)`` and the classifier, so the gradient and the optimizer's state
(Adam's moments, SGD's momentum; laid out like the parameters) hold those rows only too: the
memory of the weights, gradient and optimizer state divides by the time ranks (up to the shared
opening and classifier, stored on every rank).

The reduction is the model's (``loss_and_grad_flat(..., owned=True)`` sums only the shared
parameters' gradient; :meth:`~mgritnn.odenet.ODENet.grad_norm` the norm for ``--clip``), and
Adam and SGD are row-local, so the updates of a rank's rows are the bits of the full-allreduce
path. The whole network exists only where something reads all layers: a checkpoint
(:meth:`OwnedLayers.checkpoint_arrays` gathers it to rank 0, so the file is the one of a run
that stores all layers and resumes on any number of ranks), nested iteration's refinement and
the end of training (:meth:`OwnedLayers.gathered`). Evaluation runs the block models' exact
serial forward pipelined over the time ranks (no copy of the network).

L-BFGS (and optimizer chains, weight decay) keep the whole network and the full allreduce on
every rank (``enabled`` False): its vectors are not distributed.
"""
from ..errors import ConfigError
from ..optim import state_to_arrays

__all__ = ["OwnedLayers"]


class OwnedLayers:
    """The layer ownership of a run's ranks.

    Parameters
    ----------
    solver : solver
        The time solver (its ``local_steps`` give a rank's block of layers).
    enabled : bool
        The ranks own their layers (else every method leaves the model whole and does nothing).
    """

    def __init__(self, solver, enabled):
        self.solver, self.enabled = solver, bool(enabled)

    def warm_up(self, model, compile_depth, depth):
        """``compile_depth(d)`` (the run's kernel compilation on a network of d layers) for a
        network as deep as ``model``'s block where this rank stores only its layers (the kernels
        are the same for every depth; its memory then never holds the whole network's gradient
        and states), else, or where the solver's hierarchy does not fit that depth, ``depth``."""
        if getattr(model, "is_block", False):
            lo, hi = model.held_layers
            try:
                return compile_depth(hi - lo)
            except ConfigError:
                pass
        return compile_depth(depth)

    def localize(self, model):
        """The model the run trains: ``model``'s block of this rank
        (:meth:`~mgritnn.odenet.ODENet.block`, a new model) when the ranks own their layers,
        else ``model``."""
        if not self.enabled or getattr(model, "is_block", True):
            return model
        return model.block(self.solver)

    def gathered(self, model):
        """The whole network of the block model ``model`` on every rank (collective; a new
        model), or ``model`` with every layer row current (:meth:`sync`)."""
        if getattr(model, "is_block", False):
            return model.gathered()
        self.sync(model)
        return model

    def param_arrays(self, model, arrays):
        """The entries of ``arrays`` (an iterable of ndarrays) laid out like ``model.flat``."""
        return [a for a in arrays if a.shape == model.flat.shape]

    def state_arrays(self, model, state):
        """Copies of the arrays of the optimizer state ``state`` laid out like the parameters
        (Adam's moments, SGD's momentum buffer; from :func:`~mgritnn.optim.state_to_arrays`):
        shape ``model.flat.shape`` ((P_block,) for a block model)."""
        return self.param_arrays(model, state_to_arrays(state).values())

    def sync(self, model, *arrays):
        """Make every layer row of ``model.flat`` (and of ``arrays``, laid out like it) current on
        every rank, from their owners, in place (collective over the time ranks; nothing for a
        block model, which stores no rows it does not own)."""
        if self.enabled:
            model.sync_layers(self.solver, model.flat, *arrays)

    def checkpoint_arrays(self, model, state):
        """The model and optimizer state a checkpoint holds (collective over the time ranks).

        Returns
        -------
        model : ODENet or GRUClassifier
            The whole network: gathered to time rank 0 from a block model (the other ranks get
            their block model back, which the checkpoint does not read), else ``model`` with
            every layer row current.
        arrays : dict of str to ndarray
            :func:`~mgritnn.optim.state_to_arrays` of ``state``; the arrays laid out like the
            parameters are the whole network's (P,) on rank 0 (gathered from the blocks).
        """
        arrays = state_to_arrays(state)
        if getattr(model, "is_block", False):
            for k, a in arrays.items():
                if a.shape == model.flat.shape:
                    full = model.gather_flat(a, root=0)
                    arrays[k] = a if full is None else full
            full = model.gathered(root=0)
            return (model if full is None else full), arrays
        if self.enabled:
            model.sync_layers(self.solver, model.flat,
                              *self.param_arrays(model, arrays.values()))
        return model, arrays

    def mask(self, model, arrays):
        """Lay out, in place, the entries of ``arrays`` (a dict of an optimizer state's
        checkpoint form) that are laid out like the whole network's parameters (P,) like
        ``model``: a block model's rows (:meth:`~mgritnn.odenet.ODENet.local_flat`); for a model
        that stores all layers, the rows of the layers this rank does not own are zeroed."""
        if not self.enabled:
            return
        if getattr(model, "is_block", False):
            for k, a in arrays.items():
                if getattr(a, "shape", None) == (model.full_size,):
                    arrays[k] = model.local_flat(a)
            return
        lo, hi = self.solver.local_steps(model.depth)
        for a in self.param_arrays(model, arrays.values()):
            rows = model.layer_rows(a)
            rows[:lo] = 0
            rows[hi:] = 0
