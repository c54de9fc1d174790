"""Command line: ``mgritnn <train|eval|predict|plan|gradcheck|info>`` (``--help`` on each).

Errors a user can fix (bad data, options or checkpoints, outputs that cannot be written, the
operating system's errors) print one line ``mgritnn: error: ...`` on stderr and exit with status 2,
under MPI on every rank; a traceback means a bug in mgritnn. Warnings are one line
``mgritnn: warning: ...``.
"""
import argparse
import dataclasses
import os
import re
import signal
import sys
import threading
import time
import warnings
from typing import NamedTuple

import numpy as np

from .errors import ConfigError, MgritnnError, MgritnnWarning, os_error_message
from .options import field_docs, option_fields

EXIT_USER_ERROR = 2
#: Exit status of a run stopped by a signal the command turns into one line (128 + the signal's
#: number, the shell's convention: 130 for Ctrl-C).
EXIT_SIGNAL_BASE = 128

#: Seconds a rank other than 0 waits before it reports its error and aborts: most errors are
#: raised on every rank, and rank 0's abort then ends the others before they print, so the error
#: is reported once.
ABORT_GRACE_S = 2.0

#: Seconds a rank other than 0 goes on after Ctrl-C, for rank 0 to act on it and end the run,
#: before it ends itself (:func:`_leave_interrupt_to_rank_0`).
INTERRUPT_GRACE_S = 10.0
#: Seconds a rank waits between printing its error and MPI_Abort, so that the launcher forwards
#: the line before the abort ends the processes (without it the line was lost now and then).
FLUSH_BEFORE_ABORT_S = 0.3


# ------------------------------------------------------------------------------------------------
# mgritnn train: the flags are generated from the config classes' fields
# ------------------------------------------------------------------------------------------------

class _Option(NamedTuple):
    """A flag generated from a config field.

    Attributes
    ----------
    flag : str
        ``"--max-iter"``: the field's name in kebab case (``--no-<name>`` for a bool that is True
        by default), with the nested config's prefix (``--newton-atol``).
    dest : str
        Where argparse stores it: the field's name, or ``"<dict field>.<name>"`` for a field of a
        nested config (``"solver_options.max_iter"``).
    name : str
        The field's name.
    solvers : tuple of str
        The solvers whose config has the field (empty: not a solver option).
    kwargs : dict
        The keywords of ``add_argument``.
    none_as : object
        The command-line value that stands for None (``metadata["flag"]["none_as"]``: MGRIT's
        ``--levels 0`` for automatic levels).
    """
    flag: str
    dest: str
    name: str
    solvers: tuple
    kwargs: dict
    none_as: object = None


def _kebab(name):
    return "--" + name.replace("_", "-")


