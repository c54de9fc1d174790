"""A stacked GRU with a linear classifier head on the last hidden state of the top layer.

Parameters live in one flat buffer with named views under PyTorch's names and shapes, so weights move
between ``mgritnn`` and ``torch.nn.GRU`` + ``torch.nn.Linear`` unchanged (``state_dict()`` and
``np.savez``); optimizers update the flat buffer in place.
"""
import time

import numpy as np

from .cells import GRUGrads, GRUWeights, get_cell
from .config import resolve_dtype
from .datasets import PAD_POLICIES, real_steps
from .errors import CheckpointError, DataError, SolverError
from .io import atomic_savez, read_npz
from .memory import check_memory, memory_estimate, param_shapes
from .options import check_choice, check_int, check_real
from .runtime import entry_point
from .solvers import Solver, make_solver


def _check_solve(stats, solver, what, strict):
    """Raise SolverError for a failed solve (see :attr:`SolveStats.failed`) when ``strict``."""
    if strict and stats.failed:
        raise SolverError(
            f"the {solver.name} {what} solve failed ({stats.message}), so its result is not the "
            "model's: give it more iterations, damping or an implicit coarse cell, lower the "
            "learning rate (the weights may have grown too large), or use another solver "
            "(strict=False returns the result anyway, with its statistics)", stats)


def _batch_integers(a, batch, name, message):
    """``a`` as int64 (batch,): integers, or floats with integer values; otherwise a DataError
    (``message`` for the values, one naming ``name`` for the shape)."""
    try:
        a = np.asarray(a)
    except (TypeError, ValueError):
        raise DataError(message) from None
    if a.shape != (batch,):
        raise DataError(f"{name} must have shape ({batch},), one per sequence, got {a.shape}: "
                        f"pass exactly one entry per sample of the batch, in the order of X")
    if not np.issubdtype(a.dtype, np.integer):
        if not (np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a))
                and np.all(a == np.round(a))):
            raise DataError(message)
    return a.astype(np.int64)


def as_model_array(X, dtype, name="X"):
    """``X`` as an array of the model's ``dtype``, checked: its entries real numbers (bool, int,
    unsigned, float; bool reads as 0/1; strings, complex numbers and objects are refused) and
    finite *after* the cast to ``dtype`` (a float64 value beyond float32's range is refused for a
    float32 model). Every model converts its inputs here (a DataError otherwise, naming the fix);
    the shape is the model's own check."""
    try:
        X = np.asarray(X)
    except (TypeError, ValueError) as e:        # ragged nested lists
        raise DataError(f"{name} is not a rectangular array of numbers ({e}): pad the sequences "
                        "to one shape (and pass their lengths)") from None
    if X.dtype.kind not in "biuf":
        what = {"c": "complex numbers", "U": "strings", "S": "bytes", "O": "Python objects",
                "M": "dates", "m": "time deltas", "V": "structured records"}.get(X.dtype.kind,
                                                                             X.dtype.name)
        raise DataError(f"{name} holds {what} (dtype {X.dtype}), the model takes real numbers: "
                        f"convert it, e.g. np.asarray({name}, dtype=float)"
                        + (" (take the real part or the magnitude explicitly)"
                           if X.dtype.kind == "c" else ""))
    if X.dtype.kind == "f" and not np.all(np.isfinite(X)):
        raise DataError(f"{name} contains NaN or inf: clean or impute the data first")
    with np.errstate(over="ignore", invalid="ignore"):
        out = X.astype(dtype, copy=False)
    if out.dtype.kind == "f" and not np.all(np.isfinite(out)):
        raise DataError(f"{name} has values beyond the range of the model's dtype "
                        f"{np.dtype(dtype).name} (largest magnitude {np.max(np.abs(X)):.3g}): "
                        "scale the data, or build the model with dtype='float64'")
    return out


def check_keys(keys, batch):
    """Warm-start sample ``keys`` as int64 (batch,), one per row of the batch, or None."""
    if keys is None:
        return None
    return _batch_integers(keys, batch, "keys", "keys must be integers (the samples' indices "
                           "in the data set)")


