"""The configuration of a training run: :class:`TrainConfig`, made of four nested specs.

``TrainConfig(model=GRUSpec(...) | ODENetSpec(...), optim=OptimSpec(...), solver=SolverSpec(...),
run=RunSpec(...))``: the network, the optimizer, the time solver and the run (data, epochs,
outputs). Each spec is a frozen dataclass validated on construction by the shared validators of
:mod:`mgritnn.options`; every field is a flag of ``mgritnn train`` (``hidden`` -> ``--hidden``),
whose help is the field's description below.

One name, one meaning: a field's name is its flag, its key in a checkpoint's settings
(:meth:`TrainConfig.settings`) and its read-only alias on the config (``cfg.hidden`` is
``cfg.model_spec.hidden``). The flat keyword arguments of earlier versions
(``TrainConfig(hidden=4, lr=0.01)``) still work, with a :class:`FlatConfigWarning`.
"""
import dataclasses
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from .. import datasets
from ..cells import CELLS, NewtonConfig
from ..cells.odenet import ACTIVATIONS
from ..errors import CheckpointError, ConfigError
from ..io import check_output_path
from ..odenet import INTERPOLATIONS, LAYER_INITS, LAYER_KINDS, OPENINGS
from ..optim import OPTIMIZERS, check_learning_rate, check_max_norm, check_momentum, \
    check_weight_decay
from ..options import (FrozenDict, check_bool, check_choice, check_choices, check_int, check_real,
                       field_docs, int_list, set_frozen, upgrade)
from ..solvers import MGRIT_PRESETS, SOLVERS, make_config


#: The models of ``mgritnn train --model`` (the keys of :data:`datasets.MODEL_DATA_KINDS`).
MODELS = tuple(datasets.MODEL_DATA_KINDS)
ODENET_ACTIVATIONS = tuple(sorted(ACTIVATIONS))
#: The optimizers of ``--optimizer``: the gradient transformations of
#: :data:`mgritnn.optim.OPTIMIZERS` and the full-batch L-BFGS-B of SciPy.
OPTIMIZER_NAMES = (*OPTIMIZERS, "lbfgs")


def _cell_names():
    """The registered cells (the choices of ``cell``)."""
    return sorted(CELLS)


def _solver_names():
    """The registered solvers (the choices of ``solver``)."""
    return sorted(SOLVERS)


class FlatConfigWarning(DeprecationWarning):
    """``TrainConfig`` called with the flat keyword arguments of earlier versions
    (``TrainConfig(hidden=4, lr=0.01)``): give the nested specs instead. Warned once per process
    (a script that builds many configs the old way hears it once)."""


# ------------------------------------------------------------------------------------------------
# The four specs
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """What every model spec has (:class:`GRUSpec`, :class:`ODENetSpec`).

    Attributes
    ----------
    dtype : {"float32", "float64"}
        Floating-point type of the parameters and the computation.
    """
    #: The model's name (``--model``; ``TrainConfig.model``).
    model: ClassVar[str] = ""
    dtype: str = field(default="float32", metadata={"flag": {"choices": ("float32", "float64")}})

    def __post_init__(self):
        check_choices("", self)

    @classmethod
    def own_fields(cls):
        """The names of the fields of this model only (not of :class:`ModelSpec`)."""
        shared = {f.name for f in dataclasses.fields(ModelSpec)}
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in shared)


@dataclass(frozen=True)
class GRUSpec(ModelSpec):
    """A GRU sequence classifier (``--model gru``).

    Attributes
    ----------
    dtype : {"float32", "float64"}
        Floating-point type of the parameters and the computation.
    seq_len : int or None
        Truncate/zero-pad sequences to this length (the default set is generated at it; None: the
        data's own length, 128 for the default set).
    lengths : {"use", "ignore"}
        The true sequence lengths of a .npz file that has them (len_train, len_test): use = read,
        check (steps beyond a length must be zero padding) and standardize on the real steps
        only, and every solver runs the padded steps as identity steps (step size 0), so the
        classifier reads each sequence's state at its true end; ignore = drop them (a warning):
        the padding counts as data. Data without lengths is the same under both.
    pad : {"end", "front"}
        Where the zero padding of shorter sequences lies: end = after the real steps (as stored);
        front = before them (every sequence right-aligned, after --seq-len truncation). With
        lengths used the two give the same model up to rounding (padded steps are the identity);
        with lengths ignored, front makes the last state follow the last real step. Data
        without lengths is the same under both.
    cell : str
        classic = torch.nn.GRU; implicit = Moon & Cyr's implicit GRU; implicit-newton = fully
        implicit (backward Euler, Newton per step).
    newton_options : mapping
        With ``cell="implicit-newton"``: the fields of :class:`~mgritnn.cells.NewtonConfig`
        (``atol``, ``max_iter``, ``damping``); kept as a read-only :class:`FrozenDict`.
    hidden : int
        Hidden size.
    layers : int
        GRU layers.
    dt : float
        Step size of the cell.
    """
    model: ClassVar[str] = "gru"
    seq_len: int = None
    lengths: str = field(default=datasets.LENGTHS_POLICIES[0],
                         metadata={"flag": {"choices": datasets.LENGTHS_POLICIES}})
    pad: str = field(default=datasets.PAD_POLICIES[0],
                     metadata={"flag": {"choices": datasets.PAD_POLICIES}})
    cell: str = field(default="classic", metadata={"flag": {"choices": _cell_names}})
    newton_options: Mapping = field(default_factory=FrozenDict,
                                    metadata={"flag": {"config": "newton"}})
    hidden: int = 32
    layers: int = 1
    dt: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_int("seq_len", self.seq_len, least=1, none=True)
        for name in ("hidden", "layers"):
            check_int(name, getattr(self, name), least=1)
        check_real("dt", self.dt, low=0, low_open=True)
        check_choice("cell", self.cell, _cell_names())
        set_frozen(self, "newton_options", _option_dict(
            "newton_options", self.newton_options, "Newton", NewtonConfig.RENAMED, stacklevel=5))


