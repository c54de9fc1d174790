"""The training loop: data -> solve -> loss -> adjoint -> gradient -> optimizer -> log -> checkpoint.

A run is fixed by a :class:`TrainConfig`. Checkpoints (atomic ``.npz``) hold the parameters under
PyTorch's names, the optimizer state, the shuffling RNG's state, the epoch, the standardization and
the configuration, so that ``resume=True`` continues a run to the bit-for-bit same result as the
uninterrupted run (the kernels are deterministic and independent of the thread count).
"""
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import datasets
from .config import set_num_threads
from .distributed import SelfComm, default_threads, get_comm, split_data_time
from .errors import CheckpointError, ConfigError, MgritnnError
from .io import atomic_savez, read_npz
from .model import GRUClassifier
from .optim import make_optimizer, state_from_arrays, state_to_arrays
from .optim.clip import clip_by_global_norm
from .solvers import make_solver


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (validated on construction).

    Attributes
    ----------
    data : str
        ``"default"`` (the embedded oscillations set), a ``.npz`` path, or a UCI HAR directory.
    seq_len : int or None
        Truncate/zero-pad sequences to this length (the default set is generated at this length).
    cell, hidden, layers, dtype, dt : model options (see :class:`mgritnn.GRUClassifier`)
    epochs, batch_size : int
    optimizer : {"adam", "sgd"}
    lr, momentum, weight_decay : float
    clip : float or None
        Global-norm gradient clipping threshold.
    seed : int
        Seeds the initialization, the default data set and the shuffling.
    newton_options : dict
        With ``cell="implicit-newton"``: the fields of :class:`~mgritnn.cells.NewtonConfig`
        (``tol``, ``max_iter``, ``damping``).
    solver : str
        Time solver of training: ``"serial"``, ``"mgrit"``, ``"deer"``, ``"quasi-deer"`` or ``"auto"``.
    solver_options : dict
        Options of the solver (the fields of its config class: ``MGRITConfig``, ``DEERConfig``).
    data_parallel : int
        Number of data groups; the ranks are split into data groups x time ranks.
    threads : int or None
        numba threads per rank (None: cores per node // ranks per node).
    checkpoint : str or None
        Path of the checkpoint written (atomically) after every epoch.
    resume : bool
        Continue from ``checkpoint`` if it exists.
    overwrite : bool
        Replace an existing ``checkpoint`` (of an earlier run) instead of refusing to start.
    log : str or None
        Path of a JSON-lines log (one record per epoch).
    max_batches : int or None
        Stop each epoch after this many batches (for quick experiments and tests).
    """
    data: str = "default"
    seq_len: int = None
    cell: str = "classic"
    newton_options: dict = dataclasses.field(default_factory=dict)
    hidden: int = 32
    layers: int = 1
    dtype: str = "float32"
    dt: float = 1.0
    epochs: int = 15
    batch_size: int = 100
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip: float = None
    seed: int = 0
    solver: str = "serial"
    solver_options: dict = dataclasses.field(default_factory=dict)
    data_parallel: int = 1
    threads: int = None
    checkpoint: str = None
    resume: bool = False
    overwrite: bool = False
    log: str = None
    max_batches: int = None

    def __post_init__(self):
        for name in ("hidden", "layers", "epochs", "batch_size", "data_parallel"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("seq_len", "threads", "max_batches"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.clip is not None and not self.clip > 0:
            raise ConfigError(f"clip must be a positive number, got {self.clip!r}")
        if self.resume and not self.checkpoint:
            raise ConfigError("resume needs a checkpoint path: add --checkpoint PATH")

    def check_paths(self):
        """Raise a ConfigError unless the run's outputs are files that replace neither its input
        nor an earlier run's checkpoint (called by :func:`train` before any work)."""
        data = None if self.data == "default" else os.path.realpath(self.data)
        for flag, path in (("--checkpoint", self.checkpoint), ("--log", self.log)):
            if path is None:
                continue
            if os.path.isdir(path):
                raise ConfigError(f"{flag} {path!r} is a directory: name a file in it, e.g. "
                                  f"{os.path.join(path, 'run.npz' if flag == '--checkpoint' else 'run.jsonl')!r}")
            if data is not None and os.path.realpath(path) == data:
                raise ConfigError(f"{flag} {path!r} is the training data (--data): writing it would "
                                  "destroy the data; choose another path")
        if self.checkpoint and self.log and \
                os.path.realpath(self.checkpoint) == os.path.realpath(self.log):
            raise ConfigError(f"--checkpoint and --log are the same file {self.checkpoint!r}: "
                              "choose two paths")
        if self.checkpoint and os.path.exists(self.checkpoint) and not (self.resume or self.overwrite):
            raise ConfigError(f"checkpoint {self.checkpoint!r} exists from an earlier run: add "
                              "--resume to continue it, or --overwrite to replace it")

    def optimizer_kwargs(self):
        kw = dict(lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer == "sgd":
            kw["momentum"] = self.momentum
        return kw


def evaluate(model, X, y, batch_size=100, solver="serial", comm=None):
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

    Returns
    -------
    dict with ``loss`` (float), ``accuracy`` (float in [0, 1]) and ``logits`` (N, C)
    """
    starts = range(0, len(X), batch_size)
    if comm is None or comm.Get_size() == 1 or solver != "serial":
        logits = np.concatenate([model.forward(X[i:i + batch_size], solver) for i in starts])
    else:
        rank, size = comm.Get_rank(), comm.Get_size()
        mine = {i: model.forward(X[i:i + batch_size], solver) for i in starts[rank::size]}
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

    def sum_over_data(self, arr):
        """Sum an array over the data groups (in place semantics: returns the sum)."""
        if self.groups == 1:
            return arr
        out = np.empty_like(arr)
        self.data.Allreduce(np.ascontiguousarray(arr), out)
        return out

    def max_over_world(self, values):
        return self._over_world(values, "MAX")

    def sum_over_world(self, values):
        return self._over_world(values, "SUM")

    def _over_world(self, values, op):
        values = np.asarray(values, dtype=np.float64)
        if self.size == 1:
            return values
        out = np.empty_like(values)
        from mpi4py import MPI
        self.world.Allreduce(values, out, op=getattr(MPI, op))
        return out


def _make_cell(cfg):
    """The cell of ``cfg``: its name, or a Newton cell with ``cfg.newton_options``."""
    if not cfg.newton_options:
        return cfg.cell
    if cfg.cell != "implicit-newton":
        raise ConfigError(f"Newton options {sorted(cfg.newton_options)} need --cell implicit-newton, "
                          f"not {cfg.cell!r}")
    from .cells import NewtonConfig, NewtonGRUCell
    try:
        return NewtonGRUCell(NewtonConfig(**cfg.newton_options))
    except TypeError as e:
        raise ConfigError(f"bad Newton option: {e}") from None


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
                fwd_fallback=f.fallback, fwd_message=f.message,
                bwd_iters=a.iterations, bwd_res=a.residual, bwd_status=a.status)


def train(cfg, out=print, progress=True, comm=None):
    """Train a :class:`GRUClassifier` as ``cfg`` says (on every rank of ``comm`` under MPI).

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
    model : GRUClassifier
        The same on every rank.
    history : list of dict
        One record per epoch (what the JSON-lines log holds).
    """
    cfg.check_paths()
    ranks = _Ranks(comm, cfg.data_parallel)
    set_num_threads(cfg.threads if cfg.threads is not None else
                    (None if ranks.size == 1 else default_threads(ranks.world)))
    solver = make_solver(cfg.solver, cfg.solver_options, ranks.time)
    if not ranks.root:
        out, progress = (lambda *a, **k: None), False
    ds = datasets.load(cfg.data, seq_len=cfg.seq_len, seed=cfg.seed)
    if cfg.batch_size < cfg.data_parallel:
        raise ConfigError(f"batch size {cfg.batch_size} is smaller than --data-parallel "
                          f"{cfg.data_parallel}: every data group needs samples")
    standardizer = datasets.Standardizer.fit(ds.X_train)
    X_train = standardizer.transform(ds.X_train, np.dtype(cfg.dtype))
    X_test = standardizer.transform(ds.X_test, np.dtype(cfg.dtype))
    model = GRUClassifier(X_train.shape[2], cfg.hidden, ds.num_classes, num_layers=cfg.layers,
                          cell=_make_cell(cfg), dtype=cfg.dtype, seed=cfg.seed, dt=cfg.dt)
    solver.local_steps(X_train.shape[1])            # a hierarchy that does not fit fails here, early
    opt = make_optimizer(cfg.optimizer, **cfg.optimizer_kwargs())
    opt_state = opt.init(model.flat)
    rng = np.random.default_rng(cfg.seed)
    history, start_epoch = [], 0

    if cfg.resume and os.path.exists(cfg.checkpoint):
        arrays, meta = read_npz(cfg.checkpoint)
        if not meta or meta.get("kind") != "train":
            raise CheckpointError(f"{cfg.checkpoint!r} is not an mgritnn training checkpoint")
        if meta["model"] != model.config:
            raise CheckpointError(
                f"checkpoint {cfg.checkpoint!r} was made for the model {meta['model']}, this run "
                f"builds {model.config}: use the same data, cell, hidden, layers, dtype and dt, "
                "or start a new checkpoint")
        model.set_params(arrays)
        opt_state = state_from_arrays(
            opt, {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")},
            model.flat)
        rng.bit_generator.state = meta["rng"]
        start_epoch = int(meta["epoch"])
        history = list(meta.get("history", []))
        out(f"resumed from {cfg.checkpoint} after epoch {start_epoch}")

    N = len(X_train)
    n_batches = -(-N // cfg.batch_size)
    if cfg.max_batches:
        n_batches = min(n_batches, cfg.max_batches)
    bar = _Progress() if progress else None
    log = open(cfg.log, "a") if (cfg.log and ranks.root) else None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            times = dict(data=0.0, forward=0.0, adjoint=0.0, wait=0.0, optimizer=0.0)
            perm = rng.permutation(N)
            if getattr(model.cell, "stats", None) is not None:
                model.cell.stats.reset()
            loss_sum = correct = seen = 0.0
            steps = np.zeros(2)
            for b in range(n_batches):
                t0 = time.perf_counter()
                idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                part = np.array_split(idx, cfg.data_parallel)[ranks.group]
                Xb, yb = X_train[part], ds.y_train[part]
                times["data"] += time.perf_counter() - t0
                loss, grad, info = model.loss_and_grad_flat(Xb, yb, solver, keys=part)
                weight = len(part) / len(idx)
                t0 = time.perf_counter()
                stats = ranks.sum_over_data(np.concatenate(
                    [grad * grad.dtype.type(weight),
                     np.array([loss * weight, np.sum(np.argmax(info["logits"], 1) == yb)], grad.dtype)]))
                grad, (loss, n_correct) = stats[:-2], stats[-2:]
                times["wait"] += (time.perf_counter() - t0 + info["time_reduce"]
                                  + info["forward"].wait_time + info["adjoint"].wait_time)
                times["forward"] += info["time_forward"]
                times["adjoint"] += info["time_adjoint"]
                evals = ranks.max_over_world([info["forward"].step_evals, info["adjoint"].step_evals])
                steps += evals
                if not np.isfinite(loss) or not np.all(np.isfinite(grad)):
                    raise MgritnnError(
                        f"the loss or gradient became NaN/inf at epoch {epoch + 1}, batch {b + 1}: "
                        "lower --lr or use --clip (the last checkpoint holds the previous epoch)")
                t0 = time.perf_counter()
                if cfg.clip is not None:
                    clip_by_global_norm(grad, cfg.clip)
                opt_state = opt.update(grad, opt_state, model.flat)
                times["optimizer"] += time.perf_counter() - t0
                loss_sum += float(loss) * len(idx)
                correct += float(n_correct)
                seen += len(idx)
                if log and solver.name != "serial":
                    rec = dict(type="batch", epoch=epoch + 1, batch=b + 1, loss=float(loss),
                               step_evals_max_rank=evals.tolist(), **_batch_diagnostics(info))
                    log.write(_json_line(rec))
                if bar:
                    bar.update(f"epoch {epoch + 1}/{cfg.epochs}: batch {b + 1}/{n_batches}, "
                               f"loss {loss_sum / seen:.4f}")
            if bar:
                bar.done()
            t0 = time.perf_counter()
            test = evaluate(model, X_test, ds.y_test, comm=ranks.world)
            t_eval = time.perf_counter() - t0
            rec = dict(type="epoch", epoch=epoch + 1, loss=loss_sum / seen, train_acc=correct / seen,
                       test_loss=test["loss"], test_acc=test["accuracy"],
                       seconds=time.perf_counter() - t_epoch, eval_seconds=t_eval, time=times,
                       step_evals_per_rank=dict(forward=steps[0] / n_batches,
                                                adjoint=steps[1] / n_batches),
                       batches=n_batches, solver=solver.name, ranks=ranks.size,
                       data_parallel=cfg.data_parallel)
            newton = _newton_record(model.cell, ranks)
            if newton is not None:
                rec["newton"] = newton
            history.append(rec)
            out(f"epoch {rec['epoch']:3d}  loss {rec['loss']:.4f}  train acc {100 * rec['train_acc']:6.2f}%  "
                f"test acc {100 * rec['test_acc']:6.2f}%  {rec['seconds']:7.2f} s")
            if newton is not None and newton["unconverged"]:
                out(f"  warning: {newton['unconverged']} of {newton['solves']} implicit-newton row "
                    f"solves did not reach the tolerance (worst |G| {newton['max_residual']:.2e}): "
                    "smaller --dt or weights, or a larger max_iter")
            if log:
                log.write(_json_line(rec))
                log.flush()
            if cfg.checkpoint and ranks.root:
                meta = dict(kind="train", model=model.config, train=dataclasses.asdict(cfg),
                            epoch=epoch + 1, rng=rng.bit_generator.state, history=history,
                            num_classes=ds.num_classes, class_names=list(ds.class_names))
                atomic_savez(cfg.checkpoint, _checkpoint_arrays(model, opt_state, standardizer), meta)
    finally:
        if log:
            log.close()
    return model, history


def load_checkpoint(path):
    """Model, standardizer and metadata of a training checkpoint (or a model file: no standardizer)."""
    from .model import model_from_meta
    arrays, meta = read_npz(path)
    model = model_from_meta(meta, path)
    model.set_params(arrays)
    std = None
    if "standardizer/mean" in arrays:
        std = datasets.Standardizer(arrays["standardizer/mean"], arrays["standardizer/std"])
    return model, std, meta