def check_labels(y, batch, num_classes):
    """Class labels ``y`` as int64 (batch,), checked to lie in 0 .. num_classes - 1 (DataError
    otherwise, naming the fix)."""
    y = _batch_integers(y, batch, "y", "labels y must be integers 0..C-1")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}, found "
                        f"{int(y.min())}..{int(y.max())}: relabel, or build the model with more classes")
    return y


def linear_head(features, weight, bias):
    """Logits of the affine classifier: ``features @ weight.T + bias``, (B, C)."""
    return features @ weight.T + bias


def softmax_cross_entropy_head(features, weight, bias, y, gweight, gbias):
    """The classifier head of every model: affine map, softmax, cross-entropy averaged over the
    batch, and its gradients.

    Parameters
    ----------
    features : ndarray, shape (B, H)
        What the head reads (the GRU's top state at the last step; the ODENet's last layer).
    weight : ndarray, shape (C, H)
    bias : ndarray, shape (C,)
    y : ndarray of int, shape (B,)
        Labels in 0 .. C-1 (checked by :func:`check_labels`).
    gweight, gbias : ndarray, shapes (C, H) and (C,)
        Receive the gradients of the mean loss (overwritten).

    Returns
    -------
    loss : float
        :math:`\\frac1B \\sum_b (\\log \\sum_c e^{z_{bc}} - z_{b y_b})`, computed with the max
        subtracted.
    logits : ndarray, shape (B, C)
    dfeatures : ndarray, shape (B, H)
        The gradient of the mean loss with respect to ``features``.
    """
    B = features.shape[0]
    logits = linear_head(features, weight, bias)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logsumexp = np.log(np.exp(shifted).sum(axis=1))
    loss = float(np.mean(logsumexp - shifted[np.arange(B), y]))
    dlogits = np.exp(shifted - logsumexp[:, None])
    dlogits[np.arange(B), y] -= 1
    dlogits /= B
    gweight[...] = dlogits.T @ features
    gbias[...] = dlogits.sum(axis=0)
    return loss, logits, dlogits @ weight


class FlatParamModel:
    """What every model shares: parameters in one flat buffer ``flat`` with named views
    ``params`` (laid out by ``self._shapes``, a list of (name, shape)), and the solvers it made
    from names and configs, made once and kept (``self._solvers``: a list of (spec, comm, solver),
    see :meth:`_solver`)."""

    def unflatten(self, vec):
        """Named views of a flat vector laid out like :attr:`flat`: dict name -> ndarray view."""
        out, i = {}, 0
        for name, shape in self._shapes:
            size = int(np.prod(shape))
            out[name] = vec[i:i + size].reshape(shape)
            i += size
        return out

    def set_params(self, params):
        """Copy parameters from a dict (e.g. a PyTorch ``state_dict`` converted to NumPy).

        Every name of :attr:`params` must be present with the same shape; extra keys are ignored.
        """
        for name, view in self.params.items():
            if name not in params:
                raise CheckpointError(f"parameter {name!r} is missing")
            v = np.asarray(params[name])
            if v.shape != view.shape:
                raise CheckpointError(
                    f"parameter {name!r} has shape {v.shape}, this model needs {view.shape}: "
                    "build the model with the checkpoint's sizes")
            view[...] = v

    def _solver(self, spec):
        """The solver of ``spec``, checked against this model's cell (:meth:`Solver.check`
        refuses a cell the solver cannot run, naming what it lacks).

        A solver instance is used as it is (its owner holds it and its
        :class:`~mgritnn.solvers.SolverState`). A name or a config is made into a solver
        (:func:`~mgritnn.solvers.make_solver`) on its first use and kept by its value (configs are
        frozen values), so its work arrays and its state (MGRIT's warm starts, auto's
        measurements) carry over between calls. A config that carries a communicator (deprecated:
        pass ``make_solver(config, comm)`` instead) is kept with that communicator object, so
        equal configs over different ranks do not share a solver."""
        if isinstance(spec, Solver) or not (isinstance(spec, str) or hasattr(spec, "make_solver")):
            solver = make_solver(spec)              # the instance itself, or a ConfigError
        else:
            comm = getattr(spec, "comm", None)
            found = [s for key, c, s in self._solvers if c is comm and key == spec]
            if found:
                solver = found[0]
            else:
                solver = make_solver(spec)
                self._solvers.append((spec, comm, solver))
        solver.check(self.cell)
        return solver


