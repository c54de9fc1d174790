"""The training loop: data -> solve -> loss -> adjoint -> gradient -> optimizer -> log -> checkpoint.

A run is fixed by a :class:`TrainConfig`. :class:`Trainer` runs its epochs and composes the named
parts, each in its own module: the data and batches (:mod:`.data`), the communicators
(:mod:`.ranks`), the per-model adapter (:mod:`.models`), the checkpointer (:mod:`.checkpoint`),
the reporter (:mod:`.report`), nested iteration's schedule (:mod:`.nested`), the L-BFGS driver
(:mod:`.lbfgs`), the gradients' quality (:mod:`.quality`) and the owned layers (:mod:`.owned`).

Nothing is lost: every output path is checked before the first batch; a checkpoint is written
only with finite parameters, loss and optimizer state, and a write that fails (or a run killed
during it) leaves the previous checkpoint as it was.
"""
import contextlib
import os
import time
from typing import NamedTuple

import numpy as np

from ..distributed import SelfComm, default_threads
from ..errors import ConfigError, DivergenceError, SolverError
from ..optim import EmptyState, apply_updates, chain, clip_by_global_norm, make_optimizer
from ..runtime import blas_threads, compile_rank0_first, numba_threads
from ..plan import planned_solver
from .checkpoint import Checkpointer, all_finite
from .data import TrainData
from .lbfgs import LBFGSDriver
from .metrics import evaluate
from .models import adapter_for, build_model
from .nested import NestedSchedule
from .owned import OwnedLayers
from .quality import GradientQuality
from .ranks import _Ranks
from .report import EpochTally, Reporter, batch_record, zero_times

__all__ = ["StepResult", "Trainer", "optimizer_from_config", "train"]


class StepResult(NamedTuple):
    """What :meth:`Trainer.step` did, reduced over the data groups (the same on every rank).

    Attributes
    ----------
    loss : float
        Mean cross-entropy over the whole batch (before the update).
    correct : float
        Samples of the whole batch classified correctly.
    evals : ndarray, shape (2,), float64
        Step evaluations of the forward and adjoint solves, the largest over the ranks.
    info : dict
        This rank's diagnostics of :meth:`GRUClassifier.loss_and_grad_flat`.
    """

    loss: float
    correct: float
    evals: np.ndarray
    info: dict


def optimizer_from_config(cfg, norm=None):
    """The optimizer of ``cfg``: ``make_optimizer(cfg.optimizer, ...)``, after
    ``clip_by_global_norm(cfg.clip, norm)`` when ``cfg.clip`` is set (``norm``: the gradient's
    norm function, default :func:`~mgritnn.optim.clip.global_norm`).

    Returns
    -------
    GradientTransformation
    """
    opt = make_optimizer(cfg.optimizer, **cfg.optimizer_kwargs())
    return opt if cfg.clip is None else chain(clip_by_global_norm(cfg.clip, norm), opt)


def _optimizer(cfg, optimizer, splits_layers, grad_norm):
    """The run's gradient transformation (``optimizer``, else the config's; None for L-BFGS),
    its name for messages, and whether the ranks own their layers' updates.

    They own them (``splits_layers``: the model and solver allow it) only with a row-local
    optimizer: the config's Adam or SGD without weight decay (which would move the rows a rank
    does not own); with ``--clip`` the norm is then ``grad_norm`` (summed over the ranks).
    L-BFGS and optimizer chains keep the full allreduce.
    """
    if cfg.optimizer == "lbfgs":
        if optimizer is not None:
            raise ConfigError("an optimizer chain replaces --optimizer adam or sgd, not "
                              "lbfgs: drop optimizer= or use --optimizer adam/sgd")
        return None, "lbfgs", False
    if optimizer is not None:
        return optimizer, "optimizer", False
    owned = bool(splits_layers and not cfg.weight_decay)
    return optimizer_from_config(cfg, grad_norm if owned else None), cfg.optimizer, owned


def run_threads(cfg, ranks):
    """The numba threads of a run (``cfg.threads``; default: all cores with one process, else
    :func:`default_threads` of the world), checked now (a bad count fails here)."""
    threads = (cfg.threads if cfg.threads is not None else
               (None if ranks.size == 1 else default_threads(ranks.world)))
    with numba_threads(threads):
        pass
    return threads


