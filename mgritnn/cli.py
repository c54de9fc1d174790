"""Command line: ``mgritnn <train|eval|predict|gradcheck|info>`` (``--help`` on each).

Errors a user can fix (bad data, options or checkpoints, outputs that cannot be written, the
operating system's errors) print one line ``mgritnn: error: ...`` on stderr and exit with status 2,
under MPI on every rank; a traceback means a bug in mgritnn. Warnings are one line
``mgritnn: warning: ...``.
"""
import argparse
import dataclasses
import os
import sys
import time
import warnings

import numpy as np

from .errors import ConfigError, MgritnnError, MgritnnWarning, os_error_message

EXIT_USER_ERROR = 2

#: Seconds a rank other than 0 waits before it reports its error and aborts: most errors are
#: raised on every rank, and rank 0's abort then ends the others before they print, so the error
#: is reported once.
ABORT_GRACE_S = 2.0
#: Seconds a rank waits between printing its error and MPI_Abort, so that the launcher forwards
#: the line before the abort ends the processes (without it the line was lost now and then).
FLUSH_BEFORE_ABORT_S = 0.3


def _add_train_args(p):
    from .cells import CELLS
    from .train import TrainConfig
    d = TrainConfig()
    p.add_argument("--data", default=d.data,
                   help="'default' (embedded oscillations set), a .npz file (X_train (N,T,C), y_train, "
                        "X_test, y_test) or a 'UCI HAR Dataset' directory (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=d.seq_len,
                   help="truncate/zero-pad sequences to this length (the default set is generated "
                        "at it; default: the data's own length, 128 for the default set)")
    p.add_argument("--num-classes", type=int, default=d.num_classes,
                   help="number of classes, >= 2 (default: the data's class_names, else the "
                        "largest label + 1, which must leave no class without samples); must "
                        "agree with stored class_names; the default set generates this many; a "
                        "class without training samples is a warning")
    p.add_argument("--cell", choices=sorted(CELLS), default=d.cell,
                   help="classic = torch.nn.GRU; implicit = Moon & Cyr's implicit GRU; "
                        "implicit-newton = fully implicit (backward Euler, Newton per step) "
                        "(default: %(default)s)")
    g = p.add_argument_group("implicit-newton cell (with --cell implicit-newton)")
    g.add_argument("--newton-tol", type=float, default=None,
                   help="|G|_inf tolerance per row (default 1e-10 float64, 1e-5 float32)")
    g.add_argument("--newton-max-iter", type=int, default=None,
                   help="Newton updates per row at most (default 8)")
    g.add_argument("--newton-damping", type=float, default=None,
                   help="update / (1 + damping) (default 0: Newton)")
    p.add_argument("--hidden", type=int, default=d.hidden, help="hidden size (default: %(default)s)")
    p.add_argument("--layers", type=int, default=d.layers, help="GRU layers (default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=d.dtype,
                   help="(default: %(default)s)")
    p.add_argument("--dt", type=float, default=d.dt, help="step size of the cell (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default=d.optimizer,
                   help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (default: %(default)s)")
    p.add_argument("--momentum", type=float, default=d.momentum,
                   help="SGD momentum (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="L2 weight decay (default: %(default)s)")
    p.add_argument("--clip", type=float, default=d.clip,
                   help="clip gradients to this global norm (default: no clipping)")
    p.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    p.add_argument("--solver", choices=["serial", "mgrit", "deer", "quasi-deer", "auto"],
                   default=d.solver,
                   help="time solver of training: the serial sweep, MGRIT, Newton over the "
                        "whole sequence (DEER; quasi-DEER with diagonal Jacobians), or auto: the "
                        "fastest of serial/deer/quasi-deer for the shape, measured "
                        "(default: %(default)s)")
    p.add_argument("--data-parallel", type=int, default=d.data_parallel,
                   help="split the MPI ranks into this many data groups x time ranks (default: 1)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="numba threads per rank (default: cores per node // ranks per node)")
    _add_solver_args(p)
    p.add_argument("--checkpoint", default=d.checkpoint,
                   help="write a checkpoint here after every epoch (atomically: a failed or killed "
                        "write leaves the previous one; missing directories are created)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint, which must exist (bit for bit as "
                        "uninterrupted; settings that differ from the checkpoint's are named in a "
                        "warning)")
    p.add_argument("--resume-or-start", action="store_true",
                   help="like --resume, but start a new run when --checkpoint does not exist yet "
                        "(for job scripts that are simply restarted)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --checkpoint of an earlier run (otherwise an error)")
    p.add_argument("--log", default=d.log,
                   help="append one JSON line per epoch to this file (missing directories are "
                        "created)")
    p.add_argument("--max-batches", type=int, default=d.max_batches,
                   help="stop every epoch after this many batches (quick runs)")
    p.add_argument("--quiet", action="store_true", help="no progress line during epochs")


def _int_list(text):
    try:
        v = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or a comma-separated list, got {text!r}")
    return v[0] if len(v) == 1 else tuple(v)


def _str_list(text):
    v = text.split(",")
    return v[0] if len(v) == 1 else tuple(v)


# Solver options: flag -> ({solver: its config field}, argparse keywords). A flag names one
# meaning; solvers that share the meaning share the flag (DEER and quasi-DEER take the same ones).
_DEER = ("deer", "quasi-deer")
_MG = ("mgrit",)


def _fields(solvers, field):
    return {s: field for s in solvers}


_SOLVER_FLAGS = {
    "--preset": (_fields(_MG, "preset"),
                 dict(choices=None, help="MGRIT: a named option set that the other MGRIT flags "
                                         "override: paper (Moon & Cyr: 3 levels, cf 4, FCF, 2/1 "
                                         "cycles) or fast (2 levels, F-relaxation, 1/1 cycles, warm "
                                         "start)")),
    "--levels": (_fields(_MG, "levels"), dict(type=int, help="MGRIT: levels (default 3; 1 = serial sweep)")),
    "--cf": (_fields(_MG, "cf"), dict(type=_int_list, help="MGRIT: coarsening factor, or one per level (default 4)")),
    "--relax": (_fields(_MG, "relax"), dict(type=_str_list, help="MGRIT: FCF or F relaxation, or one per level (default FCF)")),
    "--cycle": (_fields(_MG, "cycle"), dict(choices=["V", "F"], help="MGRIT: cycle type (default V)")),
    "--fwd-iters": (_fields(_MG, "fwd_iters"), dict(type=int, help="MGRIT: max forward cycles (default 2)")),
    "--bwd-iters": (_fields(_MG, "bwd_iters"), dict(type=int, help="MGRIT: max adjoint cycles (default 1)")),
    "--tol": (dict(mgrit="tol", deer="atol", **{"quasi-deer": "atol"}),
              dict(type=float, help="MGRIT, DEER: absolute tolerance: of the MGRIT residual (default 1e-9), of "
                                    "every element of the DEER update (default 1e-6 float64, "
                                    "1e-4 float32)")),
    "--rtol": (dict(_fields(_MG + _DEER, "rtol")),
               dict(type=float, help="MGRIT, DEER: relative tolerance: of the MGRIT residual to its first norm "
                                     "(default 0: off); of the DEER update to |h| (default 1e-4 "
                                     "float64, 1e-3 float32)")),
    "--min-coarse": (_fields(_MG, "min_coarse"),
                     dict(type=int, help="MGRIT with --levels 0: coarsest intervals at least")),
    "--coarse-input": (_fields(_MG, "coarse_input"), dict(choices=["sample", "mean"],
                                                          help="MGRIT: input of a coarse step (default sample)")),
    "--coarse-cell": (_fields(_MG, "coarse_cell"),
                      dict(choices=None, help="MGRIT: cell of the coarse levels (default implicit; implicit-newton for that fine cell)")),
    "--initial-guess": (dict(_fields(_MG + _DEER, "initial_guess")),
                        dict(choices=["zero", "input", "warm"],
                             help="MGRIT, DEER: zero; input (DEER only: h_{t+1} = step(0, x_t)); or warm: each "
                                  "sample's trajectory from its previous visit (default zero)")),
    "--max-iter": (_fields(_DEER, "max_iter"), dict(type=int, help="DEER: max Newton iterations per "
                                                                  "layer (default 50)")),
    "--damping": (_fields(_DEER, "damping"),
                  dict(type=float, help="DEER: the iteration uses J / (1 + damping); 0 = Newton, "
                                        "large = Picard, stable (default 0)")),
    "--chunks": (_fields(_DEER, "chunks"), dict(type=int, help="DEER: time chunks of the scan per "
                                                              "rank (default: from the shape)")),
}


def _add_solver_args(p):
    from .cells import CELLS
    from .solvers import MGRIT_PRESETS
    g = p.add_argument_group("time solver options (each applies to the solvers its help names)")
    for flag, (_, kw) in _SOLVER_FLAGS.items():
        if flag == "--coarse-cell":
            kw = dict(kw, choices=sorted(CELLS))
        elif flag == "--preset":
            kw = dict(kw, choices=sorted(MGRIT_PRESETS))
        g.add_argument(flag, default=None, **kw)
    g.add_argument("--no-skip-first-down", action="store_true",
                   help="MGRIT: do the full down-leg in the first cycle too")
    g.add_argument("--no-fallback", action="store_true",
                   help="DEER: keep the last iterate when Newton fails (default: run the serial "
                        "sweep instead, reported in the log)")


def _solver_options(a):
    """The options of ``a.solver`` from the command line; a flag of another solver is an error."""
    opts, wrong = {}, []
    for flag, (fields, _) in _SOLVER_FLAGS.items():
        value = getattr(a, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if a.solver not in fields:
            wrong.append((flag, sorted(fields)))
            continue
        opts[fields[a.solver]] = value
    for flag, solvers, field, value in (("--no-skip-first-down", _MG, "skip_first_down", False),
                                        ("--no-fallback", _DEER, "fallback", False)):
        if getattr(a, flag[2:].replace("-", "_")):
            if a.solver in solvers:
                opts[field] = value
            else:
                wrong.append((flag, list(solvers)))
    if wrong:
        raise ConfigError("; ".join(f"{flag} is an option of --solver {' or '.join(s)}"
                                    for flag, s in wrong) + f", not of --solver {a.solver}")
    if a.solver == "mgrit" and opts.get("levels") == 0:
        opts["levels"] = None                       # automatic
    return opts


def cmd_train(a):
    from .train import TrainConfig, train
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    newton = {k[len("newton_"):]: v for k, v in vars(a).items()
              if k.startswith("newton_") and v is not None}
    cfg = TrainConfig(solver_options=_solver_options(a), newton_options=newton,
                      **{k: v for k, v in vars(a).items()
                         if k in fields and k not in ("solver_options", "newton_options")})
    from .distributed import get_comm
    comm = get_comm()
    if comm.Get_rank() == 0:
        opts = "".join(f" {k}={v}" for k, v in cfg.solver_options.items())
        print(f"mgritnn train: data={cfg.data} cell={cfg.cell} hidden={cfg.hidden} layers={cfg.layers} "
              f"dtype={cfg.dtype} solver={cfg.solver}{opts} ranks={comm.Get_size()} "
              f"optimizer={cfg.optimizer} lr={cfg.lr} batch={cfg.batch_size} epochs={cfg.epochs}",
              flush=True)
    train(cfg, out=lambda line: print(line, flush=True), progress=not a.quiet, comm=comm)
    return 0


def _data_for_checkpoint(a, meta, model):
    """The data set that ``eval``/``predict`` run ``model`` on.

    ``--data`` (default: the checkpoint's training data) at ``--seq-len`` (default: the
    checkpoint's), labelled with the model's classes: a label the model has no output for, or
    class_names with more classes than the model, is a DataError naming both class counts. An
    explicit ``--seq-len`` below 1 or an empty ``--data`` is a ConfigError (never silently replaced
    by the checkpoint's value).
    """
    from . import datasets
    train_cfg = (meta or {}).get("train") or {}
    if a.seq_len is not None and a.seq_len < 1:
        raise ConfigError(f"--seq-len {a.seq_len}: the sequence length must be at least 1; give a "
                          "positive number of time steps, or leave --seq-len out to use the "
                          "checkpoint's")
    if a.data is not None and not a.data.strip():
        raise ConfigError("--data is empty: name a data source ('default', a .npz file or a UCI "
                          "HAR directory), or leave --data out to use the checkpoint's training "
                          "data")
    source = a.data if a.data is not None else train_cfg.get("data", "default")
    seq_len = a.seq_len if a.seq_len is not None else train_cfg.get("seq_len")
    generated = source == "default" and train_cfg.get("data", "default") == "default"
    return datasets.load(source, seq_len=seq_len, seed=train_cfg.get("seed", 0),
                         num_classes=train_cfg.get("num_classes") if generated else None,
                         model_classes=model.num_classes)


def _transform(std, X, model):
    """``X`` standardized as in training (``std``; None: as it is), in the model's dtype."""
    from .errors import DataError
    if X.shape[2] != model.input_size:
        raise DataError(f"the data has {X.shape[2]} channels but the checkpoint's model takes "
                        f"{model.input_size}: evaluate on data with the {model.input_size} "
                        f"channels the model was trained on (--data)")
    if std is None:
        return np.asarray(X, dtype=model.dtype)
    return std.transform(X, model.dtype)


def cmd_eval(a):
    from .train import evaluate, load_checkpoint
    model, std, meta = load_checkpoint(a.checkpoint)
    ds = _data_for_checkpoint(a, meta, model)
    for split in ("train", "test") if a.train else ("test",):
        X, y = getattr(ds, f"X_{split}"), getattr(ds, f"y_{split}")
        r = evaluate(model, _transform(std, X, model), y)
        print(f"{split}: loss {r['loss']:.4f}  accuracy {100 * r['accuracy']:.2f}%  ({len(y)} samples)")
    return 0


def cmd_predict(a):
    from .io import atomic_savez
    from .train import evaluate, load_checkpoint
    if os.path.isdir(a.out):
        raise ConfigError(f"--out {a.out!r} is a directory: name a file in it, e.g. "
                          f"{os.path.join(a.out, 'logits.npz')!r}")
    for flag, path in (("--checkpoint", a.checkpoint), ("--data", a.data)):
        if path and os.path.exists(path) and os.path.realpath(path) == os.path.realpath(a.out):
            raise ConfigError(f"--out {a.out!r} is the {flag} file: writing the logits there would "
                              "destroy it; choose another path")
    model, std, meta = load_checkpoint(a.checkpoint)
    ds = _data_for_checkpoint(a, meta, model)
    X, y = getattr(ds, f"X_{a.split}"), getattr(ds, f"y_{a.split}")
    logits = evaluate(model, _transform(std, X, model), y)["logits"]
    atomic_savez(a.out, dict(logits=logits, predictions=np.argmax(logits, 1), labels=y),
                 meta=dict(kind="predictions", split=a.split, checkpoint=os.path.abspath(a.checkpoint)))
    print(f"wrote logits {logits.shape} of the {a.split} split to {a.out}")
    return 0


def gradcheck(cell="classic", layers=2, hidden=5, input_size=3, classes=3, seq_len=7, batch=4,
              seed=0, eps=1e-6, directions=3, dt=1.0):
    """Worst relative error of the gradient of every parameter against central finite differences.

    A random float64 problem; for each parameter, ``directions`` random directions supported on that
    parameter only; relative error ``|fd - g.d| / max(|fd|, |g.d|, 1e-12)``.

    Returns
    -------
    dict of str -> float
    """
    from .model import GRUClassifier
    if not (np.isfinite(eps) and eps > 0):
        raise ConfigError(f"eps must be a positive step for the central differences, got {eps!r}: "
                          "use e.g. --eps 1e-6")
    if classes < 2:
        raise ConfigError(f"--classes {classes}: a softmax over one class has a zero gradient, so "
                          "the check would test nothing; use --classes 2 or more")
    m = GRUClassifier(input_size, hidden, classes, num_layers=layers, cell=cell, dtype="float64",
                      seed=seed, dt=dt)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(batch, seq_len, input_size))
    y = rng.integers(0, classes, size=batch)
    _, g, _ = m.loss_and_grad_flat(X, y)
    theta = m.flat.copy()
    worst = {}
    views = m.unflatten(np.arange(theta.size))
    for name, idx in views.items():
        errs = []
        for _ in range(directions):
            d = np.zeros_like(theta)
            d[idx.ravel()] = rng.normal(size=idx.size)
            m.flat[:] = theta + eps * d
            lp, _, _ = m.loss_and_grad_flat(X, y)
            m.flat[:] = theta - eps * d
            lm, _, _ = m.loss_and_grad_flat(X, y)
            m.flat[:] = theta
            fd, an = (lp - lm) / (2 * eps), float(g @ d)
            errs.append(abs(fd - an) / max(abs(fd), abs(an), 1e-12))
        worst[name] = max(errs)
    return worst


def cmd_gradcheck(a):
    worst = gradcheck(a.cell, a.layers, a.hidden, a.input_size, a.classes, a.seq_len, a.batch,
                      a.seed, a.eps, dt=a.dt)
    print(f"gradcheck: cell={a.cell} layers={a.layers} hidden={a.hidden} T={a.seq_len} "
          f"batch={a.batch} float64, central differences eps={a.eps}")
    for name, e in worst.items():
        print(f"  {name:16s} worst relative error {e:.2e}")
    bad = {k: e for k, e in worst.items() if e > a.tol}
    if bad:
        print(f"FAILED: {len(bad)} parameter(s) above {a.tol:g}", file=sys.stderr)
        return 1
    print(f"ok: all below {a.tol:g}")
    return 0


def cmd_info(a):
    import numba
    import scipy

    from . import __version__
    from .model import GRUClassifier
    GRUClassifier(1, 1, 2).forward(np.zeros((1, 1, 1)))     # run a parallel kernel: resolves the layer
    print(f"mgritnn {__version__}")
    print(f"python {sys.version.split()[0]}  numpy {np.__version__}  numba {numba.__version__}  "
          f"scipy {scipy.__version__}")
    print(f"numba threads {numba.get_num_threads()} of {numba.config.NUMBA_NUM_THREADS}, "
          f"threading layer {numba.threading_layer()}, cores {os.cpu_count()}")
    try:                    # report, never fail: MPI is optional for serial runs
        import mpi4py
        from mpi4py import MPI
        mpi = (f"mpi4py {mpi4py.__version__}  {MPI.Get_library_version().splitlines()[0].strip()}  "
               f"world size {MPI.COMM_WORLD.Get_size()}")
    except (ImportError, RuntimeError) as e:
        mpi = f"mpi4py not usable: {e}"
    print(mpi)
    return 0


def _out_of_memory_message(e):
    """The one line for a ``MemoryError`` that escaped a command (an allocation the up-front
    estimates of :func:`mgritnn.memory.check_memory` did not foresee): NumPy's size of the failed
    allocation, and the fix."""
    detail = f" ({e})" if str(e) else ""
    return (f"out of memory{detail}: use a smaller --hidden, --layers, --batch-size or --seq-len "
            "(or fewer ranks per node), or run on a machine with more memory")


def build_parser():
    from .cells import CELLS
    parser = argparse.ArgumentParser(
        prog="mgritnn", description="Parallel-in-time training of GRU networks (MGRIT, DEER).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a GRU classifier",
                       description="Train a GRU classifier; one line per epoch.")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    for name, helptext, func in (("eval", "loss and accuracy of a checkpoint", cmd_eval),
                                 ("predict", "write the logits of a checkpoint on a data split",
                                  cmd_predict)):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--checkpoint", required=True, help="a checkpoint written by mgritnn train")
        p.add_argument("--data", default=None,
                       help="data source (default: the one the checkpoint was trained on)")
        p.add_argument("--seq-len", type=int, default=None,
                       help="truncate/pad to this length, >= 1 (default: the checkpoint's)")
        if name == "eval":
            p.add_argument("--train", action="store_true", help="also evaluate the training split")
        else:
            p.add_argument("--split", choices=["train", "test"], default="test")
            p.add_argument("--out", required=True,
                           help=".npz file to write: logits (N, C), predictions (N,), labels (N,)")
        p.set_defaults(func=func)

    p = sub.add_parser("gradcheck", help="check gradients against finite differences",
                       description="Worst relative error per parameter of the analytic gradient "
                                   "against central finite differences, on a small random float64 problem.")
    p.add_argument("--cell", choices=sorted(CELLS), default="classic")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=5)
    p.add_argument("--input-size", type=int, default=3)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=7)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dt", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eps", type=float, default=1e-6)
    p.add_argument("--tol", type=float, default=1e-6, help="fail (exit 1) above this relative error")
    p.set_defaults(func=cmd_gradcheck)

    p = sub.add_parser("info", help="versions, threads and MPI", description="Versions, threads and MPI.")
    p.set_defaults(func=cmd_info)
    return parser


def _user_error(message, comm):
    """Report a user's error in one line on stderr and return the exit status 2; under MPI, abort
    every rank with status 2 (a rank other than 0 first waits :data:`ABORT_GRACE_S` seconds, so
    that an error raised on every rank is reported once, by rank 0)."""
    if comm is not None and comm.Get_rank() != 0:
        time.sleep(ABORT_GRACE_S)
    where = f"[rank {comm.Get_rank()}] " if comm is not None else ""
    print(f"mgritnn: error: {where}{message}", file=sys.stderr, flush=True)
    if comm is not None:
        time.sleep(FLUSH_BEFORE_ABORT_S)
        comm.Abort(EXIT_USER_ERROR)
    return EXIT_USER_ERROR


def _show_warning(show):
    """A ``warnings.showwarning`` that prints an :class:`MgritnnWarning` as one line
    ``mgritnn: warning: ...`` on stderr, and passes other warnings to ``show``."""
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, MgritnnWarning):
            print(f"mgritnn: warning: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


def main(argv=None):
    """Entry point of the ``mgritnn`` command; returns the exit status.

    A user's error (an :class:`~mgritnn.errors.MgritnnError`, or an ``OSError`` of the operating
    system: permission denied, disk full, ...) prints one line ``mgritnn: error: ...`` and gives
    status 2. Under an MPI launcher with several ranks, an error on any rank prints its message
    and aborts all ranks (MPI_Abort) with that status, so that no rank is left waiting for it;
    a bug prints its traceback and aborts with status 1.
    """
    args = build_parser().parse_args(argv)
    from .distributed.comm import under_mpi_launcher
    comm = None
    if under_mpi_launcher():
        from .distributed import get_comm
        comm = get_comm()
        if comm.Get_size() == 1:
            comm = None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(warnings.showwarning)
            return args.func(args)
    except MgritnnError as e:
        return _user_error(e, comm)
    except OSError as e:                    # not wrapped where it arose: still the user's to fix
        doing = "cannot access" if e.filename else "an input/output operation failed"
        return _user_error(os_error_message(e, doing), comm)
    except MemoryError as e:
        return _user_error(_out_of_memory_message(e), comm)
    except BaseException:
        if comm is None:
            raise
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        time.sleep(FLUSH_BEFORE_ABORT_S)
        comm.Abort(1)