class GRUClassifier(FlatParamModel):
    """Sequence classifier: an L-layer GRU over time, a linear head on the top layer's last state.

    Parameters
    ----------
    input_size, hidden_size, num_classes, num_layers : int
    cell : {"classic", "implicit", "implicit-newton"}
        ``classic`` is ``torch.nn.GRU``; ``implicit`` the implicit GRU of Moon & Cyr (2022);
        ``implicit-newton`` the fully implicit step (backward Euler, gates at the new state),
        solved by Newton per batch row (:mod:`mgritnn.cells.newton`). A cell instance is taken as
        is (``NewtonGRUCell(NewtonConfig(...))`` for other Newton options; files record its name).
    dtype : {"float32", "float64"}
    seed : int
        Initialization as PyTorch: every weight and bias uniform in :math:`\\pm 1/\\sqrt{H}`.
    dt : float
        Step size of the cell (1.0 for the classic GRU).

    Attributes
    ----------
    flat : ndarray, shape (P,)
        All parameters; ``params`` holds named views into it.
    params : dict of str -> ndarray
        ``weight_ih_l{k}`` (3H, I_k), ``weight_hh_l{k}`` (3H, H), ``bias_ih_l{k}`` (3H,),
        ``bias_hh_l{k}`` (3H,), ``head.weight`` (C, H), ``head.bias`` (C,).
    """

    #: The model's name in checkpoints (``meta["model_type"]``) and on the command line (--model).
    model_type = "gru"

    def __init__(self, input_size, hidden_size, num_classes, num_layers=1, cell="classic",
                 dtype="float32", seed=0, dt=1.0):
        self.input_size = check_int("input_size", input_size, least=1)
        self.hidden_size = check_int("hidden_size", hidden_size, least=1)
        self.num_classes = check_int("num_classes", num_classes, least=1)
        self.num_layers = check_int("num_layers", num_layers, least=1)
        self.cell = get_cell(cell)
        self.dtype = resolve_dtype(dtype)
        seed = check_int("seed", seed, least=0)
        self.dt = check_real("dt", dt, low=0, low_open=True)
        self._shapes = param_shapes(self.input_size, self.hidden_size, self.num_classes,
                                    self.num_layers)
        check_memory(memory_estimate(self.input_size, self.hidden_size, self.num_classes,
                                     self.num_layers, self.dtype))
        self.flat = np.empty(sum(int(np.prod(s)) for _, s in self._shapes), self.dtype)
        self.params = self.unflatten(self.flat)
        self._solvers = []
        bound = 1.0 / np.sqrt(self.hidden_size)
        self.flat[:] = np.random.default_rng(seed).uniform(-bound, bound, self.flat.size)

    # -- parameters ----------------------------------------------------------------------------

    @property
    def config(self):
        """The constructor arguments that fix the parameter shapes and the computation (JSON-able)."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_classes=self.num_classes, num_layers=self.num_layers, cell=self.cell.name,
                    dtype=np.dtype(self.dtype).name, dt=self.dt)

    def weights(self):
        """The GRU stack's weights as the kernels use them (:class:`GRUWeights`)."""
        return GRUWeights.from_params(self.params, self.num_layers)

    # -- computation ---------------------------------------------------------------------------

    def _time_major(self, X):
        X = as_model_array(X, self.dtype)
        if X.ndim != 3:
            raise DataError(f"X must have shape (batch, time, features), got an array of shape {X.shape}")
        if X.shape[2] != self.input_size:
            raise DataError(f"X has {X.shape[2]} features per step, the model expects "
                            f"{self.input_size}: use data with {self.input_size} channels or build "
                            f"the model with input_size={X.shape[2]}")
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise DataError(f"X is empty (shape {X.shape}): need at least one sequence and one step")
        return np.ascontiguousarray(np.swapaxes(X, 0, 1))

    def _check_labels(self, y, batch):
        return check_labels(y, batch, self.num_classes)

    def _check_batch_memory(self, batch, steps, keep):
        """Refuse a batch of ``batch`` rows and ``steps`` local time steps (and, with ``keep``,
        the gradient) that clearly cannot fit in the memory left (see :func:`check_memory`)."""
        e = memory_estimate(self.input_size, self.hidden_size, self.num_classes, self.num_layers,
                            self.dtype, batch, steps, keep=keep)
        more = e["weights"] + (self.flat.nbytes if keep else 0)    # the parameters exist already
        check_memory(dict(e, model=more, initialization=0, total=more + e["batch"]))

    def step_sizes(self, lengths, T, B, pad="end"):
        """The step sizes of a batch of sequences with true lengths ``lengths``: ``dt`` at the
        real steps and 0 at the padded ones, where a step is the identity (h' = h exactly), so
        the last state h_T of every row is its state at its true end.

        Parameters
        ----------
        lengths : array_like of int, shape (B,), or None
            True lengths, 1 .. T; None: every sequence has all T steps.
        T, B : int
            Steps and rows of the padded batch.
        pad : {"end", "front"}
            Where the padding lies: after the real steps, or before them.

        Returns
        -------
        float or ndarray, shape (T, B), the model's dtype
            :attr:`dt` itself when no row is padded (the computation is then bit for bit the
            one without lengths), else the per-step, per-row step sizes.

        Raises
        ------
        DataError
            ``lengths`` is not (B,) integers in 1 .. T.
        """
        check_choice("pad", pad, PAD_POLICIES)
        if lengths is None:
            return self.dt
        lengths = _batch_integers(lengths, B, "lengths", "lengths must be integers 1..T (the "
                                  "number of real steps of each sequence)")
        if B and (lengths.min() < 1 or lengths.max() > T):
            raise DataError(f"lengths must lie in 1..{T} (the padded length T), found "
                            f"{int(lengths.min())}..{int(lengths.max())}: drop empty sequences, "
                            "or pad the batch to its longest sequence")
        if np.all(lengths == T):
            return self.dt
        return np.where(real_steps(lengths, T, pad).T, self.dt, 0.0).astype(self.dtype)

    def _hidden(self, Xt, solver, keep, keys=None, dt=None):
        """Solve for the hidden states from this rank's steps of the inputs (the solver projects
        them); ``dt`` the step sizes of the whole batch (default :attr:`dt`)."""
        w = self.weights()
        T = Xt.shape[0]
        lo, hi = solver.local_steps(T)
        self._check_batch_memory(Xt.shape[1], hi - lo, keep)
        h0 = np.zeros((self.num_layers, Xt.shape[1], self.hidden_size), self.dtype)
        h_last, state, stats = solver.forward(self.cell, w, Xt[lo:hi], h0,
                                              self.dt if dt is None else dt, keep=keep, T=T,
                                              keys=keys)
        return w, h_last, state, stats

    def _head(self, h_last):
        return linear_head(h_last[-1], self.params["head.weight"], self.params["head.bias"])

    @entry_point
    def forward(self, X, solver="serial", strict=True, lengths=None, pad="end"):
        """Logits of a batch.

        Parameters
        ----------
        X : array_like, shape (B, T, I)
            Batch-first, as users hold data: real numbers (float, int, or bool read as 0/1),
            finite in the model's dtype; anything else is a DataError before any solve
            (:func:`as_model_array`; ``y``, ``keys``, ``lengths``: one per sample).
        solver : str or solver config
        strict : bool
            Raise :class:`~mgritnn.errors.SolverError` when the solve diverged or gave NaN/inf
            (False: return its result anyway).
        lengths : array_like of int, shape (B,), optional
            True lengths of variable-length sequences (1 .. T): the padded steps are identity
            steps (step size 0, :meth:`step_sizes`), so the head reads each row's state at its
            true end. What the padded steps hold does not matter. None: all T steps are real.
        pad : {"end", "front"}
            Where the padding of a shorter sequence lies (after or before its real steps).

        Returns
        -------
        ndarray, shape (B, C), the model's dtype
        """
        Xt = self._time_major(X)
        dt = self.step_sizes(lengths, Xt.shape[0], Xt.shape[1], pad)
        solver = self._solver(solver)
        _, h_last, _, stats = self._hidden(Xt, solver, keep=False, dt=dt)
        _check_solve(stats, solver, "forward", strict)
        logits = self._head(h_last) if solver.is_last else None
        return solver.reduce(np.zeros(0, self.dtype), 0.0, logits,
                             (Xt.shape[1], self.num_classes))[2]

    def predict(self, X, solver="serial", lengths=None, pad="end"):
        """Predicted classes, ndarray of shape (B,), int64 (``lengths``, ``pad`` as in
        :meth:`forward`)."""
        return np.argmax(self.forward(X, solver, lengths=lengths, pad=pad), axis=1)

    @entry_point
    def loss_and_grad_flat(self, X, y, solver="serial", keys=None, strict=True, lengths=None,
                           pad="end", scaled=False):
        """Mean softmax cross-entropy and its gradient as a flat vector laid out like :attr:`flat`.

        ``keys`` (B,) ints name the samples (their indices in the data set) for solvers that
        remember them between calls (MGRIT's warm start). ``lengths`` (B,) ints 1 .. T and
        ``pad`` as in :meth:`forward`: the padded steps are identity steps, so the loss and its
        gradient are those of each sequence at its own length. With ``strict`` (the default) a forward
        or adjoint solve that diverged or gave NaN/inf raises :class:`~mgritnn.errors.SolverError`
        (its ``stats`` say how); NOT_CONVERGED (a fixed cycle count) is only reported in ``info``.

        Exploding gradients: the serial sweep keeps the adjoint's scale in a power-of-two exponent
        E (``info["exponent"]``). By default the gradient is returned at its true scale (entries
        beyond the dtype's range are inf, as a plain sweep gives); with ``scaled=True`` it is
        returned as 2^-E times the true gradient, its direction exact to round-off, so that
        global-norm clipping works at any length (the trainer's ``--clip``).

        Returns
        -------
        loss : float
        grad : ndarray, shape (P,), the model's dtype
        info : dict
            ``logits`` (B, C), the solvers' ``forward`` / ``adjoint`` :class:`SolveStats`, and
            ``time_forward`` / ``time_adjoint`` (seconds, the latter including the head and the
            weight gradients).
        """
        Xt = self._time_major(X)
        y = self._check_labels(y, Xt.shape[1])
        keys = check_keys(keys, Xt.shape[1])
        dt = self.step_sizes(lengths, Xt.shape[0], Xt.shape[1], pad)
        solver = self._solver(solver)
        t0 = time.perf_counter()
        w, h_last, state, fstats = self._hidden(Xt, solver, keep=True, keys=keys, dt=dt)
        _check_solve(fstats, solver, "forward", strict)
        t1 = time.perf_counter()
        grad = np.zeros_like(self.flat)
        g = self.unflatten(grad)
        loss, logits, lam_last = 0.0, None, None
        if solver.is_last:                       # the head lives on the rank owning point N
            lam_last = np.zeros_like(h_last)
            loss, logits, lam_last[-1] = softmax_cross_entropy_head(
                h_last[-1], self.params["head.weight"], self.params["head.bias"], y,
                g["head.weight"], g["head.bias"])
        _, astats = solver.adjoint(self.cell, w, state, lam_last,
                                   GRUGrads.from_params(g, self.num_layers))
        _check_solve(astats, solver, "adjoint", strict)
        E = int(astats.exponent)
        if E:                   # the GRU's gradients are at 2^-E, the head's at 1: one scale
            for name in ("head.weight", "head.bias"):
                g[name][...] = np.ldexp(g[name], -E)
            if not scaled:
                with np.errstate(over="ignore"):
                    grad = np.ldexp(grad, E).astype(grad.dtype)
                E = 0
        t2 = time.perf_counter()
        grad, loss, logits = solver.reduce(grad, loss, logits, (Xt.shape[1], self.num_classes))
        return loss, grad, dict(logits=logits, forward=fstats, adjoint=astats, time_forward=t1 - t0,
                                time_adjoint=t2 - t1, time_reduce=time.perf_counter() - t2,
                                exponent=E)

    def loss_and_grad(self, X, y, solver="serial", keys=None, strict=True, info=False,
                      lengths=None, pad="end"):
        """Mean softmax cross-entropy of a batch and its gradient.

        Parameters
        ----------
        X : array_like, shape (B, T, I)
        y : array_like of int, shape (B,), labels in 0..C-1
        solver : str, solver config or solver
            A config object is made into a solver on its first use and that solver is kept for
            later calls with the same object (see :meth:`loss_and_grad_flat`).
        keys : array_like of int, shape (B,), optional
            The samples' indices in the data set, for solvers that remember samples between calls
            (MGRIT's ``initial_guess="warm"``, e.g. ``MGRITConfig.preset("fast")``).
        strict : bool
            Raise :class:`~mgritnn.errors.SolverError` for a diverged or non-finite solve.
        info : bool
            Also return the solves' statistics.
        lengths : array_like of int, shape (B,), optional
            True lengths (1 .. T) of variable-length sequences; the padded steps are identity
            steps (see :meth:`forward`).
        pad : {"end", "front"}
            Where the padding lies.

        Returns
        -------
        loss : float
        grads : dict of str -> ndarray, the keys and shapes of :attr:`params`
        info : dict, only if ``info``
            As from :meth:`loss_and_grad_flat`: ``forward`` and ``adjoint``
            :class:`~mgritnn.solvers.base.SolveStats`, ``logits``, times.
        """
        loss, grad, stats = self.loss_and_grad_flat(X, y, solver, keys=keys, strict=strict,
                                                    lengths=lengths, pad=pad)
        return (loss, self.unflatten(grad), stats) if info else (loss, self.unflatten(grad))

    # -- files ---------------------------------------------------------------------------------

    def save(self, path):
        """Write the parameters (PyTorch names) and the model's configuration to ``path`` (.npz), atomically."""
        atomic_savez(path, self.params, meta=dict(kind="model", model=self.config))


#: Checkpoint model types (``meta["model_type"]``) -> model class; mgritnn.odenet adds "odenet".
MODEL_TYPES = {"gru": GRUClassifier}


def model_from_meta(meta, path="checkpoint"):
    """Build an (uninitialized) model from checkpoint metadata: a :class:`GRUClassifier`, or an
    :class:`~mgritnn.odenet.ODENet` where ``meta["model_type"] == "odenet"``."""
    if not meta or "model" not in meta:
        raise CheckpointError(f"{path!r} has no mgritnn model metadata; was it written by mgritnn?")
    kind = meta.get("model_type", "gru")
    if kind not in MODEL_TYPES:
        raise CheckpointError(f"{path!r} holds a model of unknown type {kind!r}: it was written "
                              "by a newer mgritnn, or is not an mgritnn file")
    return MODEL_TYPES[kind](**meta["model"])


def load(path):
    """Load a model written by :meth:`GRUClassifier.save` (or a training checkpoint)."""
    arrays, meta = read_npz(path)
    m = model_from_meta(meta, path)
    m.set_params(arrays)
    return m