def thread_settings(threads):
    """OpenBLAS at one thread and ``threads`` numba threads, as a context manager."""
    stack = contextlib.ExitStack()
    stack.enter_context(blas_threads(1))
    stack.enter_context(numba_threads(threads))
    return stack


def make_run_solver(cfg, comm):
    """The solver of ``cfg`` over the time ranks ``comm`` (the trainer's one solver factory)."""
    return planned_solver(cfg.solver, cfg.solver_options, comm)


def model_for(cfg, data, depth):
    """The untrained model of ``cfg`` of ``depth`` for the :class:`TrainData` ``data``: its
    features, classes and (``--layer conv``) image shape."""
    return build_model(cfg, data.X_train.shape[-1], data.ds.num_classes, depth,
                       data.ds.image_shape)


def compile_kernels(cfg, data, depth):
    """Compile (or load from numba's cache) the kernels of a run: one gradient of a throw-away
    model of ``depth`` (its first level) on one data group's share of the first samples of
    ``data``, by the run's solver on this rank alone, and the serial forward of the evaluation.
    The run's model, solver and counters are untouched."""
    X_train, y_train = data.X_train, data.ds.y_train
    model = model_for(cfg, data, depth)
    rows = len(np.array_split(np.arange(min(cfg.batch_size, len(X_train))),
                              cfg.data_parallel)[0])
    X, y = X_train[:rows], y_train[:rows]
    model.loss_and_grad_flat(X, y, make_run_solver(cfg, SelfComm()), strict=False)
    model.forward(X, "serial", strict=False)


def _data_part(name):
    """A read-only attribute of the trainer that is its data part's ``name``."""
    return property(lambda self: getattr(self.data, name),
                    doc=f"The data part's ``{name}`` (see :class:`TrainData`).")


