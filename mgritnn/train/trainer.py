"""The training loop: data -> solve -> loss -> adjoint -> gradient -> optimizer -> log -> checkpoint.

A run is fixed by a :class:`TrainConfig`. Checkpoints (atomic ``.npz``) hold the parameters under
PyTorch's names, the optimizer state, the shuffling RNG's state, the epoch, the standardization and
the configuration, so that ``resume=True`` continues a run to the bit-for-bit same result as the
uninterrupted run (the kernels are deterministic and independent of the thread count).

Nothing is lost: every output path is checked before the first batch (its directory is created,
a probe file is written beside it, the free space for one checkpoint is measured); a checkpoint is
written only with finite parameters, loss and optimizer state, and a write that fails (or a run
killed during it) leaves the previous checkpoint as it was.
"""
import dataclasses
import json
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .. import datasets
from ..distributed import SelfComm, TimeComm, default_threads, get_comm, split_data_time
from ..errors import (CheckpointError, ConfigError, DivergenceError, MgritnnWarning, SolverError,
                     output_error)
from ..io import (atomic_savez, check_free_space, prepare_output, read_npz, remove_stale_temps,
                 temp_prefix)
from ..memory import check_training_memory
from ..model import GRUClassifier
from ..odenet import ODENet
from ..runtime import blas_threads, compile_rank0_first, entry_point, numba_threads
from ..optim import (EmptyState, apply_updates, chain, clip_by_global_norm, make_optimizer, state_from_arrays,
                    state_to_arrays)
from ..solvers import make_solver
from .. import gradient_quality

from .config import TrainConfig


@entry_point
def evaluate(model, X, y, batch_size=100, solver="serial", comm=None, lengths=None, pad="end"):
    """Mean cross-entropy and accuracy of ``model`` on (X, y), in batches (exact serial forward by default).

    Parameters
    ----------
    X : ndarray, shape (N, T, I)
    y : ndarray, shape (N,), int
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
    starts = range(0, len(X), batch_size)

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


class _Progress:
    """A progress line on stderr during long epochs: redrawn in place on a terminal, else every 30 s."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last = time.perf_counter()
        self.shown = False

    def update(self, text):
        now = time.perf_counter()
        if now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        self.shown = True
        self.stream.write(("\r" + text + "\033[K") if self.tty else text + "\n")
        self.stream.flush()

    def done(self):
        if self.tty and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.shown = False


def _checkpoint_arrays(model, opt_state, standardizer):
    arrays = dict(model.params)
    arrays.update({f"optim/{k}": v for k, v in state_to_arrays(opt_state).items()})
    arrays["standardizer/mean"] = standardizer.mean
    arrays["standardizer/std"] = standardizer.std
    return arrays


def _checkpoint_bytes(model, opt_state, standardizer, epochs):
    """About the size of a checkpoint after ``epochs`` epochs (an overestimate): the arrays, their
    archive headers, and the metadata (JSON, stored as 4-byte characters; one history record per
    epoch)."""
    arrays = _checkpoint_arrays(model, opt_state, standardizer)
    return (sum(np.asarray(a).nbytes for a in arrays.values()) + 1024 * (len(arrays) + 1)
            + 32 * 1024 + 4 * 1024 * epochs)


def _last_good(cfg, done):
    """Where the last good state of a run that failed in epoch ``done + 1`` is (for messages)."""
    if not cfg.checkpoint:
        return "nothing was saved (add --checkpoint to keep every finished epoch)"
    if done == 0:
        return "no checkpoint was written"
    return (f"the checkpoint {cfg.checkpoint!r} keeps epoch {done} as it was: continue from it "
            "with --resume")


def _all_finite(*arrays):
    return all(np.all(np.isfinite(a)) for a in arrays)


def gather_warm_arrays(solver, ranks):
    """Every rank's warm-start states of ``solver`` (collective over the world).

    Returns
    -------
    dict
        On rank 0: ``"warm/r{rank}/{name}" -> array`` for every rank's
        :meth:`~mgritnn.solvers.base.Solver.warm_arrays` (empty for solvers without memory);
        on the other ranks: empty.
    """
    parts = ranks.world.gather(solver.warm_arrays(), root=0)
    if not ranks.root:
        return {}
    return {f"warm/r{r}/{k}": v for r, part in enumerate(parts) for k, v in part.items()}


def _restore_warm_arrays(solver, arrays, meta, ranks, path):
    """Give each rank its own saved warm-start states (see :func:`gather_warm_arrays`), when the
    checkpoint was written by as many ranks; otherwise they start cold, with a warning."""
    mine = f"warm/r{ranks.rank}/"
    if not any(k.startswith("warm/") for k in arrays):
        return
    saved = meta.get("warm_ranks")
    if saved != ranks.size:
        if ranks.root:
            warnings.warn(f"checkpoint {path!r} holds the warm-start states of {saved} ranks, this "
                          f"run has {ranks.size}: they start cold, so the run cannot continue the "
                          "checkpoint's bit for bit (resume on as many ranks to keep them)",
                          MgritnnWarning, stacklevel=3)
        return
    solver.load_warm_arrays({k[len(mine):]: v for k, v in arrays.items() if k.startswith(mine)})


def save_checkpoint(cfg, epoch, model, opt_state, standardizer, rng, history, ds, warm=None,
                    ranks=1, extra=None):
    """Write the training checkpoint of ``cfg`` after ``epoch`` epochs (rank 0 only), atomically.

    The one place that writes a training checkpoint: everything a bit-for-bit resume needs
    (parameters, optimizer state, shuffling RNG state, epoch, history, standardizer, config, and
    the solvers' warm-start states of every rank, ``warm`` from :func:`gather_warm_arrays`,
    written by ``ranks`` ranks).

    Parameters
    ----------
    cfg : TrainConfig
    epoch : int
        Epochs done.
    model : GRUClassifier
    opt_state : optimizer state
        The state of the run's gradient transformation (e.g. a ``ScaleByAdamState``); stored by
        :func:`~mgritnn.optim.state_to_arrays` under ``optim/``.
    standardizer : datasets.Standardizer
    rng : numpy.random.Generator
        The shuffling generator (its state is saved).
    history : list of dict
        The epoch records so far (the last is this epoch's).
    ds : the data set (its classes are saved)
    warm : dict, optional
        Warm-start states (:func:`gather_warm_arrays`).
    ranks : int
        Number of ranks of the run (the warm-start states fit a run of as many).
    extra : dict, optional
        More metadata (JSON-able): the trainer's level of nested iteration (``nested_stage``,
        the index into :meth:`TrainConfig.nested_stages`, and ``stage_start``, its first epoch).

    Raises
    ------
    DivergenceError
        If the parameters, optimizer state or the epoch's losses are NaN/inf: nothing is written,
        the previous checkpoint stays.
    OutputError
        If the file cannot be written (the previous checkpoint stays).
    """
    rec = history[-1] if history else {}
    losses = [rec.get("loss", 0.0), rec.get("test_loss", 0.0)]
    arrays = _checkpoint_arrays(model, opt_state, standardizer)
    state = [v for k, v in arrays.items() if k.startswith("optim/")]
    if not _all_finite(model.flat, np.asarray(losses, np.float64), *state):
        raise DivergenceError(
            f"training diverged in epoch {epoch}: the parameters, optimizer state or loss are "
            f"NaN/inf, so this epoch is not saved: lower --lr or use --clip; "
            f"{_last_good(cfg, epoch - 1)}")
    meta = dict(kind="train", model=model.config, train=dataclasses.asdict(cfg), epoch=epoch,
                rng=rng.bit_generator.state, history=history, num_classes=ds.num_classes,
                class_names=list(ds.class_names), warm_ranks=int(ranks), **(extra or {}))
    if model.model_type != "gru":          # a GRU's checkpoint keeps mgritnn 0.1's keys
        meta["model_type"] = model.model_type
    arrays.update(warm or {})
    atomic_savez(cfg.checkpoint, arrays, meta, what="the checkpoint (--checkpoint)")