def _plain(doc):
    """A docstring's description as plain text for ``--help``: ``:math:`x```, ``:class:`~a.B```
    and double back-quotes lose their markup."""
    doc = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]*)`", r"\1", doc)
    return doc.replace("``", "").replace("\\", "")


def _flag_kwargs(field, doc, nested, label=""):
    """``add_argument`` keywords of the config field ``field``: the type from the annotation (or
    ``metadata["flag"]["type"]``), the choices from the metadata (a tuple, or a function giving
    one), the help from its documentation ``doc`` (prefixed ``label:``) with the default. A field
    of a nested config is None on the command line when not given."""
    meta = field.metadata.get("flag", {})
    default = None if field.default is dataclasses.MISSING else field.default
    doc = _plain(doc)
    if field.type is bool and default:
        doc = f"sets {field.name} to False ({field.name}: {doc})"
    shown = "" if default is None or field.type is bool else f" (default: {default})"
    kw = dict(help=(f"{label}: " if label else "") + doc.replace("%", "%%") + shown,
              default=None if nested else default)
    if field.type is bool:
        kw.update(action="store_const", const=not default)
    else:
        kw["type"] = meta.get("type", field.type if field.type in (int, float, str) else str)
        if "choices" in meta:
            kw["choices"] = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        else:
            kw["metavar"] = field.name.upper()
    return kw


def _config_options(cls, group, prefix="", label="", solvers=()):
    """The flags of the fields of the config class ``cls`` nested in the option dict ``group``
    of TrainConfig (one :class:`_Option` per field that has a flag, plus a hidden one for each old
    name of a field, see :func:`mgritnn.options.renamed`)."""
    docs = field_docs(cls)
    out = {}
    for f in option_fields(cls):
        meta = f.metadata.get("flag", {})
        if meta is False:
            continue
        name = prefix + f.name
        flag = _kebab(("no_" if f.type is bool and f.default is True else "") + name)
        out[f.name] = _Option(flag, f"{group}.{f.name}", f.name, tuple(solvers),
                              _flag_kwargs(f, docs.get(f.name, ""), True, label),
                              meta.get("none_as"))
    for old, new in getattr(cls, "RENAMED", {}).items():
        kw = dict(out[new].kwargs, help=argparse.SUPPRESS, action=_OldFlag,
                  new=_kebab(prefix + new))
        out[old] = out[new]._replace(flag=_kebab(prefix + old), kwargs=kw)
    return list(out.values())


def _merge(a, b):
    """One flag for two solvers' fields of one name: both solvers, both helps, and the choices of
    both (none if either takes any value)."""
    kw = dict(a.kwargs)
    if b.kwargs["help"] is not argparse.SUPPRESS:
        kw["help"] += "; " + b.kwargs["help"]
    kw.pop("choices", None)
    if "choices" in a.kwargs and "choices" in b.kwargs:
        kw["choices"] = list(dict.fromkeys([*a.kwargs["choices"], *b.kwargs["choices"]]))
    return a._replace(solvers=a.solvers + b.solvers, kwargs=kw)


def _solver_options_table():
    """The flags of every registered solver's config: solvers that share a field name share its
    flag (MGRIT's and DEER's ``--max-iter``), and its help gives each one's meaning; plus
    ``--preset`` for the solvers whose config has presets."""
    from .solvers import MGRIT_PRESETS, SOLVERS
    merged = {}
    for cls in dict.fromkeys(e.config for e in SOLVERS.values() if e.config is not None):
        names = [n for n, e in SOLVERS.items() if e.config is cls]
        for o in _config_options(cls, "solver_options", label=cls.__name__[:-len("Config")],
                                 solvers=names):
            o = o._replace(solvers=tuple(n for n in names if o.name not in SOLVERS[n].fixed))
            merged[o.flag] = _merge(merged[o.flag], o) if o.flag in merged else o
    presets = tuple(n for n, e in SOLVERS.items() if hasattr(e.config, "preset"))
    merged["--preset"] = _Option("--preset", "solver_options.preset", "preset", presets, dict(
        default=None, choices=sorted(MGRIT_PRESETS),
        help="MGRIT: a named option set that the other MGRIT flags override: paper (Moon & Cyr: "
             "3 levels, cf 4, FCF, 2/1 cycles), fast (2 levels, F-relaxation, 1/1 cycles, "
             "warm start; not for --model odenet) or layers (the ODENet papers': automatic "
             "levels, cf 4, F on the fine level and FCF on coarse ones, 2/2 cycles, zero start)"))
    return list(merged.values())


def _train_options():
    """Every generated flag of ``mgritnn train``, by the setting it belongs to (the fields of
    TrainConfig's specs, :func:`mgritnn.train.config.setting_fields`): ``{name: [_Option,
    ...]}`` (an option dict has the flags of its config's fields)."""
    from .cells import NewtonConfig
    from .train.config import setting_fields
    table = {}
    for name, f, doc in setting_fields():
        kind = f.metadata.get("flag", {}).get("config")
        if kind == "newton":
            table[name] = _config_options(NewtonConfig, name, prefix="newton_")
        elif kind == "solver":
            table[name] = _solver_options_table()
        else:
            kw, flag = _flag_kwargs(f, doc, False), _kebab(name)
            if f.type is bool:              # --name, or --no-name for a bool that is True
                kw = dict(kw, action="store_false" if f.default else "store_true")
                del kw["const"]
                flag = _kebab("no_" + name) if f.default else flag
            table[name] = [_Option(flag, name, name, (), kw)]
    return table


class _OldFlag(argparse.Action):
    """A hidden flag under an option's old name: stores the value and notes the deprecation
    (warned by :func:`main`)."""

    def __init__(self, *args, new, **kwargs):
        super().__init__(*args, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        notes = getattr(namespace, "deprecated_flags", [])
        setattr(namespace, "deprecated_flags", notes + [f"{option_string} is deprecated: use "
                                                        f"{self.new}"])


_GROUPS = {"newton_options": "implicit-newton cell (with --cell implicit-newton)",
           "solver_options": "time solver options (each applies to the solvers its help names)"}


def _add_train_args(p):
    for field, options in _train_options().items():
        g = p.add_argument_group(_GROUPS[field]) if field in _GROUPS else p
        for o in options:
            g.add_argument(o.flag, dest=o.dest, **o.kwargs)
    p.add_argument("--quiet", action="store_true", help="no progress line during epochs")


def _nested_options(a, options, solver=None):
    """The options given on the command line among ``options`` (the flags of one option dict);
    with ``solver``: a flag of another solver is an error."""
    opts, wrong = {}, []
    for o in options:
        value = getattr(a, o.dest)
        if value is None or o.kwargs.get("action") is _OldFlag:    # an old name: same dest
            continue
        if o.kwargs.get("action") == "store_const" and value != o.kwargs["const"]:
            continue        # set by another solver's flag of the same name (--no-fallback, DEER)
        if solver is not None and solver not in o.solvers:
            wrong.append((o.flag, o.solvers))
            continue
        opts[o.name] = None if o.none_as is not None and value == o.none_as else value
    if wrong:
        raise ConfigError("; ".join(f"{flag} is an option of --solver {' or '.join(sorted(s))}"
                                    for flag, s in wrong) + f", not of --solver {solver}")
    return opts


def train_config(a):
    """The :class:`~mgritnn.train.TrainConfig` of the parsed ``mgritnn train`` arguments ``a``
    (its settings by name, :meth:`~mgritnn.train.TrainConfig.from_settings`)."""
    from .train import TrainConfig
    settings = {}
    for name, options in _train_options().items():
        if name == "solver_options":
            settings[name] = _nested_options(a, options, solver=a.solver)
        elif name == "newton_options":
            settings[name] = _nested_options(a, options)
        else:
            settings[name] = getattr(a, name)
    return TrainConfig.from_settings(settings)


def cmd_train(a):
    from .train import train
    cfg = train_config(a)
    from .distributed import get_comm
    comm = get_comm()
    if comm.Get_rank() == 0:
        opts = "".join(f" {k}={v}" for k, v in cfg.solver_options.items())
        layer = (f"layer=conv channels={cfg.channels}" if cfg.layer == "conv" else
                 f"width={cfg.width}")
        model = (f"model=odenet depth={cfg.depth} {layer} activation={cfg.activation} "
                 f"final_time={cfg.final_time}"
                 + (f" nested={cfg.nested_levels}x{cfg.nested_cf}" if cfg.nested_levels else "")
                 if cfg.model == "odenet" else
                 f"cell={cfg.cell} hidden={cfg.hidden} layers={cfg.layers}")
        print(f"mgritnn train: data={cfg.data} {model} "
              f"dtype={cfg.dtype} solver={cfg.solver}{opts} ranks={comm.Get_size()} "
              + (f"optimizer=lbfgs (full batch) iterations={cfg.epochs}" if cfg.optimizer == "lbfgs"
                 else f"optimizer={cfg.optimizer} lr={cfg.lr} batch={cfg.batch_size} "
                      f"epochs={cfg.epochs}"),
              flush=True)
    train(cfg, out=lambda line: print(line, flush=True), progress=not a.quiet, comm=comm)
    return 0


def _data_for_checkpoint(a, meta, model):
    """The data set that ``eval``/``predict`` run ``model`` on.

    ``--data`` (default: the checkpoint's training data) at ``--seq-len`` (default: the
    checkpoint's), with the checkpoint's length policy (its ``lengths`` and ``pad``; a training
    checkpoint from before the policy existed: ``ignore``, as it was trained; a model file: the
    defaults), labelled with the model's classes: a label the model has no
    output for, or
    class_names with more classes than the model, is a DataError naming both class counts. An
    explicit ``--seq-len`` below 1 or an empty ``--data`` is a ConfigError (never silently replaced
    by the checkpoint's value).
    """
    from . import datasets
    from .errors import DataError
    train_cfg = (meta or {}).get("train") or {}
    if a.seq_len is not None and a.seq_len < 1:
        raise ConfigError(f"--seq-len {a.seq_len}: the sequence length must be at least 1; give a "
                          "positive number of time steps, or leave --seq-len out to use the "
                          "checkpoint's")
    if a.data is not None and not a.data.strip():
        raise ConfigError("--data is empty: name a data source ('default', 'peaks', a .npz file or "
                          "a UCI HAR directory), or leave --data out to use the checkpoint's "
                          "training data")
    source = a.data if a.data is not None else train_cfg.get("data", "default")
    if (a.data is None and isinstance(source, str) and source not in datasets.GENERATED_SOURCES
            and not os.path.exists(source)):
        where = ("" if os.path.isabs(source) else
                 f", a path relative to the directory training ran in, not found from "
                 f"{os.getcwd()!r}")
        raise DataError(f"the checkpoint's training data {source!r} (recorded by mgritnn train"
                        f"{where}) does not exist: name the data with --data PATH, or run "
                        "from the directory where training ran")
    seq_len = a.seq_len if a.seq_len is not None else train_cfg.get("seq_len")
    generated = (source in datasets.GENERATED_SOURCES
                 and train_cfg.get("data", "default") == source)
    # A training checkpoint from before the length policy (no "lengths" in its settings) was
    # trained on the padded sequences as data, standardized padding included: "ignore" gives it
    # exactly the inputs it was trained on.
    old = bool(train_cfg) and "lengths" not in train_cfg
    def load(seq_len, classes):
        return datasets.load(source, seq_len=seq_len, seed=train_cfg.get("seed", 0),
                             num_classes=train_cfg.get("num_classes") if generated else None,
                             model_classes=classes,
                             lengths=train_cfg.get("lengths", "ignore" if old else "use"),
                             pad=train_cfg.get("pad", datasets.PAD_POLICIES[0]))

    kind = datasets.MODEL_DATA_KINDS[model.model_type]

    def check_kind(ds):
        return datasets.check_data_kind(
            ds, model.model_type, who=f"the {model.model_type} of checkpoint {a.checkpoint!r}",
            fix=f"evaluate it on {kind} data: leave --data out for the data it was trained on, "
                "or name other data with --data")

    try:
        ds = load(seq_len, model.num_classes)
    except DataError:           # data of the other kind fails first on the checkpoint's
        try:                    # --seq-len or its class count: then the kind is the message
            other = load(a.seq_len, None)
        except MgritnnError:
            other = None
        if other is None or other.kind == kind:
            raise
        ds = other
    return check_kind(ds)


def _transform(std, X, model, lengths=None, pad="end"):
    """``X`` standardized as in training (``std``; None: as it is), in the model's dtype; with
    the true ``lengths`` (N,), the padding steps (where ``pad`` says) stay 0 as in training."""
    from .errors import DataError
    inputs = getattr(model, "input_size", None) or model.num_features
    if X.shape[-1] != inputs:
        raise DataError(f"the data has {X.shape[-1]} channels but the checkpoint's model takes "
                        f"{inputs}: evaluate on data with the {inputs} "
                        f"channels the model was trained on (--data)")
    if std is None:
        return np.asarray(X, dtype=model.dtype)
    return std.transform(X, model.dtype, lengths, pad)


def cmd_eval(a):
    from .train import evaluate, load_checkpoint
    model, std, meta = load_checkpoint(a.checkpoint)
    ds = _data_for_checkpoint(a, meta, model)
    for split in ("train", "test") if a.train else ("test",):
        X, y = getattr(ds, f"X_{split}"), getattr(ds, f"y_{split}")
        lengths = getattr(ds, f"len_{split}")
        r = evaluate(model, _transform(std, X, model, lengths, ds.pad), y, lengths=lengths,
                     pad=ds.pad)
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
    lengths = getattr(ds, f"len_{a.split}")
    X = _transform(std, X, model, lengths, ds.pad)
    logits = evaluate(model, X, y, lengths=lengths, pad=ds.pad)["logits"]
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


def _plan_shape(a):
    """(B, T, I, H, L) of ``mgritnn plan``: ``--shape``, or T and I from ``--data`` with
    ``--batch-size``, ``--hidden`` and ``--layers``."""
    from .plan import parse_shape
    if (a.shape is None) == (a.data is None):
        raise ConfigError("give either --shape B,T,I,H,L or --data FILE (with --batch-size, "
                          "--hidden, --layers), not both or neither")
    if a.shape is not None:
        return parse_shape(a.shape)
    for flag in ("--batch-size", "--hidden", "--layers"):
        value = getattr(a, flag[2:].replace("-", "_"))
        if value < 1:
            raise ConfigError(f"{flag} {value}: give a positive number (it is "
                              f"{dict(zip(('--batch-size', '--hidden', '--layers'), 'BHL'))[flag]} "
                              "of the planned shape)")
    from . import datasets
    ds = datasets.load(a.data)
    T, I = ds.seq_len, ds.num_channels          # static data: a DataError naming the fix
    return parse_shape((a.batch_size, T, I, a.hidden, a.layers))


def cmd_plan(a):
    from .config import set_num_threads
    from .plan import format_plan, load_or_calibrate, plan
    shape = _plan_shape(a)
    if a.threads < 1:
        raise ConfigError(f"--threads {a.threads}: give a positive number of threads per rank")
    set_num_threads(a.threads)          # a thread count this machine cannot run is an error now
    seen = {}

    def costs(batch):
        if batch not in seen:
            seen[batch] = load_or_calibrate(
                a.cell, shape.H, shape.L, a.dtype, a.threads, batch, size=a.calibration_size,
                recalibrate=a.recalibrate,
                report=lambda line: print(f"mgritnn plan: {line}", file=sys.stderr, flush=True))
        return seen[batch]
    rows = plan(shape, a.ranks, a.threads, a.cell, a.dtype, costs, a.deer_iters, a.classes,
                a.cores)
    print(format_plan(shape, rows, a.threads))
    return 0


def _add_plan_args(p, cells):
    p.add_argument("--shape", default=None, help="B,T,I,H,L: batch, steps, inputs, hidden, layers")
    p.add_argument("--data", default=None,
                   help="take T and I from this data source (.npz or UCI HAR directory) instead")
    p.add_argument("--batch-size", type=int, default=100, help="B with --data (default: 100)")
    p.add_argument("--hidden", type=int, default=32, help="H with --data (default: 32)")
    p.add_argument("--layers", type=int, default=1, help="L with --data (default: 1)")
    p.add_argument("--ranks", type=int, default=1, help="processes available (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="numba threads per rank (default: 1)")
    p.add_argument("--cores", type=int, default=None,
                   help="cores the ranks run on (default: ranks x threads, one each, as on a "
                        "cluster; this machine's count to plan for oversubscribing it)")
    p.add_argument("--cell", choices=sorted(cells), default="implicit")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--classes", type=int, default=6, help="classes of the head (default: 6)")
    p.add_argument("--deer-iters", type=int, default=None,
                   help="Newton iterations per layer of DEER / quasi-DEER (default: 3 / 8, "
                        "typical measured values)")
    p.add_argument("--calibration-size", choices=("default", "tiny"), default="default",
                   help="how thoroughly to calibrate on first use (tiny: seconds, rough)")
    p.add_argument("--recalibrate", action="store_true",
                   help="measure again even if this machine's cache has the figures")
    p.set_defaults(func=cmd_plan)


def _size_flags(args):
    """The flags that set the size of what the command ``args.command`` computes, for the model in
    use: ODENet's --width/--depth, the GRU's --hidden/--layers, ``plan``'s --shape, ..."""
    command = getattr(args, "command", None)
    if command == "train":
        if getattr(args, "model", None) == "odenet":
            return ["--width", "--depth", "--batch-size"]
        return ["--hidden", "--layers", "--batch-size", "--seq-len"]
    if command == "plan":
        if getattr(args, "shape", None) is not None:
            return ["B, T, H or L of --shape"]
        return ["--hidden", "--layers", "--batch-size"]
    if command == "gradcheck":
        return ["--hidden", "--layers", "--batch", "--seq-len"]
    if command in ("eval", "predict"):
        return ["--seq-len", "--data (a smaller data set)"]
    return ["--hidden", "--layers", "--batch-size", "--seq-len"]


def _out_of_memory_message(e, args=None):
    """The one line for a ``MemoryError`` that escaped a command (an allocation the up-front
    estimates of :func:`mgritnn.memory.check_memory` did not foresee): NumPy's size of the failed
    allocation, and the fix, in the flags of the command and model in use (:func:`_size_flags`)."""
    detail = f" ({e})" if str(e) else ""
    flags = _size_flags(args)
    flags = ", ".join(flags[:-1]) + " or " + flags[-1] if len(flags) > 1 else flags[0]
    return (f"out of memory{detail}: use a smaller {flags} (or fewer ranks per node), or run on "
            "a machine with more memory")


#: Options whose value may start with '-' (a shape "B,T,I,H,L" with a negative entry): given as
#: ``--shape -1,...``, argparse took the value for an option and said only "expected one
#: argument"; :func:`_join_dash_values` passes it on as ``--shape=-1,...``, so that the option's
#: own check names what is wrong with it.
_DASH_VALUE_OPTIONS = ("--shape",)


def _join_dash_values(argv):
    out, i = [], 0
    while i < len(argv):
        if (argv[i] in _DASH_VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-")
                and argv[i + 1][1:2] not in ("", "-") and not argv[i + 1][1:2].isalpha()):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def build_parser():
    from .cells import CELLS
    parser = argparse.ArgumentParser(
        prog="mgritnn", description="Parallel-in-time training of GRU networks (MGRIT, DEER) and layer-parallel "
                    "training of residual networks (ODENets, MGRIT over layers).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a GRU classifier or an ODENet",
                       description="Train a GRU sequence classifier (--model gru) or a residual "
                                   "network on static features (--model odenet); one line per "
                                   "epoch (L-BFGS: per iteration).")
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

    p = sub.add_parser("plan", help="predicted time per training step of every route",
                       description="Predicted time per training step of serial, MGRIT (paper, "
                                   "fast), DEER and quasi-DEER on the given ranks, from a "
                                   "performance model calibrated on this machine (on first use; "
                                   "cached, see MGRITNN_CACHE).")
    _add_plan_args(p, CELLS)

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


def _interrupted_message(signum, args):
    """The one line for a run stopped by the signal ``signum`` (Ctrl-C: SIGINT): what stopped it,
    and for ``train`` what is left: the last checkpoint (written atomically after each epoch, so
    an interrupted write leaves the previous one whole) and how to resume from it."""
    name = signal.Signals(signum).name
    line = f"interrupted ({name})"
    if getattr(args, "command", None) != "train":
        return line
    ck = getattr(args, "checkpoint", None)
    if not ck:
        return (f"{line}: training stopped; no checkpoint was written (add --checkpoint PATH to be "
                "able to resume an interrupted run)")
    if not os.path.exists(ck):
        return (f"{line}: training stopped before its first checkpoint {ck!r} was written: start "
                "again")
    return (f"{line}: training stopped; the last checkpoint {ck!r} is intact: resume with "
            f"--checkpoint {ck} --resume")


def _interrupted(signum, args, comm):
    """Stop on the signal ``signum`` (raised as ``KeyboardInterrupt`` for SIGINT) with one line
    ``mgritnn: interrupted (SIGINT) ...`` on stderr and status 128 + ``signum`` (130), no traceback.

    Under MPI the launcher forwards Ctrl-C to every rank, and only rank 0 acts on it (the others
    ignore SIGINT: :func:`_leave_interrupt_to_rank_0`): it prints the line and ends at once with
    that status (``os._exit``: no MPI_Abort and its messages, no MPI_Finalize waiting for ranks
    that are gone), and the launcher ends the others. A rank other than 0 that does get here (a
    ``KeyboardInterrupt`` raised by other means) ends the same way after a moment, without a line.
    A further signal while stopping is ignored."""
    status = EXIT_SIGNAL_BASE + int(signum)
    signal.signal(signum, signal.SIG_IGN)
    if comm is None or comm.Get_rank() == 0:
        print(f"mgritnn: {_interrupted_message(signum, args)}", file=sys.stderr, flush=True)
    if comm is None:
        return status
    if comm.Get_rank() != 0:
        time.sleep(FLUSH_BEFORE_ABORT_S)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _leave_interrupt_to_rank_0(grace=INTERRUPT_GRACE_S):
    """On a rank other than 0, leave SIGINT (Ctrl-C, which the launcher forwards to every rank) to
    rank 0: go on working for ``grace`` seconds, then end silently with status 130.

    Python raises ``KeyboardInterrupt`` only between bytecodes, so a rank waiting inside a blocking
    MPI call cannot act on the signal until its peers reach that call too. If every rank acted on
    it at once, rank 0 could be left waiting for a rank that had already stopped, be killed by the
    launcher, and say nothing. So the others go on to meet it, rank 0 reaches Python, prints the
    one line and ends the run (:func:`_interrupted`), and the launcher ends the others. Should the
    launcher not, a watchdog thread ends this rank ``grace`` seconds after the signal (it wakes at
    once, from :func:`signal.set_wakeup_fd`, though the main thread is blocked in MPI)."""
    if threading.current_thread() is not threading.main_thread():
        return                          # signals are the embedding program's business then
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.signal(signal.SIGINT, lambda signum, frame: None)    # no KeyboardInterrupt here
    signal.set_wakeup_fd(write)

    def watch():
        while os.read(read, 1) != bytes([signal.SIGINT]):
            pass
        time.sleep(grace)
        os._exit(EXIT_SIGNAL_BASE + signal.SIGINT)

    threading.Thread(target=watch, name="mgritnn-sigint-watchdog", daemon=True).start()


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
    a bug prints its traceback and aborts with status 1. Ctrl-C (SIGINT) prints one line
    ``mgritnn: interrupted (SIGINT) ...`` (for ``train``: whether the last checkpoint is there to
    resume from) and gives status 130, on every rank (:func:`_interrupted`).
    """
    try:
        args = build_parser().parse_args(_join_dash_values(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:               # Ctrl-C while the parser imports the cells
        return _interrupted(signal.SIGINT, None, None)
    from .distributed.comm import under_mpi_launcher
    from .runtime import blas_threads
    comm = None
    try:
        if under_mpi_launcher():
            from .distributed import get_comm
            comm = get_comm()
            if comm.Get_size() == 1:
                comm = None
            elif comm.Get_rank() != 0:
                _leave_interrupt_to_rank_0()
        with warnings.catch_warnings(), blas_threads(1):
            warnings.showwarning = _show_warning(warnings.showwarning)
            for note in getattr(args, "deprecated_flags", []):
                warnings.warn(note, MgritnnWarning)
            return args.func(args)
    except MgritnnError as e:
        return _user_error(e, comm)
    except OSError as e:                    # not wrapped where it arose: still the user's to fix
        doing = "cannot access" if e.filename else "an input/output operation failed"
        return _user_error(os_error_message(e, doing), comm)
    except MemoryError as e:
        return _user_error(_out_of_memory_message(e, args), comm)
    except KeyboardInterrupt:
        return _interrupted(signal.SIGINT, args, comm)
    except BaseException:
        if comm is None:
            raise
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        time.sleep(FLUSH_BEFORE_ABORT_S)
        comm.Abort(1)