class Trainer:
    """Runs the epochs of ``cfg`` (:meth:`fit`: :meth:`train_epoch` of :meth:`batches` ->
    :meth:`step` -> :meth:`finish_epoch`), composing the parts of :mod:`mgritnn.train`.

    Constructing it does everything before the first batch (data, model, optimizer, resume,
    compilation), so that bad options, data, checkpoints and outputs fail in seconds. Use it as
    a context manager (or call :meth:`close`) when driving it by hand: the log is open.

    Parameters
    ----------
    cfg : TrainConfig
    out, progress, comm : see :func:`train`
    optimizer : GradientTransformation, optional
        Replaces the optimizer of ``cfg`` (``optimizer``, ``lr``, ``momentum``, ``weight_decay``,
        ``clip``); its state is checkpointed.

    Attributes
    ----------
    data, schedule, checkpointer, reporter, quality, layers, ranks, lbfgs : the parts
    model, opt, opt_state, rng : the model, its optimizer (None: L-BFGS) and state, the shuffle
    history, start_epoch : the epoch records so far, and the epochs done before this run
    owned : whether the ranks own their layers' updates (:mod:`.owned`)
    times : dict of str to float, the seconds of this epoch in data, forward, adjoint, wait, ...
    """

    #: Let the ranks own their layers' updates where they can (False: the full allreduce).
    _own_layers = True

    ds, standardizer = _data_part("ds"), _data_part("standardizer")
    X_train, X_test = _data_part("X_train"), _data_part("X_test")
    len_train, len_test = _data_part("len_train"), _data_part("len_test")
    n_batches = _data_part("n_batches")

    def __init__(self, cfg, out=print, progress=True, comm=None, optimizer=None):
        cfg.check_paths()
        self.cfg, self.ranks, self.adapter = cfg, _Ranks(comm, cfg.data_parallel), adapter_for(cfg)
        self.threads = run_threads(cfg, self.ranks)
        self.solver = make_run_solver(cfg, self.ranks.time)
        self.reporter = Reporter(cfg, self.ranks.root, out, progress)
        self.out = self.reporter.out
        self.checkpointer = Checkpointer(cfg, self.ranks, self.out)   # before any work: fail in
        self.reporter.prepare()                                      # seconds, not epochs
        self.times = zero_times()
        self.data = TrainData(cfg, self.ranks, cfg.optimizer == "lbfgs", lambda ds, b: (
            self.adapter.check_memory(cfg, ds, b, self.ranks.time.Get_size())))
        self._setup_model(optimizer)
        if cfg.resuming and os.path.exists(cfg.checkpoint):
            self.resume()
        with self.running():
            compile_rank0_first(self.ranks.world, self._warm_up)
        self.reporter.open()
        self.quality = GradientQuality(cfg, self.solver, self.ranks, self.n_batches, self.owned,
                                       self.adapter.grad_options)

    def running(self):
        """The run's :func:`thread_settings` (:meth:`fit`, :meth:`step`, :meth:`evaluate`)."""
        return thread_settings(self.threads)

    def _warm_up(self):
        """:func:`compile_kernels` of this run (rank 0 first under MPI)."""
        compile_kernels(self.cfg, self.data, self.schedule.stages[0][0])

    def _setup_model(self, optimizer):
        """Model, optimizer, state, owned layers, shuffle; hierarchy and disk space checked."""
        cfg = self.cfg
        self.schedule = NestedSchedule(cfg)
        self.model = self._build(self.schedule.depth)
        self.schedule.check_hierarchy(self.solver,
                                      self.adapter.time_axes(self.schedule, self.X_train.shape[1]))
        self.opt, self.opt_name, self.owned = _optimizer(
            cfg, optimizer, self._own_layers and self.adapter.splits_layers(self.solver),
            lambda g: self.model.grad_norm(g, self.solver))
        self.lbfgs = LBFGSDriver(self) if self.opt is None else None
        self.layers = OwnedLayers(self.solver, self.owned)
        self._fresh_optimizer_state()
        self.rng = np.random.default_rng(cfg.seed)
        self.history, self.start_epoch = [], 0
        self.checkpointer.check_space(self.model, self.opt_state, self.standardizer)

    def _build(self, depth):
        return model_for(self.cfg, self.data, depth)

    def _fresh_optimizer_state(self):
        self.opt_state = EmptyState() if self.opt is None else self.opt.init(self.model.flat)

    def resume(self):
        """Continue the checkpoint of the config: its level of nested iteration, then the rest
        (:meth:`Checkpointer.resume`)."""
        arrays, meta = self.checkpointer.read()
        if self.schedule.restore(meta):         # a coarse level of nested iteration
            self.model = self._build(self.schedule.depth)
            self._fresh_optimizer_state()
        self.opt_state, self.start_epoch, self.history = self.checkpointer.resume(
            arrays, meta, self.model, self.opt, self.opt_state, self.rng, self.solver,
            self.layers, self.schedule.nested)

    def batches(self, epoch):
        """The :class:`Batch` es of ``epoch`` (0-based), shuffled by :attr:`rng`."""
        return self.data.batches(epoch, self.rng, self.times)

    def step(self, batch):
        """One optimizer step on ``batch`` (:meth:`gradient`, :meth:`update`): a StepResult."""
        grad, result = self.gradient(batch)
        self.update(grad, batch)
        return result

    def gradient(self, batch):
        """The gradient (ndarray (P,)) and :class:`StepResult` of ``batch`` by the solver, reduced
        over the data groups, checked by :attr:`quality`; SolverError (a solve failed) or
        DivergenceError (NaN/inf) name the epoch and batch, before any update."""
        epoch, b = batch.epoch, batch.index
        loss, grad, info = solve_or_rescue(lambda: self._loss_and_grad(batch), self.solver,
                                           self.cfg.rescue, f"epoch {epoch + 1}, batch {b + 1}",
                                           lambda: self.checkpointer.last_good(epoch))
        grad, E = self.ranks.common_scale(grad, int(info.get("exponent", 0)))
        grad, loss, n_correct, evals = self.ranks.reduce_batch(batch, loss, grad, info,
                                                               self.times)
        if E:
            grad = self._unscale(grad, E)
        grad, loss, info = self.quality.review(self.model, batch, grad, loss, info, self.data.pad,
                                               self.running, self.log)
        if not np.isfinite(loss) or not np.all(np.isfinite(grad)):
            raise DivergenceError(
                f"the loss or gradient became NaN/inf at epoch {epoch + 1}, batch {b + 1}: "
                f"lower --lr or use --clip; {self.checkpointer.last_good(epoch)}")
        return grad, StepResult(float(loss), float(n_correct), evals, info)

    def _loss_and_grad(self, batch):
        """The model's loss, gradient and info of ``batch`` (this group's share) by the solver."""
        extra = dict(self.adapter.grad_options, **({"owned": True} if self.owned else {}))
        with self.running():
            return self.model.loss_and_grad_flat(batch.X, batch.y, self.solver, keys=batch.part,
                                                 lengths=batch.lengths, pad=self.data.pad, **extra)

    def _unscale(self, grad, exponent):
        """:meth:`GradientQuality.unscale` (a scaled adjoint's gradient at its true scale)."""
        return self.quality.unscale(grad, exponent)

    def update(self, grad, batch):
        """Apply the optimizer to the model's flat parameters (in place) with the finite,
        reduced gradient ``grad`` of ``batch``; DivergenceError if they became NaN/inf."""
        t0 = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore"):     # checked just below
            updates, self.opt_state = self.opt.update(grad, self.opt_state, self.model.flat)
            apply_updates(self.model.flat, updates, inplace=True)
        if not all_finite(self.model.flat):
            raise DivergenceError(
                f"the parameters became NaN/inf in the {self.opt_name} update of epoch "
                f"{batch.epoch + 1}, batch {batch.index + 1} (the loss and gradient were finite): "
                f"lower --lr or use --clip; {self.checkpointer.last_good(batch.epoch)}")
        self.times["optimizer"] += time.perf_counter() - t0

    def _state_arrays(self, state):
        """Copies of the arrays of ``state`` laid out like the parameters (:class:`OwnedLayers`)."""
        return self.layers.state_arrays(self.model, state)

    def sync_layers(self):
        """Owned layers: every layer of :attr:`model` current on every rank (collective)."""
        self.layers.sync(self.model)

    def fit(self):
        """Train from :attr:`start_epoch` to the end (nested iteration: each level, coarsest
        first, :meth:`refine` between them), close the log; returns the model and history."""
        with self:                      # closes the log, quietly with an error in flight
            with self.running():
                epoch = self.start_epoch
                while not self.stage_finished(epoch) or not self.schedule.finest:
                    if self.stage_finished(epoch):
                        self.refine(epoch)
                    elif self.lbfgs:
                        epoch = self.lbfgs.run(epoch)
                    else:
                        self.train_epoch(epoch)
                        epoch += 1
            self.sync_layers()
        return self.model, self.history

    def stage_finished(self, epoch):
        """Whether the current level is done before epoch ``epoch`` (:class:`NestedSchedule`)."""
        return self.schedule.finished(epoch, self.history)

    def refine(self, epoch):
        """Nested iteration: the refined model, a fresh optimizer state, the losses reported."""
        coarse = self.model
        before = self.evaluate(coarse, train=True)[0]["loss"]
        self.model = self.schedule.refine(coarse, epoch)
        after = self.evaluate(train=True)[0]["loss"]
        self._fresh_optimizer_state()
        self.reporter.refine(epoch, coarse.depth, self.model.depth, before, after)

    def train_epoch(self, epoch):
        """Train epoch ``epoch`` (0-based), then :meth:`finish_epoch`; returns its record."""
        tally, self.times = EpochTally(), zero_times()
        self.quality.reset(self.model.cell)
        for batch in self.batches(epoch):
            r = self.step(batch)
            tally.add(r, len(batch.idx))
            if self.solver.name != "serial":
                self.log(batch_record(batch, r))
            self.reporter.progress(f"epoch {epoch + 1}/{self.cfg.epochs}: batch {batch.index + 1}/"
                                   f"{self.n_batches}, loss {tally.loss:.4f}")
        self.reporter.progress_done()
        return self.finish_epoch(epoch, tally)

    def finish_epoch(self, epoch, tally):
        """Evaluate, report, log and checkpoint epoch ``epoch`` (0-based) that trained as
        ``tally`` (:class:`EpochTally`) says; returns its record (appended to :attr:`history`)."""
        test, t_eval = self.evaluate()
        rec = tally.record(epoch, test, t_eval, self.times, self.solver.name, self.ranks,
                           self.cfg.data_parallel,
                           **self.adapter.record_fields(self.model, self.schedule))
        rec.update(self.quality.record(self.model.cell))
        self.history.append(rec)
        self.reporter.epoch(rec, nested=self.schedule.nested)
        self.log(rec, flush=True)
        self.checkpoint(epoch + 1)
        return rec

    def evaluate(self, model=None, train=False):
        """Loss and accuracy of ``model`` (default: the run's) on the test set (``train``: the
        training set), collective; :func:`evaluate`'s dict and the seconds it took."""
        t0 = time.perf_counter()
        if model is None or model is self.model:
            self.sync_layers()
        X, y, lengths = self.data.split(train)
        with self.running():
            result = evaluate(self.model if model is None else model, X, y,
                              comm=self.ranks.world, lengths=lengths, pad=self.data.pad)
        return result, time.perf_counter() - t0

    def log(self, rec, flush=False):
        """Write ``rec`` to the JSON-lines log (rank 0, with ``cfg.log``)."""
        self.reporter.log(rec, flush=flush)

    def checkpoint(self, epoch):
        """Write the checkpoint after ``epoch`` epochs (collective; :meth:`Checkpointer.save`)."""
        self.checkpointer.save(epoch, self.model,
                               self.layers.checkpoint_arrays(self.model, self.opt_state),
                               self.solver, self.standardizer, self.rng, self.history, self.ds,
                               self.schedule.checkpoint_fields())

    def close(self, quiet=False):
        """Close the log (``quiet``: ignore an error while closing it)."""
        self.reporter.close(quiet=quiet)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(quiet=exc_type is not None)
        return False