def _prepare_outputs(cfg, out):
    """Before any work (rank 0): the checkpoint and the log can be written (directories created,
    a probe file written beside each); temporary files of killed writes of the checkpoint are
    removed."""
    if cfg.checkpoint:
        prepare_output(cfg.checkpoint, "--checkpoint")
        removed = remove_stale_temps(cfg.checkpoint)
        if removed:
            out(f"removed {len(removed)} temporary file(s) {temp_prefix(cfg.checkpoint)}*.npz "
                "left by an interrupted checkpoint write")
    if cfg.log:
        prepare_output(cfg.log, "--log", append=True)


#: Fields of TrainConfig that may change on resume without changing the run: the number of epochs
#: (extending a run is the point of resuming), where the outputs go, and the thread count (the
#: kernels are independent of it).
_RESUME_FREE = ("epochs", "checkpoint", "resume", "resume_or_start", "overwrite", "log", "threads")


def _fmt(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def _settings_diff(cfg, saved):
    """``["lr 0.003 -> 0.01", ...]``: the settings of ``cfg`` that differ from the saved config
    ``saved`` (a dict from a checkpoint; fields it lacks are not compared)."""
    now = json.loads(json.dumps(dataclasses.asdict(cfg)))       # tuples -> lists, as saved
    return [f"{k} {_fmt(saved[k])} -> {_fmt(v)}" for k, v in now.items()
            if k not in _RESUME_FREE and k in saved and saved[k] != v]


class _Log:
    """The JSON-lines log (rank 0), opened for appending; OS errors become OutputError."""

    def __init__(self, path):
        self.path = path
        try:
            self._end_partial_line()
            self.file = open(path, "a")
        except OSError as e:
            raise output_error(e, "cannot open the log (--log)", path) from e

    def _end_partial_line(self):
        """A run killed while writing may leave an incomplete last record (no newline): drop it
        (when it is one of ours, starting '{"'), else end the line, so that the next record
        starts on a line of its own."""
        if not os.path.isfile(self.path) or os.path.getsize(self.path) == 0:
            return
        with open(self.path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 65536))
            tail = f.read()
            if tail.endswith(b"\n"):
                return
            start = tail.rfind(b"\n") + 1
            if tail[start:start + 2] == b'{"' and (start > 0 or size <= 65536):
                f.truncate(size - len(tail) + start)
            else:
                f.write(b"\n")

    def write(self, rec, flush=False):
        try:
            self.file.write(_json_line(rec))
            if flush:
                self.file.flush()
        except OSError as e:
            raise output_error(e, "cannot write the log (--log)", self.path) from e

    def close(self, quiet=False):
        try:
            self.file.close()
        except OSError as e:
            if not quiet:
                raise output_error(e, "cannot write the log (--log)", self.path) from e


class _Ranks:
    """The communicators of a run: world, time (one data group) and data (same time block)."""

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
        return self._over_world.allreduce(np.asarray(values, np.float64), op="max")

    def sum_over_world(self, values):
        return self._over_world.allreduce(np.asarray(values, np.float64))


def _make_cell(cfg):
    """The cell of ``cfg``: its name, or a Newton cell with ``cfg.newton_options``."""
    if not cfg.newton_options:
        return cfg.cell
    if cfg.cell != "implicit-newton":
        raise ConfigError(f"Newton options {sorted(cfg.newton_options)} need --cell implicit-newton, "
                          f"not {cfg.cell!r}")
    from ..cells import NewtonConfig, NewtonGRUCell
    try:
        return NewtonGRUCell(NewtonConfig(**cfg.newton_options))
    except TypeError as e:
        raise ConfigError(f"bad Newton option: {e}") from None


def build_model(cfg, num_features, num_classes, depth=None):
    """The untrained model of ``cfg`` (the one factory of the trainer, its warm-up and resume):
    a :class:`GRUClassifier` (``cfg.model == "gru"``) with ``num_features`` inputs per step, or
    an :class:`~mgritnn.odenet.ODENet` of ``depth`` layers (default ``cfg.depth``; nested
    iteration's coarse levels are shallower) on ``num_features`` features."""
    if cfg.model == "odenet":
        return ODENet(num_features, cfg.width, num_classes, depth or cfg.depth,
                      activation=cfg.activation, final_time=cfg.final_time, opening=cfg.opening,
                      tikhonov=cfg.tikhonov, ddt_penalty=cfg.ddt_penalty, dtype=cfg.dtype,
                      seed=cfg.seed, layer_init=cfg.layer_init)
    return GRUClassifier(num_features, cfg.hidden, num_classes, num_layers=cfg.layers,
                         cell=_make_cell(cfg), dtype=cfg.dtype, seed=cfg.seed, dt=cfg.dt)


def _newton_record(cell, ranks):
    """The Newton counters of an ``implicit-newton`` cell over all ranks (None for other cells)."""
    stats = getattr(cell, "stats", None)
    if stats is None:
        return None
    solves, iters, bad = ranks.sum_over_world([stats.solves, stats.iterations, stats.unconverged])
    worst = float(ranks.max_over_world([stats.max_residual])[0])
    return dict(solves=int(solves), iterations=int(iters), unconverged=int(bad), max_residual=worst)