@dataclass(frozen=True)
class ODENetSpec(ModelSpec):
    """A residual network on static features whose layers are the solvers' time steps
    (``--model odenet``), with nested iteration over its depth.

    Attributes
    ----------
    dtype : {"float32", "float64"}
        Floating-point type of the parameters and the computation.
    depth : int
        ODENet: residual layers N (the solvers' steps; MGRIT splits them over the ranks).
    width : int
        ODENet: width w of the state.
    activation : {"tanh", "relu", "smoothrelu"}
        ODENet: activation of the opening and the layers.
    final_time : float
        ODENet: T of the layer ODE; the layers' step is T / depth.
    opening : {"dense", "copy"}
        ODENet: opening layer, sigma(W y + b) or the features copied (width >= features).
    tikhonov : float
        ODENet: gamma of the Tikhonov term (gamma/2)|theta|^2.
    ddt_penalty : float
        ODENet: gamma_ddt of the smoothness term over the layers.
    layer_init : {"constant", "independent"}
        ODENet: one initial draw for all layers, or one per layer.
    layer_init_scale : float or None
        ODENet: initial residual layers' weights and biases uniform in +-s (0: all zero; the
        layer-parallel papers' weights_init, e.g. 0 or 1e-6); None: PyTorch's 1/sqrt(fan-in).
    layer : {"dense", "conv"}
        ODENet: dense layers on feature vectors, or 3x3 convolutions on images (data with an
        image shape, e.g. digits.npz); conv: opening convolution, classifier on the pixel mean.
    channels : int
        ODENet --layer conv: channels c of the convolutional layers (the state is c x H x W).
    nested_levels : int
        ODENet nested iteration: train networks of depth/nested_cf^K, ..., depth/nested_cf
        first (K = nested_levels; 0: off), each refined into the next (layers interpolated,
        opening and classifier copied); the optimizer state starts fresh at each level. The
        finest level always trains --epochs; epochs are numbered on across the levels.
    nested_cf : int
        Nested iteration: depth ratio m of consecutive levels (depth must be divisible by m^K).
    nested_interp : {"constant", "linear"}
        Nested iteration: interpolation of the layers to the finer network.
    nested_epochs : int or list of int
        Nested iteration: epochs (L-BFGS: iterations) of the coarse levels, coarsest first
        (e_K,...,e_1; one number: every coarse level; default: --epochs each).
    nested_target_acc : float or None
        Nested iteration: end a coarse level early once an epoch's training accuracy reaches
        this (0..1).
    """
    model: ClassVar[str] = "odenet"
    depth: int = 32
    width: int = 8
    activation: str = field(default="tanh", metadata={"flag": {"choices": ODENET_ACTIVATIONS}})
    final_time: float = 1.0
    opening: str = field(default="dense", metadata={"flag": {"choices": OPENINGS}})
    tikhonov: float = 1e-7
    ddt_penalty: float = 1e-5
    layer_init: str = field(default="constant", metadata={"flag": {"choices": LAYER_INITS}})
    layer_init_scale: float = None
    layer: str = field(default="dense", metadata={"flag": {"choices": LAYER_KINDS}})
    channels: int = 8
    nested_levels: int = 0
    nested_cf: int = 2
    nested_interp: str = field(default="constant", metadata={"flag": {"choices": INTERPOLATIONS}})
    nested_epochs: object = field(default=None, metadata={"flag": {"type": int_list}})
    nested_target_acc: float = None

    def __post_init__(self):
        super().__post_init__()
        for name in ("depth", "width", "nested_cf", "channels"):
            check_int(name, getattr(self, name), least=1)
        check_choice("layer", self.layer, LAYER_KINDS)
        # The one rule for options that do not apply, between the spec's own fields (so not a
        # row of _APPLIES_ONLY, whose table-driven tests know no --layer conv setting).
        for layer, names, owner in (
                ("conv", ("width", "opening"), "--layer dense (the conv state is channels x H x W, "
                 "its opening a convolution)"),
                ("dense", ("channels",), "--layer conv (convolutional ODENet layers)")):
            for name in names if self.layer == layer else ():
                if getattr(self, name) != type(self).__dataclass_fields__[name].default:
                    raise ConfigError(f"--{name} is an option of {owner}, not of --layer "
                                      f"{layer}: drop it")
        check_int("nested_levels", self.nested_levels, least=0)
        check_real("final_time", self.final_time, low=0, low_open=True)
        for name in ("tikhonov", "ddt_penalty"):
            check_real(name, getattr(self, name), low=0)
        check_real("layer_init_scale", self.layer_init_scale, low=0, none=True)
        check_real("nested_target_acc", self.nested_target_acc, low=0, high=1, none=True)
        if self.nested_epochs is not None:
            budgets = self.nested_epochs if isinstance(self.nested_epochs, (tuple, list)) \
                else (self.nested_epochs,)
            for e in budgets:
                check_int("nested_epochs", e, least=0)
            if isinstance(self.nested_epochs, list):
                set_frozen(self, "nested_epochs", tuple(self.nested_epochs))
        if self.nested_levels:
            m, K = self.nested_cf, self.nested_levels
            if m < 2:
                raise ConfigError(f"--nested-levels {K} with --nested-cf {m} would train depth "
                                  f"{self.depth} {K + 1} times (each level is nested_cf times "
                                  "deeper than the last): give --nested-cf 2 or more")
            if self.depth % m ** K:
                raise ConfigError(f"--nested-levels {K} with --nested-cf {m} trains depths "
                                  f"{self.depth}/{m}^k: --depth {self.depth} must be divisible by "
                                  f"{m ** K}")
            if isinstance(self.nested_epochs, tuple) and len(self.nested_epochs) != K:
                raise ConfigError(f"--nested-epochs has {len(self.nested_epochs)} entries for "
                                  f"--nested-levels {K}: give one per coarse level, coarsest "
                                  "first (or one number for all)")

    def nested_stages(self, epochs):
        """The levels of the run, coarsest first: a list of ``(depth, epochs)``; the last is the
        finest network (``depth``, ``epochs``: the run's epochs); one entry without nested
        iteration."""
        K, m = self.nested_levels, self.nested_cf
        budgets = self.nested_epochs
        if budgets is None:
            budgets = (epochs,) * K
        elif not isinstance(budgets, tuple):
            budgets = (budgets,) * K
        return [(self.depth // m ** (K - i), int(budgets[i])) for i in range(K)] + \
            [(self.depth, epochs)]


#: The model specs by name (``--model``).
MODEL_SPECS = {spec.model: spec for spec in (GRUSpec, ODENetSpec)}
assert tuple(MODEL_SPECS) == MODELS


@dataclass(frozen=True)
class OptimSpec:
    """The optimizer and its hyper-parameters, checked by the optimizers' own validators
    (:func:`mgritnn.optim.check_learning_rate`, ...).

    Attributes
    ----------
    optimizer : {"adam", "sgd", "lbfgs"}
        The optimizer; lbfgs = full-batch L-BFGS-B of SciPy on the flat parameters (float64
        for SciPy, the model's dtype for the gradient; --lr, --momentum, --weight-decay,
        --clip, --max-batches and --batch-size do not apply; a resumed run restarts its curvature memory).
    lr : float
        Learning rate.
    momentum : float
        SGD momentum (--optimizer sgd only).
    weight_decay : float
        L2 weight decay.
    clip : float or None
        Clip gradients to this global norm (None: no clipping). At any sequence length: where
        the serial sweep's adjoint outgrows the dtype (exploding gradients, e.g. float32 at
        T = 16384), its scale is kept as a power-of-two exponent and the clipped gradient is
        the exact gradient's direction at this norm (without --clip such a gradient is inf
        and training stops).
    """
    optimizer: str = field(default="adam", metadata={"flag": {"choices": OPTIMIZER_NAMES}})
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip: float = None

    def __post_init__(self):
        check_learning_rate(self.lr)
        check_momentum(self.momentum)
        check_weight_decay(self.weight_decay)
        check_max_norm(self.clip, name="clip", none=True)
        check_choices("", self)

    def optimizer_kwargs(self):
        """The keywords of :func:`mgritnn.optim.make_optimizer` for ``optimizer`` (adam, sgd)."""
        kw = dict(lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer == "sgd":
            kw["momentum"] = self.momentum
        return kw


@dataclass(frozen=True)
class SolverSpec:
    """The time solver of training: a registered name and its options.

    ``config`` is the solver's config object (:func:`mgritnn.solvers.make_config`: an
    ``MGRITConfig``, ``DEERConfig``, ``AutoConfig``; None for the serial sweep, which has no
    options), made and so validated on construction. :meth:`of` makes the spec of a config
    object.

    Attributes
    ----------
    solver : str
        Time solver of training: the serial sweep, MGRIT, Newton over the whole sequence (DEER;
        quasi-DEER with diagonal Jacobians), or auto: the fastest of serial/deer/quasi-deer for
        the shape, measured (several time ranks: DEER or quasi-DEER, as the performance model
        predicts, then measured).
    solver_options : mapping
        Options of the solver: the fields of its config class (``MGRITConfig``, ``DEERConfig``,
        ``AutoConfig``; old names are renamed, with a warning), and ``preset`` for MGRIT; kept as
        a read-only :class:`FrozenDict`.
    """
    solver: str = field(default="serial", metadata={"flag": {"choices": _solver_names}})
    solver_options: Mapping = field(default_factory=FrozenDict,
                                    metadata={"flag": {"config": "solver"}})

    def __post_init__(self):
        check_choice("solver", self.solver, _solver_names())
        renamed = getattr(SOLVERS[self.solver].config, "RENAMED", {})
        set_frozen(self, "solver_options", _option_dict("solver_options", self.solver_options,
                                                        self.solver, renamed, stacklevel=5))
        make_config(self.solver, self.solver_options)        # the solver's own validation

    @property
    def config(self):
        """The solver's config object (:class:`~mgritnn.solvers.SerialConfig` for the serial sweep)."""
        return make_config(self.solver, self.solver_options)

    @classmethod
    def of(cls, config):
        """The spec of the solver config object ``config`` (an ``MGRITConfig(...)``, ...): the
        registered name whose config class and fixed fields it has (the most fixed fields:
        ``DEERConfig(quasi=True)`` is quasi-deer), and its option fields that differ from their
        defaults."""
        for name, entry in sorted(SOLVERS.items(), key=lambda item: -len(item[1].fixed)):
            if entry.config is type(config) and all(getattr(config, k) == v
                                                    for k, v in entry.fixed.items()):
                options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                           if f.compare and f.metadata.get("option", True)
                           and f.name not in entry.fixed
                           and getattr(config, f.name) != _default(f)}
                return cls(name, options)
        raise ConfigError(f"solver must be a solver name, a SolverSpec or the config of a "
                          f"registered solver (MGRITConfig, DEERConfig, AutoConfig), got "
                          f"{config!r}")


@dataclass(frozen=True)
class RunSpec:
    """The run: data, epochs and batches, seeds, ranks and threads, outputs, gradient checks.

    Attributes
    ----------
    data : str
        'default' (the embedded oscillations set), 'peaks' (the static Peaks set, for
        --model odenet), a .npz file (X_train (N, T, C) or (N, F), y_train, X_test, y_test) or a
        'UCI HAR Dataset' directory.
    num_classes : int or None
        Number of classes, >= 2 (None: the data's class_names, else the largest label + 1, which
        must leave no class without samples); must agree with stored class_names; the default set
        generates this many (None: 4); a class without training samples is a warning. See
        :func:`mgritnn.datasets.resolve_classes`.
    epochs : int
        Passes over the training set (L-BFGS: iterations, one full-batch gradient or more each).
    batch_size : int
        Samples per batch (over all data groups); not for L-BFGS (full batch).
    max_batches : int or None
        Stop every epoch after this many batches (quick runs).
    seed : int
        Seeds the initialization, the default data set and the shuffling.
    data_parallel : int
        Split the MPI ranks into this many data groups x time ranks.
    threads : int or None
        numba threads per rank (None: cores per node // ranks per node).
    checkpoint : str or None
        Write a checkpoint here after every epoch (atomically: a failed or killed write leaves the
        previous one; missing directories are created).
    resume : bool
        Continue from checkpoint, which must exist (bit for bit as uninterrupted; settings that
        differ from the checkpoint's are named in one warning; another model shape is an error;
        another optimizer starts with a fresh optimizer state, also warned).
    resume_or_start : bool
        Like resume, but start a new run when checkpoint does not exist yet (for job scripts that
        are simply restarted).
    overwrite : bool
        Replace an existing checkpoint of an earlier run (otherwise an error).
    log : str or None
        Append one JSON line per epoch to this file (missing directories are created).
    gradient_check : int or None
        Compare the solver's gradient with the exact one of the same batch (the serial sweep,
        pipelined over the time ranks) on each epoch's first batch and every K-th after it:
        cosine, relative error and loss error in the log (``type="gradient_check"``), a summary
        line per epoch (:mod:`mgritnn.gradient_quality`). Its cost is one serial gradient per
        checked batch, reported. None: K = 0 for the serial solver, once per epoch (K = the
        epoch's batches) for the others; 0: off. Not for an ODENet whose ranks own their layers.
    gradient_target : float
        The cosine a checked gradient must reach: a checked batch below it takes the exact
        gradient for its update (counted), and an MGRIT solve with ``rms_tol`` tightens its
        tolerance 4x (:attr:`~mgritnn.solvers.mgrit.MGRITSolver.tol_scale`); a check of
        solves that both met the tolerance (no fallback) with 1 - cosine below a tenth of
        1 - target loosens it 2x (fewer cycles), up to 4x.
    rescue : bool
        When a time-parallel solve fails (diverges or gives NaN/inf) and its solver does not fall
        back, redo that step's gradient with the serial sweep on the same ranks (exact) and go
        on, counted in the epoch's record (``rescued``) and said on the console. False
        (``--no-rescue``): stop the run there (the last good state is kept: the checkpoint, or
        without one a rescue file). Not for the serial solver.
    """
    data: str = "default"
    num_classes: int = None
    epochs: int = 15
    batch_size: int = 100
    max_batches: int = None
    seed: int = 0
    data_parallel: int = 1
    threads: int = None
    checkpoint: str = None
    resume: bool = False
    resume_or_start: bool = False
    overwrite: bool = False
    log: str = None
    gradient_check: int = field(default=None, metadata={"flag": {"none_as": -1}})
    gradient_target: float = 0.99
    rescue: bool = True

    def __post_init__(self):
        for name in ("epochs", "batch_size", "data_parallel"):
            check_int(name, getattr(self, name), least=1)
        for name in ("threads", "max_batches"):
            check_int(name, getattr(self, name), least=1, none=True)
        check_int("seed", self.seed, least=0)
        check_int("gradient_check", self.gradient_check, least=0, none=True)
        check_real("gradient_target", self.gradient_target, low=-1, high=1)
        for name in ("resume", "resume_or_start", "overwrite", "rescue"):
            check_bool(name, getattr(self, name))
        if (self.resume or self.resume_or_start) and not self.checkpoint:
            flag = "resume" if self.resume else "resume-or-start"
            raise ConfigError(f"--{flag} needs a checkpoint path: add --checkpoint PATH")


# ------------------------------------------------------------------------------------------------
# The settings: every spec field by its one name
# ------------------------------------------------------------------------------------------------

#: The settings of a run in the order of a checkpoint's record and of ``mgritnn train --help``:
#: ``model`` (the model spec's name) and the fields of the four specs.
SETTINGS = ("model", "data", "seq_len", "num_classes", "lengths", "pad", "cell", "newton_options",
            "hidden", "layers", "dtype", "dt", "depth", "width", "activation", "final_time",
            "opening", "tikhonov", "ddt_penalty", "layer_init", "layer_init_scale", "layer",
            "channels", "nested_levels", "nested_cf", "nested_interp", "nested_epochs",
            "nested_target_acc", "epochs", "batch_size",
            "optimizer", "lr", "momentum", "weight_decay", "clip", "seed", "solver",
            "solver_options", "data_parallel", "threads", "checkpoint", "resume",
            "resume_or_start", "overwrite", "log", "max_batches", "gradient_check",
            "gradient_target", "rescue")

#: The spec part of TrainConfig that owns each setting other than ``model``.
_PART_CLASSES = {"optim": (OptimSpec,), "solver_spec": (SolverSpec,), "run": (RunSpec,),
                 "model_spec": tuple(MODEL_SPECS.values())}
_PART = {f.name: part for part, classes in _PART_CLASSES.items() for cls in classes
         for f in dataclasses.fields(cls)}
assert set(SETTINGS) == {"model"} | set(_PART), "SETTINGS must name every spec field once"

#: The fields that belong to one model: with the other, a value that differs from the default is a
#: ConfigError.
_MODEL_FIELDS = {name: spec.own_fields() for name, spec in MODEL_SPECS.items()}
#: The fields of the minibatch optimizers, not of L-BFGS (full batch).
_MINIBATCH_FIELDS = ("lr", "momentum", "weight_decay", "clip", "max_batches", "batch_size")
#: The fields of nested iteration, used only with ``nested_levels`` >= 1.
_NESTED_FIELDS = ("nested_cf", "nested_interp", "nested_epochs", "nested_target_acc")

#: The one rule of options that do not apply: a setting away from its default where its row does
#: not apply is a ConfigError naming it (:func:`_reject_changed`). Rows: ``(fields, applies,
#: owner, here)``: ``applies(cfg)`` whether the fields are used by the run ``cfg``, ``owner`` what
#: they are options of, ``here(cfg)`` the setting they do not apply to. A new option that applies
#: only somewhere is one more name in a row. (The fields of the other model, :data:`_MODEL_FIELDS`,
#: follow the same rule in :func:`_parts`: a spec cannot hold them.)
_APPLIES_ONLY = (
    (_MINIBATCH_FIELDS, lambda c: c.optimizer != "lbfgs", "the minibatch optimizers (adam, sgd)",
     lambda c: "--optimizer lbfgs (full-batch L-BFGS)"),
    (("momentum",), lambda c: c.optimizer == "sgd", "--optimizer sgd",
     lambda c: f"--optimizer {c.optimizer}"),
    (_NESTED_FIELDS, lambda c: c.nested_levels > 0, "nested iteration (--nested-levels K >= 1)",
     lambda c: "a run without nested iteration (--nested-levels 0)"),
    (("rescue",), lambda c: c.solver != "serial", "the time-parallel solvers (a failed solve's "
     "step redone by the serial sweep)", lambda c: "--solver serial (nothing to rescue)"),
)


def _default(f):
    """The default value of the dataclass field ``f``."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _field(name, model="gru"):
    """The dataclass field of the setting ``name`` (of the model spec ``model`` where both have
    it)."""
    if name == "model":
        f = field(default="gru", metadata={"flag": {"choices": MODELS}})
        f.name, f.type = "model", str
        return f
    classes = _PART_CLASSES[_PART[name]]
    cls = MODEL_SPECS[model] if name in ModelSpec.__dataclass_fields__ else next(
        c for c in classes if name in c.__dataclass_fields__)
    return cls.__dataclass_fields__[name]


def setting_fields():
    """Every setting as ``(name, field, description)`` in the order of :data:`SETTINGS`: the
    dataclass field of its spec (``model``: the choice of spec) and its documentation (the
    command line's flags are made from these)."""
    docs = {**field_docs(TrainConfig)}
    for classes in _PART_CLASSES.values():
        for cls in classes:
            docs.update(field_docs(cls))
    return [(name, _field(name), docs.get(name, "")) for name in SETTINGS]


def _option_dict(name, options, owner, renamed, stacklevel):
    """The option dict ``options`` of the field ``name`` as a :class:`FrozenDict`, the old names
    of ``renamed`` replaced (warned at ``stacklevel``)."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"{name} must be a dict of option names to values, got {options!r}")
    return FrozenDict(upgrade(owner, options, renamed, stacklevel=stacklevel))


_warned_flat = False


def _warn_flat(stacklevel):
    """Warn (:class:`FlatConfigWarning`, at ``stacklevel`` above the caller) the first time in
    this process that TrainConfig() is called with flat keyword arguments."""
    global _warned_flat
    if not _warned_flat:
        _warned_flat = True
        warnings.warn("TrainConfig(hidden=..., lr=..., ...) with flat keyword arguments is "
                      "deprecated: give the nested specs, TrainConfig(model=GRUSpec(hidden=...), "
                      "optim=OptimSpec(lr=...), solver=SolverSpec(...), run=RunSpec(...)) (or "
                      "TrainConfig.from_settings(dict) for a settings dict)",
                      FlatConfigWarning, stacklevel=stacklevel + 1)


def _rename_flat(settings, solver, stacklevel):
    """``settings`` with the old option names in its option dicts replaced (those of the solver
    named ``solver`` in ``solver_options``; warned at ``stacklevel`` above the caller)."""
    settings = dict(settings)
    for name, (owner, old_to_new) in _renamed_options(solver).items():
        if isinstance(settings.get(name), Mapping):
            settings[name] = upgrade(owner, settings[name], old_to_new, stacklevel=stacklevel + 2)
    return settings


def _renamed_options(solver):
    """The option dicts of the settings -> (owner, old name -> new name) of their config classes
    (for the solver named ``solver``)."""
    config = SOLVERS[solver].config if solver in SOLVERS else None
    return {"solver_options": (solver, getattr(config, "RENAMED", {})),
            "newton_options": ("Newton", NewtonConfig.RENAMED)}


def flag_of(name):
    """The command-line flag of the setting ``name``: ``--name`` in kebab case, ``--no-name`` for
    a bool that is True by default (``--no-rescue``)."""
    f = _field(name)
    off = f.type is bool and _default(f) is True
    return "--" + ("no_" if off else "").replace("_", "-") + name.replace("_", "-")


def _reject_changed(changed, owner, here):
    """ConfigError naming the settings ``changed`` (flags of ``owner`` that do not apply
    ``here``)."""
    if changed:
        flags = ", ".join(flag_of(n) for n in changed)
        raise ConfigError(f"{flags} {'is an option' if len(changed) == 1 else 'are options'} of "
                          f"{owner}, not of {here}: drop {'it' if len(changed) == 1 else 'them'}")


def _parts(model, optim, solver, run, settings):
    """The four specs of TrainConfig from its arguments: the given specs (a model's name for
    ``model``; a name or a solver config object for ``solver``; None: the defaults) with the flat
    ``settings`` (names of :data:`SETTINGS`) applied to the spec that owns each.

    Returns
    -------
    dict
        ``{"model_spec": ModelSpec, "optim": OptimSpec, "solver_spec": SolverSpec,
        "run": RunSpec}``
    """
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise TypeError(f"TrainConfig() got an unexpected keyword argument {unknown[0]!r}")
    settings = dict(settings)
    kind = settings.pop("model", None)
    if model is None or isinstance(model, str):
        model = MODEL_SPECS[check_choice("model", kind or model or "gru", MODELS)]
    elif not isinstance(model, ModelSpec):
        raise ConfigError(f"model must be GRUSpec(...) or ODENetSpec(...) (or a model's name), "
                          f"got {model!r}")
    elif kind is not None and kind != model.model:
        raise ConfigError(f"model={kind!r} contradicts the model spec {model!r}: give one")
    if solver is None or isinstance(solver, str):
        named = {"solver": solver} if solver is not None else {}
        solver = SolverSpec(**{k: settings.pop(k) for k in ("solver", "solver_options")
                               if k in settings}, **named)
    elif not isinstance(solver, SolverSpec):
        solver = SolverSpec.of(solver)
    given = {"model_spec": model, "optim": optim or OptimSpec, "solver_spec": solver,
             "run": run or RunSpec}
    for part in ("optim", "run"):
        if given[part] is not _PART_CLASSES[part][0] and \
                not isinstance(given[part], _PART_CLASSES[part]):
            raise ConfigError(f"{part} must be {_PART_CLASSES[part][0].__name__}(...), got "
                              f"{given[part]!r}")
    spec_cls = model if isinstance(model, type) else type(model)
    kw = {part: {} for part in given}
    other = []                          # the settings of the other model that differ from defaults
    for name, value in settings.items():
        part = _PART[name]
        if part == "model_spec" and name not in spec_cls.__dataclass_fields__:
            owner = next(c for c in MODEL_SPECS.values() if name in c.__dataclass_fields__)
            if value != _default(owner.__dataclass_fields__[name]):
                other.append(name)
            continue
        kw[part][name] = value
    if other:
        _reject_changed(other, f"--model {'odenet' if spec_cls.model == 'gru' else 'gru'}",
                        f"--model {spec_cls.model}")
    return {part: (spec(**kw[part]) if isinstance(spec, type) else
                   dataclasses.replace(spec, **kw[part]) if kw[part] else spec)
            for part, spec in given.items()}


# ------------------------------------------------------------------------------------------------
# TrainConfig
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, init=False)
class TrainConfig:
    """Everything that defines a training run: four specs (validated on construction; frozen and
    hashable).

    ``TrainConfig(model=GRUSpec(hidden=64), optim=OptimSpec(lr=0.01),
    solver=SolverSpec("mgrit", {"levels": 3}), run=RunSpec(epochs=5))``; a part left out is its
    spec's defaults. ``solver`` may also be a solver config object (``MGRITConfig(levels=3)``,
    see :meth:`SolverSpec.of`). ``model="odenet"`` and ``solver="mgrit"`` (names) are the flat
    form, deprecated below.

    Every setting (a field of a spec) is also a flag of ``mgritnn train`` and a read-only alias
    here: ``cfg.hidden`` is ``cfg.model_spec.hidden``, ``cfg.lr`` is ``cfg.optim.lr``,
    ``cfg.solver`` the solver's name and ``cfg.solver_options`` its options (a dict, as given),
    ``cfg.model`` the model's name, ``cfg.epochs`` is ``cfg.run.epochs``. A field of the model
    that is not trained reads as its default (``cfg.depth`` of a GRU run). :meth:`settings` is the
    flat dict of them all (a checkpoint's record), :meth:`from_settings` the inverse.

    Constraints between the specs: ``--model odenet`` trains with ``--solver serial`` or
    ``mgrit`` (not MGRIT's warm start); a setting away from its default where it does not apply
    is a ConfigError naming it (:data:`_APPLIES_ONLY`): ``--optimizer lbfgs`` takes none of the
    minibatch settings (``lr``, ``momentum``, ``weight_decay``, ``clip``, ``max_batches``,
    ``batch_size``), ``momentum`` is SGD's, and nested iteration's ``nested_cf``,
    ``nested_interp``, ``nested_epochs``, ``nested_target_acc`` need ``nested_levels`` >= 1.

    Deprecated: the flat keyword arguments of earlier versions (``TrainConfig(hidden=64,
    lr=0.01)``, the names of :data:`SETTINGS`) are applied to the spec that owns each, with one
    :class:`FlatConfigWarning` per process; a field of the other model that differs from its
    default is a ConfigError, as before.

    Parameters
    ----------
    model : GRUSpec or ODENetSpec, optional
        The network (default ``GRUSpec()``).
    optim : OptimSpec, optional
    solver : SolverSpec or a solver config object, optional
        Default ``SolverSpec()``: the serial sweep.
    run : RunSpec, optional
    model_spec, solver_spec : optional
        The same as ``model`` and ``solver`` (the fields' names, for ``dataclasses.replace``).
    **settings
        Deprecated flat keywords (names of :data:`SETTINGS`).

    Attributes
    ----------
    model_spec : GRUSpec or ODENetSpec
        The network (the keyword ``model=``).
    optim : OptimSpec
        The optimizer.
    solver_spec : SolverSpec
        The time solver (the keyword ``solver=``).
    run : RunSpec
        Data, epochs, ranks, outputs.
    model : {"gru", "odenet"}
        The network: a GRU sequence classifier, or a residual network (ODENet) on static
        features whose layers are the solvers' time steps (layer-parallel under MGRIT).
    """
    model_spec: ModelSpec
    optim: OptimSpec
    solver_spec: SolverSpec
    run: RunSpec

    def __init__(self, model=None, optim=None, solver=None, run=None, *, model_spec=None,
                 solver_spec=None, **settings):
        if settings or isinstance(model, str) or isinstance(solver, str):
            _warn_flat(stacklevel=2)
            name = solver if isinstance(solver, str) else settings.get("solver")
            settings = _rename_flat(settings, name, stacklevel=2)
        # model_spec=, solver_spec=: the fields' names (dataclasses.replace, cfg.__dict__); a name
        # beside one is a flat setting applied to it
        for key, spec, value in (("model", model_spec, model), ("solver", solver_spec, solver)):
            if spec is not None and value is not None:
                if not isinstance(value, str):
                    raise TypeError(f"TrainConfig() takes {key}= or {key}_spec=, not both")
                settings[key] = value
        model = model if model_spec is None else model_spec
        solver = solver if solver_spec is None else solver_spec
        for part, spec in _parts(model, optim, solver, run, settings).items():
            set_frozen(self, part, spec)
        self._check_parts()

    @classmethod
    def from_settings(cls, settings):
        """The config of a flat settings dict (names of :data:`SETTINGS`, e.g. the command
        line's or :meth:`settings`), without the deprecation warning of flat keywords."""
        return cls(**{part: spec for part, spec in
                      _parts(None, None, None, None, dict(settings)).items()})

    def _check_parts(self):
        """The constraints between the specs: no option away from its default where it does not
        apply (:data:`_APPLIES_ONLY`: L-BFGS takes no minibatch settings, momentum is SGD's,
        nested iteration's options need --nested-levels); an ODENet is solved by serial or
        MGRIT (without warm start)."""
        for fields, applies, owner, here in _APPLIES_ONLY:
            if not applies(self):
                _reject_changed([n for n in fields if getattr(self, n) != _default(
                    _field(n, self.model))], owner, here(self))
        if self.model != "odenet":
            return
        if self.solver not in ("serial", "mgrit"):
            raise ConfigError(f"--solver {self.solver} does not apply to --model odenet: its "
                              "layers are solved by --solver serial (backpropagation) or "
                              "--solver mgrit (layer-parallel)")
        if self.solver == "mgrit":
            guess = self.solver_options.get("initial_guess")
            preset = self.solver_options.get("preset")
            if guess is None and preset is not None:
                guess = MGRIT_PRESETS.get(preset, {}).get("initial_guess")
            if guess == "warm":
                raise ConfigError("MGRIT's warm start (--initial-guess warm"
                                  + (f", in --preset {preset}" if preset else "")
                                  + ") is not supported for --model odenet: use --initial-guess "
                                  "zero, or --preset layers (the ODENet papers' settings)")

    # -- the flat names ---------------------------------------------------------------------------
    @property
    def model(self):
        """The model's name, ``"gru"`` or ``"odenet"`` (``model_spec.model``; ``--model``)."""
        return self.model_spec.model

    def settings(self):
        """Every setting by its name, in the order of :data:`SETTINGS`: a flat dict, the record
        of a checkpoint (``meta["train"]``; the fields of the model not trained hold their
        defaults, as in earlier versions). ``TrainConfig.from_settings(cfg.settings()) == cfg``."""
        return {name: getattr(self, name) for name in SETTINGS}

    def nested_stages(self):
        """The levels of the run, coarsest first: a list of ``(depth, epochs)``; the last is the
        finest network (``depth``, ``epochs``); one entry without nested iteration (and for a
        GRU)."""
        spec = self.model_spec if isinstance(self.model_spec, ODENetSpec) else ODENetSpec()
        return spec.nested_stages(self.epochs)

    @staticmethod
    def upgrade_settings(saved):
        """A training config saved in a checkpoint (a dict) with the options' old names replaced
        by today's (``solver_options`` ``fwd_iters`` -> ``max_iter``, ...), silently: an old
        checkpoint resumes as it was written, and compares equal to the same run today."""
        saved = dict(saved)
        for name, (owner, old_to_new) in _renamed_options(saved.get("solver")).items():
            if isinstance(saved.get(name), dict):
                saved[name] = upgrade(owner, saved[name], old_to_new, warn=False)
        return saved

    @property
    def resuming(self):
        """True if the run continues ``checkpoint`` when it exists (``resume`` or
        ``resume_or_start``)."""
        return self.resume or self.resume_or_start

    def check_paths(self):
        """Check the paths of the run without writing anything (called by :func:`train` on every
        rank before any work).

        Raises
        ------
        ConfigError
            If an output is empty, ends in a separator, is a directory, lies below a file or in
            a directory that cannot be written (:func:`mgritnn.io.check_output_path`), is the
            training data, not a regular file (a checkpoint), or
            both outputs are one file; or the checkpoint exists from an earlier run and neither
            resume, resume_or_start nor overwrite is set.
        CheckpointError
            If ``resume`` is set and the checkpoint does not exist.
        DataError
            If ``data`` is empty, missing, or not a .npz file nor a directory
            (:func:`mgritnn.datasets.check_source`).
        """
        kind = datasets.check_source(self.data)
        data = None if kind == "generated" else os.path.realpath(self.data)
        for flag, path in (("--checkpoint", self.checkpoint), ("--log", self.log)):
            if path is None:
                continue
            check_output_path(path, flag, ConfigError,
                              "run.npz" if flag == "--checkpoint" else "run.jsonl")
            if data is not None and os.path.realpath(path) == data:
                raise ConfigError(f"{flag} {path!r} is the training data (--data): writing it would "
                                  "destroy the data; choose another path")
        if self.checkpoint and self.log and \
                os.path.realpath(self.checkpoint) == os.path.realpath(self.log):
            raise ConfigError(f"--checkpoint and --log are the same file {self.checkpoint!r}: "
                              "choose two paths")
        if self.checkpoint and os.path.exists(self.checkpoint) and not os.path.isfile(self.checkpoint):
            raise ConfigError(f"--checkpoint {self.checkpoint!r} is not a regular file (a device, "
                              "pipe or socket) and would be replaced: name a file")
        if self.checkpoint and os.path.exists(self.checkpoint) and not (self.resuming or self.overwrite):
            raise ConfigError(f"checkpoint {self.checkpoint!r} exists from an earlier run: add "
                              "--resume to continue it, or --overwrite to replace it")
        if self.resume and not self.resume_or_start and self.checkpoint and \
                not os.path.exists(self.checkpoint):
            raise CheckpointError(f"--resume: checkpoint {self.checkpoint!r} does not exist: check "
                                  "the path, or use --resume-or-start to start a new run there "
                                  "when it is missing")

    def optimizer_kwargs(self):
        """The keywords of :func:`mgritnn.optim.make_optimizer` (:meth:`OptimSpec.optimizer_kwargs`)."""
        return self.optim.optimizer_kwargs()


def _alias(name):
    """The read-only property ``TrainConfig.<name>``: the setting ``name`` of the spec that owns
    it (a field of the model not trained: its default)."""
    part = _PART[name]

    def get(self):
        spec = getattr(self, part)
        if name in type(spec).__dataclass_fields__:
            return getattr(spec, name)
        return _default(_field(name, "odenet" if spec.model == "gru" else "gru"))
    get.__name__ = name
    get.__doc__ = f"Alias of ``{part}.{name}`` (read-only)."
    return property(get)


for _name in SETTINGS:
    if _name != "model":
        setattr(TrainConfig, _name, _alias(_name))
del _name