def solve_or_rescue(solve, solver, rescue, where, kept):
    """``solve()`` (a batch's ``loss, grad, info``). When it raises SolverError (a solve diverged
    or gave NaN/inf, so its gradient must never reach the optimizer): with ``rescue`` and a
    solver that can fall back (:meth:`~mgritnn.solvers.base.TimeParallelSolver.falling_back`),
    ``solve()`` again with every solve redone by the serial sweep on the same ranks, its
    ``info["rescued"]`` the failure's message; otherwise a SolverError that names ``where`` and
    ``kept()`` (where the last good state is)."""
    try:
        return solve()
    except SolverError as e:
        if not (rescue and hasattr(solver, "falling_back")):
            raise SolverError(f"{where}: {e}; {kept()}", e.stats) from None
        with solver.falling_back():
            loss, grad, info = solve()
        return loss, grad, dict(info, rescued=e.stats.message if e.stats is not None else str(e))


def train(cfg, out=print, progress=True, comm=None):
    """Train a :class:`GRUClassifier` or an :class:`~mgritnn.odenet.ODENet` (``cfg.model``) as
    ``cfg`` says (on every rank of ``comm`` under MPI): ``Trainer(cfg, out, progress,
    comm).fit()``.

    Parameters
    ----------
    cfg : TrainConfig
    out : callable
        Receives one human-readable line per epoch (on rank 0 only).
    progress : bool
        Show a progress line on stderr during long epochs (rank 0).
    comm : mpi4py communicator, optional
        The ranks of this run (default: MPI's world under an MPI launcher, else one process).
        They are split into ``cfg.data_parallel`` data groups x time ranks; the time axis is solved
        by ``cfg.solver`` over each group's time ranks.

    Returns
    -------
    model : GRUClassifier or ODENet
        The same on every rank.
    history : list of dict
        One record per epoch (what the JSON-lines log holds).

    Raises
    ------
    MgritnnError
        For anything the user can fix, before the first batch where possible: bad options or data,
        a checkpoint that does not fit, outputs that cannot be written (:class:`OutputError`,
        also for write failures later) and divergence (:class:`DivergenceError`). The last
        checkpoint written stays as it was. Output paths are checked (and written) by rank 0
        only, so under MPI such an error may be raised on rank 0 alone.

    Warns
    -----
    MgritnnWarning
        On resume with settings that differ from the checkpoint's (rank 0).
    """
    return Trainer(cfg, out=out, progress=progress, comm=comm).fit()