def _json_line(rec):
    """One strict JSON line: NaN/inf (e.g. a residual that was not measured) become null."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (float, np.floating)):
            return float(v) if np.isfinite(v) else None
        if isinstance(v, np.integer):
            return int(v)
        return v
    return json.dumps(clean(rec), allow_nan=False) + "\n"


def _batch_diagnostics(info):
    f, a = info["forward"], info["adjoint"]
    return dict(fwd_iters=f.iterations, fwd_res=f.residual, fwd_status=f.status,
                fwd_fallback=f.fallback, fwd_message=f.message, fwd_grew=f.grew,
                bwd_iters=a.iterations, bwd_res=a.residual, bwd_status=a.status, bwd_grew=a.grew)


class Batch(NamedTuple):
    """One training batch as :meth:`Trainer.batches` hands it out (this rank's share).

    Attributes
    ----------
    epoch, index : int
        0-based epoch and batch number.
    idx : ndarray, shape (b,), int
        The training-set rows of the whole batch (all data groups).
    part : ndarray, shape (b_g,), int
        The rows of this rank's data group (its share of ``idx``; the samples' keys for warm
        starts).
    X : ndarray, shape (b_g, T, I), the model's dtype
        The standardized inputs of ``part``.
    y : ndarray, shape (b_g,), int
        Their labels.
    lengths : ndarray, shape (b_g,), int64, or None
        Their true lengths (``1 .. T``; the padding lies where ``TrainConfig.pad`` says), or None
        when the data has no lengths (every sequence has all ``T`` steps).
    """

    epoch: int
    index: int
    idx: np.ndarray
    part: np.ndarray
    X: np.ndarray
    y: np.ndarray
    lengths: np.ndarray = None


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


class Trainer:
    """The training loop of :func:`train`, in named parts that a custom loop can call.

    Constructing a trainer does everything before the first batch (:meth:`_setup_data`,
    :meth:`_setup_model`, :meth:`resume`), so bad options, data, checkpoints and outputs fail in
    seconds. Then :meth:`fit` runs the epochs; each is :meth:`batches` -> :meth:`step` (gradient,
    :meth:`reduce`, :meth:`update`) -> :meth:`log_batch`, then :meth:`evaluate`, :meth:`report`,
    :meth:`log` and :meth:`checkpoint`. ``train(cfg, out, progress, comm)`` is
    ``Trainer(cfg, out, progress, comm).fit()``.

    Parameters
    ----------
    cfg : TrainConfig
    out : callable
        Receives the human-readable lines (on rank 0 only).
    progress : bool
        Show a progress line on stderr during long epochs (rank 0).
    comm : mpi4py communicator, optional
        The ranks of the run (see :func:`train`).
    optimizer : GradientTransformation, optional
        Replaces the optimizer of ``cfg`` (its ``optimizer``, ``lr``, ``momentum``,
        ``weight_decay`` and ``clip``), e.g. ``chain(clip_by_global_norm(1.0),
        add_decayed_weights(1e-4), adam(1e-3))``. A checkpoint then holds its state, and resuming
        needs the same chain.

    Attributes
    ----------
    model : GRUClassifier or ODENet
    opt : GradientTransformation
    opt_state : its state
    history : list of dict
        The epoch records so far.
    owned : bool
        The ranks own their layers' updates (an ODENet on several time ranks with the config's
        Adam or SGD, no weight decay): each rank's gradient and update touch only its own
        layers (and the shared opening and classifier); the other layer rows of :attr:`model`
        are stale on it until :meth:`sync_layers`.
    start_epoch : int
        Epochs done before this run (from the checkpoint when resuming).
    times : dict of str to float
        Seconds of this epoch in data, forward, adjoint, wait and optimizer.
    len_train, len_test : ndarray, shape (N,) and (M,), int64, or None
        The true lengths of the training and test sequences (None: the data has none, or
        ``lengths="ignore"``); :meth:`batches` hands out each batch's share.

    Use as a context manager (or call :meth:`close`) when driving it by hand: the log is open
    from construction on.
    """

    #: Let the ranks own their layers' updates where they can (:attr:`owned`); False: the full
    #: allreduce everywhere (kept for the tests that compare the two).
    _own_layers = True

    def __init__(self, cfg, out=print, progress=True, comm=None, optimizer=None):
        cfg.check_paths()
        self.cfg = cfg
        self.ranks = _Ranks(comm, cfg.data_parallel)
        self.threads = (cfg.threads if cfg.threads is not None else
                        (None if self.ranks.size == 1 else default_threads(self.ranks.world)))
        with numba_threads(self.threads):        # a bad count fails here; it applies in running()
            pass
        self.solver = make_solver(cfg.solver, cfg.solver_options, self.ranks.time)
        if not self.ranks.root:
            out, progress = (lambda *a, **k: None), False
        else:
            _prepare_outputs(cfg, out)              # before any work: fail in seconds, not epochs
        self.out = out
        self.times = _zero_times()
        self._setup_data()
        self._setup_model(optimizer)
        if cfg.resuming and os.path.exists(cfg.checkpoint):
            self.resume()
        self.n_batches = -(-len(self.X_train) // cfg.batch_size)
        if cfg.max_batches:
            self.n_batches = min(self.n_batches, cfg.max_batches)
        self.bar = _Progress() if progress else None
        with self.running():
            compile_rank0_first(self.ranks.world, self._warm_up)
        self.log_file = _Log(cfg.log) if (cfg.log and self.ranks.root) else None
        self.exact = gradient_quality.exact_solver(self.solver) if self.check_every else None
        self._quality = _zero_quality()

    @property
    def check_every(self):
        """Batches between gradient checks (0: none; ``TrainConfig.gradient_check``)."""
        k = self.cfg.gradient_check
        if k is None:
            k = 0 if self.solver.name == "serial" else self.n_batches
        return 0 if getattr(self, "owned", False) else k

    def running(self):
        """The thread settings of the run (OpenBLAS at one thread, ``threads`` numba threads),
        applied by :meth:`fit`, :meth:`step` and :meth:`evaluate` and restored when they return.

        Returns
        -------
        context manager
        """
        stack = contextlib.ExitStack()
        stack.enter_context(blas_threads(1))
        stack.enter_context(numba_threads(self.threads))
        return stack

    def _warm_up(self):
        """Compile (or load from numba's cache) the kernels of this run: one gradient of a
        throw-away model of the same kind on one group's share of the first samples, by the
        run's solver on this rank alone, and the serial forward of the evaluation. Under MPI,
        rank 0 runs it while the others wait (:func:`~mgritnn.runtime.compile_rank0_first`)."""
        cfg = self.cfg
        model = build_model(cfg, self.X_train.shape[-1], self.ds.num_classes, self.stages[0][0])
        rows = len(np.array_split(np.arange(min(cfg.batch_size, len(self.X_train))),
                                  cfg.data_parallel)[0])
        X, y = self.X_train[:rows], self.ds.y_train[:rows]
        solver = make_solver(cfg.solver, cfg.solver_options, SelfComm())
        model.loss_and_grad_flat(X, y, solver, strict=False)
        model.forward(X, "serial", strict=False)

    # -- setup ------------------------------------------------------------------------------------
    def _setup_data(self):
        """Load the data set with the length policy of the config (``lengths``, ``pad``), check
        that every data group gets samples in every batch and that the run fits in memory, and
        standardize the inputs on their real steps (``ds``, ``standardizer``, ``X_train``,
        ``X_test``, and the true lengths ``len_train``, ``len_test``: int64 (N,) or None)."""
        cfg = self.cfg
        ds = self.ds = datasets.load(cfg.data, seq_len=cfg.seq_len, seed=cfg.seed,
                                     num_classes=cfg.num_classes, lengths=cfg.lengths,
                                     pad=cfg.pad)
        datasets.check_data_kind(ds, cfg.model)
        self.len_train, self.len_test = ds.len_train, ds.len_test
        if cfg.batch_size < cfg.data_parallel:
            raise ConfigError(f"batch size {cfg.batch_size} is smaller than --data-parallel "
                              f"{cfg.data_parallel}: every data group needs samples")
        if cfg.optimizer != "lbfgs":            # L-BFGS: one full batch, no short last one
            _check_last_batch(len(ds.y_train), cfg)
        if cfg.model == "gru":          # the ODENet's memory is its parameters and (B, w) states
            batch = len(ds.y_train) if cfg.optimizer == "lbfgs" else cfg.batch_size
            check_training_memory(ds.num_channels, cfg.hidden, ds.num_classes, cfg.layers,
                                  cfg.dtype, -(-batch // cfg.data_parallel),
                                  -(-ds.seq_len // self.ranks.time.Get_size()),
                                  "sgd" if cfg.optimizer == "lbfgs" else cfg.optimizer)
        self.standardizer = datasets.Standardizer.fit(ds.X_train, ds.len_train, ds.pad)
        self.X_train = self.standardizer.transform(ds.X_train, np.dtype(cfg.dtype), ds.len_train,
                                                   ds.pad)
        self.X_test = self.standardizer.transform(ds.X_test, np.dtype(cfg.dtype), ds.len_test,
                                                  ds.pad)

    def _setup_model(self, optimizer):
        """Build the model, the optimizer (``optimizer`` or the one of the config) and its state,
        and the shuffling generator; check the hierarchy and the checkpoint's free space."""
        cfg = self.cfg
        self.stages, self.stage, self.stage_start, self._stage_over = cfg.nested_stages(), 0, 0, False
        self.model = build_model(cfg, self.X_train.shape[-1], self.ds.num_classes,
                                 self.stages[0][0])
        for depth in ([d for d, _ in self.stages] if cfg.model == "odenet"
                      else [self.X_train.shape[1]]):
            try:                                # a hierarchy that does not fit fails here
                self.solver.local_steps(depth)
            except ConfigError as e:
                if depth == self.stages[-1][0]:
                    raise
                raise ConfigError(f"nested iteration's network of depth {depth}: {e} (or use "
                                  "--levels 0, automatic levels, which fit every depth)") from None
        if cfg.optimizer == "lbfgs":
            if optimizer is not None:
                raise ConfigError("an optimizer chain replaces --optimizer adam or sgd, not "
                                  "lbfgs: drop optimizer= or use --optimizer adam/sgd")
            self.opt, self.opt_name = None, "lbfgs"
        else:
            self.opt = optimizer if optimizer is not None else optimizer_from_config(cfg)
            self.opt_name = cfg.optimizer if optimizer is None else "optimizer"
        # The ranks own their layers' updates (ODENet over several time ranks): only the shared
        # parameters' gradient is summed. Needs an optimizer known to be row-local: the
        # config's Adam or SGD without weight decay (which would move the rows a rank does not
        # own; the ODENet has --tikhonov instead); with --clip, the norm is summed over the
        # ranks. L-BFGS and optimizer chains keep the full allreduce (every layer everywhere).
        self.owned = (self._own_layers and cfg.model == "odenet" and optimizer is None
                      and self.opt is not None and not cfg.weight_decay
                      and ODENet._owns_layers(self.solver))
        if self.owned and cfg.clip is not None:
            self.opt = optimizer_from_config(
                cfg, norm=lambda g: self.model.grad_norm(g, self.solver))
        self._fresh_optimizer_state()
        self.rng = np.random.default_rng(cfg.seed)
        self.history, self.start_epoch = [], 0
        if cfg.checkpoint and self.ranks.root:
            check_free_space(cfg.checkpoint, "--checkpoint",
                             _checkpoint_bytes(self.model, self.opt_state, self.standardizer,
                                               cfg.epochs))

    def _fresh_optimizer_state(self):
        self.opt_state = EmptyState() if self.opt is None else self.opt.init(self.model.flat)

    def resume(self):
        """Continue the checkpoint of the config: load its parameters, optimizer state, shuffling
        state, history and (see :func:`_restore_warm_arrays`) the solver's warm-start states.

        Settings that differ from the checkpoint's config (except :data:`_RESUME_FREE`) are
        named in one :class:`MgritnnWarning` (on rank 0). With another optimizer, its state starts
        fresh (also in the warning): the run then cannot equal an uninterrupted one. Checkpoints
        of mgritnn 0.1 (the optimizer state under ``optim/step``, ``optim/m``, ...) load as they
        are: the format is the same.

        Raises
        ------
        CheckpointError
            If the file is not a training checkpoint, was made for another model shape, or holds
            the state of another optimizer chain under the same name.
        """
        cfg = self.cfg
        arrays, meta = read_npz(cfg.checkpoint)
        if not meta or meta.get("kind") != "train":
            raise CheckpointError(f"{cfg.checkpoint!r} is not an mgritnn training checkpoint: "
                                  "name the checkpoint written by 'mgritnn train --checkpoint'")
        if meta.get("model_type", "gru") != cfg.model:
            raise CheckpointError(f"checkpoint {cfg.checkpoint!r} holds a "
                                  f"{meta.get('model_type', 'gru')} model, this run trains "
                                  f"--model {cfg.model}: use the checkpoint's model, or start a "
                                  "new checkpoint")
        stage = int(meta.get("nested_stage", len(self.stages) - 1))
        if stage != self.stage and stage < len(self.stages):    # a coarse level of nested iteration
            self.stage = stage
            self.model = build_model(cfg, self.X_train.shape[-1], self.ds.num_classes,
                                     self.stages[stage][0])
            self._fresh_optimizer_state()
        self.stage_start = int(meta.get("stage_start", 0))
        model = self.model
        if meta["model"] != model.config:
            raise CheckpointError(
                f"checkpoint {cfg.checkpoint!r} was made for the model {meta['model']}, this run "
                f"builds {model.config}: use the same data, cell, hidden, layers, dtype and dt, "
                "or start a new checkpoint")
        saved = TrainConfig.upgrade_settings(meta.get("train") or {})
        diff = _settings_diff(cfg, saved)
        model.set_params(arrays)
        old_opt = saved.get("optimizer", cfg.optimizer)
        if old_opt == cfg.optimizer and self.opt is not None:
            state = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
            self.opt_state = state_from_arrays(self.opt, state, model.flat)
            self._own_state()
        else:
            diff = [d + (f" (the {old_opt} state is dropped and {cfg.optimizer} starts afresh, so "
                         "the run cannot equal an uninterrupted one bit for bit)")
                    if d.startswith("optimizer ") else d for d in diff]
        if diff and self.ranks.root:
            warnings.warn("resuming with settings that differ from the checkpoint: "
                          + ", ".join(diff) + " (resume with the checkpoint's settings to continue "
                          "its run exactly)", MgritnnWarning, stacklevel=4)
        self.rng.bit_generator.state = meta["rng"]
        _restore_warm_arrays(self.solver, arrays, meta, self.ranks, cfg.checkpoint)
        self.start_epoch, self.history = int(meta["epoch"]), list(meta.get("history", []))
        self.out(f"resumed from {cfg.checkpoint} after epoch {self.start_epoch}")
        if self.start_epoch >= cfg.epochs and len(self.stages) == 1:
            self.out(f"nothing to train: the checkpoint has {self.start_epoch} epochs, --epochs is "
                     f"{cfg.epochs}; raise --epochs to train more")

    # -- one batch --------------------------------------------------------------------------------
    def batches(self, epoch):
        """The batches of ``epoch`` (0-based), shuffled by the run's generator.

        Yields
        ------
        Batch
            ``n_batches`` of them; the permutation is drawn when the first is asked for.
        """
        B, N = self.cfg.batch_size, len(self.X_train)
        perm = self.rng.permutation(N)
        for b in range(self.n_batches):
            t0 = time.perf_counter()
            idx = perm[b * B:(b + 1) * B]
            part = np.array_split(idx, self.cfg.data_parallel)[self.ranks.group]
            lengths = None if self.len_train is None else self.len_train[part]
            batch = Batch(epoch, b, idx, part, self.X_train[part], self.ds.y_train[part], lengths)
            self.times["data"] += time.perf_counter() - t0
            yield batch

    def step(self, batch):
        """One optimizer step on ``batch``: :meth:`gradient`, then :meth:`update`.

        Returns
        -------
        StepResult
        """
        grad, result = self.gradient(batch)
        self.update(grad, batch)
        return result

    def gradient(self, batch):
        """The loss and gradient of ``batch`` by the solver, :meth:`reduce` d over the data
        groups and checked to be finite.

        Returns
        -------
        grad : ndarray, shape (P,)
        result : StepResult

        Raises
        ------
        SolverError
            If a solve failed (no update is made), naming the epoch and batch.
        DivergenceError
            If the loss or gradient is NaN/inf (no update is made), or the update made the
            parameters NaN/inf.
        """
        epoch, b = batch.epoch, batch.index
        try:
            with self.running():
                extra = {"owned": True} if self.owned else {}
                if self.cfg.model == "gru":
                    extra["scaled"] = True          # exploding gradients: see _unscale
                loss, grad, info = self.model.loss_and_grad_flat(batch.X, batch.y, self.solver,
                                                                 keys=batch.part,
                                                                 lengths=batch.lengths,
                                                                 pad=self.ds.pad, **extra)
        except SolverError as e:         # never a diverged gradient into the optimizer
            raise SolverError(f"epoch {epoch + 1}, batch {b + 1}: {e}; "
                              f"{_last_good(self.cfg, epoch)}", e.stats) from None
        E = int(info.get("exponent", 0))
        if self.ranks.size > 1:         # the data groups' gradients on one scale
            top = int(self.ranks.max_over_world([E])[0])
            if top != E:
                grad = np.ldexp(grad, E - top).astype(grad.dtype)
            E = top
        grad, loss, n_correct, evals = self.reduce(batch, loss, grad, info)
        if E:
            grad = self._unscale(grad, E)
        self._count_fallbacks(info)
        if self.check_every and batch.index % self.check_every == 0:
            grad, loss, info = self.check(batch, grad, loss, info)
        if not np.isfinite(loss) or not np.all(np.isfinite(grad)):
            raise DivergenceError(
                f"the loss or gradient became NaN/inf at epoch {epoch + 1}, batch {b + 1}: "
                f"lower --lr or use --clip; {_last_good(self.cfg, epoch)}")
        return grad, StepResult(float(loss), float(n_correct), evals, info)

    def _unscale(self, grad, exponent):
        """The gradient from 2^-exponent times it (the serial sweep kept an exploding adjoint's
        scale apart, :meth:`GRUClassifier.loss_and_grad_flat` with ``scaled``): with ``--clip``
        and a true norm above it, the clipped gradient (its direction exact to round-off, at
        any length); otherwise the gradient itself, which is inf where it exceeds the dtype's
        range (then training stops: use --clip)."""
        g64 = grad.astype(np.float64)
        norm = float(np.linalg.norm(g64))
        true_norm = float(np.ldexp(norm, exponent)) if norm > 0 else 0.0
        clip = self.cfg.clip
        self._quality["scaled"] += 1
        if clip is not None and true_norm > clip:
            return (g64 * (clip / norm)).astype(grad.dtype)
        with np.errstate(over="ignore"):
            return np.ldexp(g64, exponent).astype(grad.dtype)

    def _count_fallbacks(self, info):
        """Count the solves of this batch that fell back to the serial sweep (this rank's)."""
        q = self._quality
        q["solves"] += 1
        q["fallback"] += [bool(info["forward"].fallback), bool(info["adjoint"].fallback)]
        q["stalled"] += [bool(info["forward"].stalled), bool(info["adjoint"].stalled)]

    def check(self, batch, grad, loss, info):
        """The gradient check of ``batch`` (:mod:`mgritnn.gradient_quality`): the exact gradient
        of the same batch at the same parameters by the serial sweep (over the time ranks),
        compared with the solver's ``grad`` (both reduced over the data groups, so every rank
        decides the same). Logged (``type="gradient_check"``) and counted for the epoch's line.
        Below ``gradient_target`` the exact gradient replaces the approximate one, and an MGRIT
        solver with ``rms_tol`` tightens its tolerance (above it with a wide margin, loosens it).

        Returns
        -------
        grad, loss, info : what the update uses (the exact ones when the check failed)
        """
        t0 = time.perf_counter()
        with self.running():
            kw = dict(lengths=batch.lengths, pad=self.ds.pad)
            l_ex, g_ex, i_ex = self.model.loss_and_grad_flat(batch.X, batch.y, self.exact, **kw)
        weight = len(batch.part) / len(batch.idx)
        red = self.ranks.sum_over_data(np.concatenate(
            [g_ex * g_ex.dtype.type(weight), np.array([l_ex * weight], g_ex.dtype)]))
        g_ex, l_ex = red[:-1], float(red[-1])
        err = gradient_quality.compare(grad, g_ex, loss, l_ex)
        target = self.cfg.gradient_target
        used_exact = not err.ok(target)
        solver = self.solver
        scale = getattr(solver, "tol_scale", None)
        if scale is not None and solver.config.rms_tol > 0:
            exact_solves = info["forward"].fallback or info["adjoint"].fallback
            if used_exact:
                solver.tol_scale = max(scale / 4, 1e-3)
            elif not exact_solves and 1 - err.cosine < (1 - target) / 10:
                solver.tol_scale = min(scale * 2, 4.0)     # only MGRIT's own solves say so
        seconds = time.perf_counter() - t0
        q = self._quality
        q["checks"].append((err.cosine, err.rel_error, err.loss_error, used_exact))
        q["seconds"] += seconds
        self.log(dict(type="gradient_check", epoch=batch.epoch + 1, batch=batch.index + 1,
                      cosine=err.cosine, rel_error=err.rel_error, loss_error=err.loss_error,
                      loss=float(loss), exact_loss=l_ex, used_exact=used_exact, seconds=seconds,
                      tol_scale=getattr(solver, "tol_scale", None)))
        if used_exact:
            info = dict(info, logits=i_ex["logits"])
            return g_ex.astype(grad.dtype), l_ex, info
        return grad, loss, info

    def reduce(self, batch, loss, grad, info):
        """Sum this data group's share of the loss, gradient and correct count over the groups
        (each weighted by its share of the batch), and take the largest step counts over the
        ranks; add the times of ``info`` to :attr:`times`.

        Parameters
        ----------
        batch : Batch
        loss : float
            This group's mean loss.
        grad : ndarray, shape (P,), the model's dtype
            This group's flat gradient of its mean loss.
        info : dict
            The diagnostics of ``loss_and_grad_flat``.

        Returns
        -------
        grad : ndarray, shape (P,)
            The gradient of the whole batch's mean loss.
        loss, n_correct : numpy scalars of the model's dtype
        evals : ndarray, shape (2,), float64
            Forward and adjoint step evaluations, the most of any rank.
        """
        weight = len(batch.part) / len(batch.idx)
        t0 = time.perf_counter()
        stats = self.ranks.sum_over_data(np.concatenate(
            [grad * grad.dtype.type(weight),
             np.array([loss * weight, np.sum(np.argmax(info["logits"], 1) == batch.y)],
                      grad.dtype)]))
        grad, (loss, n_correct) = stats[:-2], stats[-2:]
        self.times["wait"] += (time.perf_counter() - t0 + info["time_reduce"]
                               + info["forward"].wait_time + info["adjoint"].wait_time)
        self.times["forward"] += info["time_forward"]
        self.times["adjoint"] += info["time_adjoint"]
        evals = self.ranks.max_over_world([info["forward"].step_evals, info["adjoint"].step_evals])
        return grad, loss, n_correct, evals

    def update(self, grad, batch):
        """Apply the optimizer to the model's flat parameters (in place) with the finite,
        reduced gradient ``grad`` of ``batch``.

        Raises
        ------
        DivergenceError
            If the parameters became NaN/inf.
        """
        t0 = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore"):     # checked just below
            updates, self.opt_state = self.opt.update(grad, self.opt_state, self.model.flat)
            apply_updates(self.model.flat, updates, inplace=True)
        if not _all_finite(self.model.flat):
            raise DivergenceError(
                f"the parameters became NaN/inf in the {self.opt_name} update of epoch "
                f"{batch.epoch + 1}, batch {batch.index + 1} (the loss and gradient were finite): "
                f"lower --lr or use --clip; {_last_good(self.cfg, batch.epoch)}")
        self.times["optimizer"] += time.perf_counter() - t0

    def _state_arrays(self, state):
        """The arrays of an optimizer state laid out like the parameters (Adam's moments, SGD's
        momentum buffer)."""
        found = []

        def walk(node):
            if isinstance(node, np.ndarray):
                if node.shape == self.model.flat.shape:
                    found.append(node)
            elif isinstance(node, Mapping):
                for v in node.values():
                    walk(v)
            elif isinstance(node, (tuple, list)):
                for v in node:
                    walk(v)
        walk(state)
        return found

    def sync_layers(self, state=None):
        """With owned layers (:attr:`owned`): make every layer's parameters (and the arrays of
        the optimizer state ``state`` laid out like them) current on every rank, from their
        owners, in place: one ``Allgatherv`` per array (collective over the time ranks; nothing
        otherwise). Called before anything that reads all layers on a rank: the evaluation, the
        checkpoint (with a copy of the optimizer state: the run's own keeps zero moments in the
        rows a rank does not own, so that they never move), the end of :meth:`fit`; a custom
        loop of :meth:`step` calls it before it reads :attr:`model`."""
        if self.owned:
            self.model.sync_layers(self.solver, self.model.flat,
                                   *([] if state is None else self._state_arrays(state)))

    def _own_state(self):
        """With owned layers: zero the optimizer state's rows of the layers this rank does not
        own (after loading a checkpoint's full state), so that their updates are zero."""
        if not self.owned:
            return
        lo, hi = self.solver.local_steps(self.model.depth)
        start, stop = self.model._layer_span
        for a in self._state_arrays(self.opt_state):
            rows = a[start:stop].reshape(self.model.params["layers"].shape)
            rows[:lo] = 0
            rows[hi:] = 0

    # -- one epoch --------------------------------------------------------------------------------
    def fit(self):
        """Train the epochs from :attr:`start_epoch` to ``cfg.epochs`` (with nested iteration:
        each level's epochs, coarsest first, :meth:`refine` between them); close the log.

        Returns
        -------
        model : GRUClassifier or ODENet
        history : list of dict
        """
        try:
            with self.running():
                epoch = self.start_epoch
                while True:
                    if self.stage_finished(epoch):
                        if self.stage == len(self.stages) - 1:
                            break
                        self.refine(epoch)
                    elif self.opt is None:
                        epoch = self.fit_lbfgs(epoch)
                    else:
                        self.train_epoch(epoch)
                        epoch += 1
            self.sync_layers()
        except BaseException:
            self.close(quiet=True)                  # the error in flight is the one to report
            raise
        self.close()
        return self.model, self.history

    def stage_finished(self, epoch):
        """Whether the current level of nested iteration (the only one without) is done before
        epoch ``epoch`` (0-based): its budget of epochs is spent, L-BFGS stopped, or (a coarse
        level) the last epoch's training accuracy reached ``cfg.nested_target_acc``."""
        depth, budget = self.stages[self.stage]
        if self._stage_over or epoch - self.stage_start >= budget:
            return True
        target = self.cfg.nested_target_acc
        return (self.stage < len(self.stages) - 1 and target is not None
                and epoch > self.stage_start and bool(self.history)
                and self.history[-1]["train_acc"] >= target)

    def refine(self, epoch):
        """Nested iteration: replace the model by its refinement (``cfg.nested_cf`` times
        deeper, layers interpolated by ``cfg.nested_interp``), with a fresh optimizer state;
        report and log (a ``"refine"`` record) the training loss (cross-entropy) before and
        after."""
        cfg, coarse = self.cfg, self.model
        before = self.evaluate(coarse, train=True)[0]["loss"]
        self.model = coarse.refined(cfg.nested_cf, cfg.nested_interp)
        after = self.evaluate(train=True)[0]["loss"]
        self.stage, self.stage_start, self._stage_over = self.stage + 1, epoch, False
        self._fresh_optimizer_state()
        self.out(f"nested iteration: depth {coarse.depth} -> {self.model.depth} "
                 f"({cfg.nested_interp} interpolation), training loss {before:.4f} -> {after:.4f}")
        self.log(dict(type="refine", after_epoch=epoch, depth_from=coarse.depth,
                      depth_to=self.model.depth, train_loss_coarse=before,
                      train_loss_fine=after), flush=True)

    def _stage_fields(self):
        """The level fields of an ODENet's epoch record: ``depth``, and ``level`` (0 = the
        finest network, K = the coarsest of nested iteration)."""
        if self.cfg.model != "odenet":
            return {}
        return dict(depth=self.model.depth, level=len(self.stages) - 1 - self.stage)

    def fit_lbfgs(self, epoch):
        """Full-batch L-BFGS (SciPy's L-BFGS-B) on the current level from epoch ``epoch`` for
        the rest of its budget: one epoch record (evaluated, logged, checkpointed) per L-BFGS
        iteration. Every evaluation is :meth:`gradient` of the whole training set (each data
        group its share); the loss and gradient SciPy sees are rank 0's, broadcast, so every
        rank runs the identical iterations.

        Returns
        -------
        int
            The next epoch (0-based).
        """
        from scipy.optimize import minimize
        N = len(self.X_train)
        idx = np.arange(N)
        part = np.array_split(idx, self.cfg.data_parallel)[self.ranks.group]
        full = Batch(epoch, 0, idx, part, self.X_train[part], self.ds.y_train[part],
                     None if self.len_train is None else self.len_train[part])
        run = dict(epoch=epoch, x=None, out=None, accepted=None)

        def new_iteration():
            self.times = _zero_times()
            run.update(t0=time.perf_counter(), nfev=0, steps=np.zeros(2), grew=np.zeros(2))

        def fun(x):
            self.model.flat[:] = x
            grad, r = self.gradient(full._replace(epoch=run["epoch"]))
            out = np.concatenate([[r.loss, r.correct], grad]).astype(np.float64)
            if self.ranks.size > 1:
                out = self.ranks.world.bcast(out, root=0)     # nothing rank-local enters SciPy
            run.update(x=np.array(x, copy=True), out=out, nfev=run["nfev"] + 1)
            run["steps"] += r.evals
            run["grew"] += [r.info["forward"].grew, r.info["adjoint"].grew]
            return out[0], out[2:]

        def callback(intermediate_result):
            x = intermediate_result.x
            if run["x"] is None or not np.array_equal(x, run["x"]):
                fun(x)
            self.model.flat[:] = x
            run["accepted"] = np.array(x, copy=True)
            self.finish_epoch(run["epoch"], run["out"][0], run["out"][1] / N, run["t0"],
                              run["steps"], run["nfev"], run["grew"])
            run["epoch"] += 1
            new_iteration()
            if self.stage_finished(run["epoch"]):
                raise StopIteration

        new_iteration()
        left = self.stages[self.stage][1] - (epoch - self.stage_start)
        x0 = self.model.flat.astype(np.float64)
        minimize(fun, x0, jac=True, method="L-BFGS-B", callback=callback,
                 options=dict(maxiter=left))
        self.model.flat[:] = x0 if run["accepted"] is None else run["accepted"]
        self._stage_over = True                 # converged, stopped, or its budget spent
        return run["epoch"]

    def train_epoch(self, epoch):
        """Train epoch ``epoch`` (0-based), evaluate, report, log and checkpoint it.

        Returns
        -------
        dict
            The epoch's record (also appended to :attr:`history`).
        """
        t_epoch = time.perf_counter()
        self.times = _zero_times()
        self._quality = _zero_quality()
        if getattr(self.model.cell, "stats", None) is not None:
            self.model.cell.stats.reset()
        loss_sum = correct = seen = 0.0
        steps, grew = np.zeros(2), np.zeros(2)
        for batch in self.batches(epoch):
            r = self.step(batch)
            steps += r.evals
            grew += [r.info["forward"].grew, r.info["adjoint"].grew]
            loss_sum += r.loss * len(batch.idx)
            correct += r.correct
            seen += len(batch.idx)
            self.log_batch(batch, r)
            if self.bar:
                self.bar.update(f"epoch {epoch + 1}/{self.cfg.epochs}: batch {batch.index + 1}/"
                                f"{self.n_batches}, loss {loss_sum / seen:.4f}")
        if self.bar:
            self.bar.done()
        return self.finish_epoch(epoch, loss_sum / seen, correct / seen, t_epoch, steps,
                                 self.n_batches, grew)

    def finish_epoch(self, epoch, loss, train_acc, t_epoch, steps, batches, grew):
        """Evaluate, report, log and checkpoint epoch ``epoch`` (0-based) that trained with mean
        loss ``loss`` and accuracy ``train_acc`` in ``batches`` gradient evaluations (L-BFGS: one
        iteration) since ``t_epoch`` (perf_counter), their step evaluations ``steps`` (forward,
        adjoint; summed) and solves whose residual grew ``grew``.

        Returns
        -------
        dict
            The epoch's record (also appended to :attr:`history`).
        """
        test, t_eval = self.evaluate()
        rec = dict(type="epoch", epoch=epoch + 1, loss=loss, train_acc=train_acc,
                   test_loss=test["loss"], test_acc=test["accuracy"],
                   seconds=time.perf_counter() - t_epoch, eval_seconds=t_eval, time=self.times,
                   step_evals_per_rank=dict(forward=steps[0] / batches,
                                            adjoint=steps[1] / batches),
                   batches=batches, solver=self.solver.name, ranks=self.ranks.size,
                   data_parallel=self.cfg.data_parallel, **self._stage_fields())
        if self.solver.name != "serial":
            grew = self.ranks.sum_over_data(grew)       # the same on the ranks of a data group
            rec["grew"] = dict(forward=int(grew[0]), adjoint=int(grew[1]))
        rec.update(self._quality_record())
        newton = _newton_record(self.model.cell, self.ranks)
        if newton is not None:
            rec["newton"] = newton
        self.history.append(rec)
        self.report(rec)
        self.log(rec, flush=True)
        self.checkpoint(epoch + 1)
        return rec

    def _quality_record(self):
        """The epoch's gradient checks and fallbacks for its record (summed over the data
        groups; the checks are the same on every rank)."""
        q, out = self._quality, {}
        if q["scaled"]:
            out["scaled_adjoint"] = int(q["scaled"])
        if self.solver.name != "serial":
            fb = self.ranks.sum_over_data(np.concatenate([q["fallback"], q["stalled"]]))
            out["fallback"] = dict(forward=int(fb[0]), adjoint=int(fb[1]),
                                   solves=int(self.ranks.sum_over_data(
                                       np.array([q["solves"]], np.float64))[0]))
            out["stalled"] = dict(forward=int(fb[2]), adjoint=int(fb[3]))
        if q["checks"]:
            c = np.array([x[:3] for x in q["checks"]], np.float64)
            out["gradient_check"] = dict(
                batches=len(c), cosine_min=float(np.min(c[:, 0])),
                cosine_median=float(np.median(c[:, 0])), rel_error_max=float(np.max(c[:, 1])),
                loss_error_max=float(np.max(c[:, 2])),
                used_exact=int(sum(x[3] for x in q["checks"])), seconds=q["seconds"],
                tol_scale=getattr(self.solver, "tol_scale", None))
        return out

    def evaluate(self, model=None, train=False):
        """Loss and accuracy of ``model`` (default: the run's) on the test set (``train``: the
        training set) (collective: the ranks share the batches).

        Returns
        -------
        result : dict
            See :func:`evaluate`.
        seconds : float
        """
        t0 = time.perf_counter()
        if model is None or model is self.model:
            self.sync_layers()
        with self.running():
            split = "train" if train else "test"
            test = evaluate(self.model if model is None else model, getattr(self, f"X_{split}"),
                            getattr(self.ds, f"y_{split}"), comm=self.ranks.world,
                            lengths=getattr(self, f"len_{split}"), pad=self.ds.pad)
        return test, time.perf_counter() - t0

    def report(self, rec):
        """The epoch's line for ``out``, and warning lines when the solver's iteration stopped
        contracting in some batches (``SolveStats.grew``) or Newton row solves of an
        implicit-newton cell did not converge."""
        depth = f"  depth {rec['depth']:3d}" if len(self.stages) > 1 else ""
        self.out(f"epoch {rec['epoch']:3d}{depth}  loss {rec['loss']:.4f}  train acc "
                 f"{100 * rec['train_acc']:6.2f}%  test acc {100 * rec['test_acc']:6.2f}%  "
                 f"{rec['seconds']:7.2f} s")
        grew = rec.get("grew")
        if grew and (grew["forward"] or grew["adjoint"]):
            self.out(f"  warning: the {rec['solver']} residual grew over the cycles (not "
                     f"contracting) in {grew['forward']} forward and {grew['adjoint']} adjoint "
                     f"solves of {rec['batches']} batches: their gradients are not the serial "
                     "sweep's, and more cycles make them worse. The coarse levels' long steps do "
                     "not follow this model's dynamics: use fewer --levels (2: the coarse level "
                     "is solved exactly) or a smaller --cf, with the classic cell also --cell "
                     "implicit; or --solver serial or deer")
        if rec.get("scaled_adjoint"):
            self.out(f"  exploding gradients: the adjoint of {rec['scaled_adjoint']} batches "
                     "outgrew the dtype's range and was kept at a power-of-two scale"
                     + (f"; --clip {self.cfg.clip:g} took their exact direction"
                        if self.cfg.clip is not None else ""))
        fb = rec.get("fallback")
        if fb and (fb["forward"] or fb["adjoint"]):
            self.out(f"  fallback: the serial sweep took {fb['forward']} forward and "
                     f"{fb['adjoint']} adjoint solves of {fb['solves']} batches (their "
                     f"{rec['solver']} solve missed its tolerance; those gradients are exact)")
        chk = rec.get("gradient_check")
        if chk:
            share = 100 * chk["seconds"] / max(rec["seconds"], 1e-12)
            self.out(f"  gradient check: {chk['batches']} batch(es), cosine min "
                     f"{chk['cosine_min']:.4f} (median {chk['cosine_median']:.4f}), relative "
                     f"error max {chk['rel_error_max']:.2e}, loss error max "
                     f"{chk['loss_error_max']:.2e}; {chk['seconds']:.2f} s ({share:.0f} % of the "
                     "epoch)" + (f"; {chk['used_exact']} below the target "
                                 f"{self.cfg.gradient_target:g} took the exact gradient"
                                 if chk["used_exact"] else ""))
        newton = rec.get("newton")
        if newton is not None and newton["unconverged"]:
            self.out(f"  warning: {newton['unconverged']} of {newton['solves']} implicit-newton "
                     f"row solves did not reach the tolerance (worst |G| "
                     f"{newton['max_residual']:.2e}): smaller --dt or weights, or a larger "
                     "max_iter")

    def log(self, rec, flush=False):
        """Write ``rec`` to the JSON-lines log (rank 0, with ``cfg.log``)."""
        if self.log_file:
            self.log_file.write(rec, flush=flush)

    def log_batch(self, batch, result):
        """Log the solvers' diagnostics of one batch (not for the serial solver)."""
        if self.log_file and self.solver.name != "serial":
            self.log(dict(type="batch", epoch=batch.epoch + 1, batch=batch.index + 1,
                          loss=result.loss, step_evals_max_rank=result.evals.tolist(),
                          **_batch_diagnostics(result.info)))

    def checkpoint(self, epoch):
        """Write the checkpoint after ``epoch`` epochs (with ``cfg.checkpoint``; collective: the
        warm-start states of every rank are gathered, rank 0 writes). See
        :func:`save_checkpoint`."""
        if not self.cfg.checkpoint:
            return
        state = self.opt_state
        if self.owned:                  # every layer's moments, from their owners, in a copy
            state = _copy_state(state)
            self.sync_layers(state)
        warm = gather_warm_arrays(self.solver, self.ranks)
        if self.ranks.root:
            save_checkpoint(self.cfg, epoch, self.model, state, self.standardizer,
                            self.rng, self.history, self.ds, warm, self.ranks.size,
                            extra=dict(nested_stage=self.stage, stage_start=self.stage_start)
                            if len(self.stages) > 1 else None)

    def close(self, quiet=False):
        """Close the log (``quiet``: ignore an error while closing it)."""
        if self.log_file:
            self.log_file.close(quiet=quiet)
            self.log_file = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(quiet=exc_type is not None)
        return False


def _copy_state(node):
    """A copy of an optimizer state whose arrays are copies (the structure rebuilt as it is)."""
    if isinstance(node, np.ndarray):
        return node.copy()
    if isinstance(node, Mapping):
        return {k: _copy_state(v) for k, v in node.items()}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return type(node)(*(_copy_state(v) for v in node))
    if isinstance(node, (tuple, list)):
        return type(node)(_copy_state(v) for v in node)
    return node


def _zero_quality():
    """The epoch's counters of solve fallbacks, stalls and gradient checks."""
    return dict(solves=0, fallback=np.zeros(2), stalled=np.zeros(2), checks=[], seconds=0.0,
                scaled=0)


def _zero_times():
    return dict(data=0.0, forward=0.0, adjoint=0.0, wait=0.0, optimizer=0.0)


def _check_last_batch(n_train, cfg):
    """Every batch is split into ``cfg.data_parallel`` parts: raise ConfigError (with a batch size
    that works) when the last, short batch of an epoch has fewer rows than parts."""
    B, D = cfg.batch_size, cfg.data_parallel
    batches = -(-n_train // B)
    last = n_train - (batches - 1) * B
    if last < D and (cfg.max_batches is None or cfg.max_batches >= batches):
        if n_train < D:
            raise ConfigError(f"the training set has {n_train} samples, fewer than --data-parallel "
                              f"{D}: every data group needs a sample; use a --data-parallel of at "
                              f"most {n_train}")
        good = min((b for b in range(D, n_train + 1) if n_train % b == 0 or n_train % b >= D),
                   key=lambda b: (abs(b - B), b))
        raise ConfigError(f"the last batch of every epoch would have {last} sample(s) ({n_train} "
                          f"training samples, --batch-size {B}), fewer than --data-parallel {D}: "
                          f"every data group needs a sample; use --batch-size {good} (any size "
                          f"that leaves 0 or at least {D} samples for the last batch)")


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


def train(cfg, out=print, progress=True, comm=None):
    """Train a :class:`GRUClassifier` or an :class:`~mgritnn.odenet.ODENet` (``cfg.model``) as
    ``cfg`` says (on every rank of ``comm`` under MPI).

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


def load_checkpoint(path):
    """Model, standardizer and metadata of a training checkpoint (or a model file: no standardizer)."""
    from ..model import model_from_meta
    arrays, meta = read_npz(path)
    model = model_from_meta(meta, path)
    model.set_params(arrays)
    std = None
    if "standardizer/mean" in arrays:
        std = datasets.Standardizer(arrays["standardizer/mean"], arrays["standardizer/std"])
    return model, std, meta
