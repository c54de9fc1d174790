"""The configuration of a training run: :class:`TrainConfig`, validated on construction."""
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field


from .. import datasets
from ..errors import CheckpointError, ConfigError
from ..cells import NewtonConfig
from ..options import (FrozenDict, cell_names, check_bool, check_choices, check_int, check_real,
                      int_list, set_frozen, solver_names, upgrade)
from ..odenet import INTERPOLATIONS, LAYER_INITS, OPENINGS
from ..cells.odenet import ACTIVATIONS
from ..solvers import MGRIT_PRESETS, SOLVERS


#: The models of ``mgritnn train --model`` (the keys of :data:`datasets.MODEL_DATA_KINDS`).
MODELS = tuple(datasets.MODEL_DATA_KINDS)
ODENET_ACTIVATIONS = tuple(sorted(ACTIVATIONS))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (validated on construction; frozen and hashable).

    Every option is also a flag of ``mgritnn train`` (``seq_len`` -> ``--seq-len``; the
    descriptions below are its help), and the option dicts expand to the flags of the fields of
    their config classes (``--newton-atol``, ``--levels``, ...).

    Two models: ``model="gru"`` (sequences; the GRU fields ``seq_len`` .. ``dt``) and
    ``model="odenet"`` (static features; the ODENet fields ``depth`` .. ``nested_target_acc``).
    A field of the other model that differs from its default is a ConfigError (it would be
    ignored otherwise).

    Attributes
    ----------
    model : {"gru", "odenet"}
        The network: a GRU sequence classifier, or a residual network (ODENet) on static
        features whose layers are the solvers' time steps (layer-parallel under MGRIT).
    data : str
        'default' (the embedded oscillations set), 'peaks' (the static Peaks set, for
        --model odenet), a .npz file (X_train (N, T, C) or (N, F), y_train, X_test, y_test) or a
        'UCI HAR Dataset' directory.
    seq_len : int or None
        Truncate/zero-pad sequences to this length (the default set is generated at it; None: the
        data's own length, 128 for the default set).
    num_classes : int or None
        Number of classes, >= 2 (None: the data's class_names, else the largest label + 1, which
        must leave no class without samples); must agree with stored class_names; the default set
        generates this many (None: 4); a class without training samples is a warning. See
        :func:`mgritnn.datasets.resolve_classes`.
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
    dtype : {"float32", "float64"}
        Floating-point type of the parameters and the computation.
    dt : float
        Step size of the cell.
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
    epochs : int
        Passes over the training set (L-BFGS: iterations, one full-batch gradient or more each).
    batch_size : int
        Samples per batch (over all data groups); not used by L-BFGS (full batch).
    optimizer : {"adam", "sgd", "lbfgs"}
        The optimizer; lbfgs = full-batch L-BFGS-B of SciPy on the flat parameters (float64
        for SciPy, the model's dtype for the gradient; --lr, --momentum, --weight-decay,
        --clip and --max-batches do not apply; a resumed run restarts its curvature memory).
    lr : float
        Learning rate.
    momentum : float
        SGD momentum.
    weight_decay : float
        L2 weight decay.
    clip : float or None
        Clip gradients to this global norm (None: no clipping). At any sequence length: where
        the serial sweep's adjoint outgrows the dtype (exploding gradients, e.g. float32 at
        T = 16384), its scale is kept as a power-of-two exponent and the clipped gradient is
        the exact gradient's direction at this norm (without --clip such a gradient is inf
        and training stops).
    seed : int
        Seeds the initialization, the default data set and the shuffling.
    solver : str
        Time solver of training: the serial sweep, MGRIT, Newton over the whole sequence (DEER;
        quasi-DEER with diagonal Jacobians), or auto: the fastest of serial/deer/quasi-deer for
        the shape, measured (several time ranks: DEER or quasi-DEER, as the performance model
        predicts, then measured).
    solver_options : mapping
        Options of the solver: the fields of its config class (``MGRITConfig``, ``DEERConfig``,
        ``AutoConfig``; old names are renamed, with a warning), and ``preset`` for MGRIT; kept as
        a read-only :class:`FrozenDict`.
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
    max_batches : int or None
        Stop every epoch after this many batches (quick runs).
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
    """
    model: str = field(default="gru", metadata={"flag": {"choices": MODELS}})
    data: str = "default"
    seq_len: int = None
    num_classes: int = None
    lengths: str = field(default=datasets.LENGTHS_POLICIES[0],
                         metadata={"flag": {"choices": datasets.LENGTHS_POLICIES}})
    pad: str = field(default=datasets.PAD_POLICIES[0],
                     metadata={"flag": {"choices": datasets.PAD_POLICIES}})
    cell: str = field(default="classic", metadata={"flag": {"choices": cell_names}})
    newton_options: Mapping = field(default_factory=FrozenDict,
                                    metadata={"flag": {"config": "newton"}})
    hidden: int = 32
    layers: int = 1
    dtype: str = field(default="float32", metadata={"flag": {"choices": ("float32", "float64")}})
    dt: float = 1.0
    depth: int = 32
    width: int = 8
    activation: str = field(default="tanh", metadata={"flag": {"choices": ODENET_ACTIVATIONS}})
    final_time: float = 1.0
    opening: str = field(default="dense", metadata={"flag": {"choices": OPENINGS}})
    tikhonov: float = 1e-7
    ddt_penalty: float = 1e-5
    layer_init: str = field(default="constant", metadata={"flag": {"choices": LAYER_INITS}})
    nested_levels: int = 0
    nested_cf: int = 2
    nested_interp: str = field(default="constant", metadata={"flag": {"choices": INTERPOLATIONS}})
    nested_epochs: object = field(default=None, metadata={"flag": {"type": int_list}})
    nested_target_acc: float = None
    epochs: int = 15
    batch_size: int = 100
    optimizer: str = field(default="adam",
                           metadata={"flag": {"choices": ("adam", "sgd", "lbfgs")}})
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip: float = None
    seed: int = 0
    solver: str = field(default="serial", metadata={"flag": {"choices": solver_names}})
    solver_options: Mapping = field(default_factory=FrozenDict,
                                    metadata={"flag": {"config": "solver"}})
    data_parallel: int = 1
    threads: int = None
    checkpoint: str = None
    resume: bool = False
    resume_or_start: bool = False
    overwrite: bool = False
    log: str = None
    max_batches: int = None
    gradient_check: int = field(default=None, metadata={"flag": {"none_as": -1}})
    gradient_target: float = 0.99

    def __post_init__(self):
        for name in ("hidden", "layers", "epochs", "batch_size", "data_parallel"):
            check_int(name, getattr(self, name), least=1)
        for name in ("seq_len", "threads", "max_batches"):
            check_int(name, getattr(self, name), least=1, none=True)
        check_int("seed", self.seed, least=0)
        check_int("gradient_check", self.gradient_check, least=0, none=True)
        check_real("gradient_target", self.gradient_target, low=-1, high=1)
        check_real("lr", self.lr, low=0, low_open=True)
        check_real("dt", self.dt, low=0, low_open=True)
        check_real("momentum", self.momentum, low=0, high=1, high_open=True)
        check_real("weight_decay", self.weight_decay, low=0)
        check_real("clip", self.clip, low=0, low_open=True, none=True)
        check_choices("", self)
        for name in ("resume", "resume_or_start", "overwrite"):
            check_bool(name, getattr(self, name))
        for name in ("solver_options", "newton_options"):
            if not isinstance(getattr(self, name), Mapping):
                raise ConfigError(f"{name} must be a dict of option names to values, got "
                                  f"{getattr(self, name)!r}")
        for name, (owner, old_to_new) in _renamed_options(self.solver).items():
            set_frozen(self, name, FrozenDict(upgrade(owner, getattr(self, name), old_to_new,
                                                      stacklevel=4)))   # at TrainConfig()'s caller
        self._check_model_fields()
        if (self.resume or self.resume_or_start) and not self.checkpoint:
            flag = "resume" if self.resume else "resume-or-start"
            raise ConfigError(f"--{flag} needs a checkpoint path: add --checkpoint PATH")

    def _check_model_fields(self):
        """The fields of one model (and optimizer) given with another are errors; the ODENet's
        solvers and nested-iteration budgets."""
        for name in ("depth", "width", "nested_cf"):
            check_int(name, getattr(self, name), least=1)
        check_int("nested_levels", self.nested_levels, least=0)
        for name in ("final_time",):
            check_real(name, getattr(self, name), low=0, low_open=True)
        for name in ("tikhonov", "ddt_penalty"):
            check_real(name, getattr(self, name), low=0)
        check_real("nested_target_acc", self.nested_target_acc, low=0, high=1, none=True)
        if self.nested_epochs is not None:
            budgets = self.nested_epochs if isinstance(self.nested_epochs, (tuple, list)) \
                else (self.nested_epochs,)
            for e in budgets:
                check_int("nested_epochs", e, least=0)
            if isinstance(self.nested_epochs, list):
                set_frozen(self, "nested_epochs", tuple(self.nested_epochs))
        other = "odenet" if self.model == "gru" else "gru"
        _reject_changed(self, _MODEL_FIELDS[other], f"--model {other}", f"--model {self.model}")
        if self.optimizer == "lbfgs":
            _reject_changed(self, _MINIBATCH_FIELDS, "the minibatch optimizers (adam, sgd)",
                            "--optimizer lbfgs (full-batch L-BFGS)")
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
        if self.nested_levels:
            m, K = self.nested_cf, self.nested_levels
            if self.depth % m ** K:
                raise ConfigError(f"--nested-levels {K} with --nested-cf {m} trains depths "
                                  f"{self.depth}/{m}^k: --depth {self.depth} must be divisible by "
                                  f"{m ** K}")
            if isinstance(self.nested_epochs, tuple) and len(self.nested_epochs) != K:
                raise ConfigError(f"--nested-epochs has {len(self.nested_epochs)} entries for "
                                  f"--nested-levels {K}: give one per coarse level, coarsest "
                                  "first (or one number for all)")

    def nested_stages(self):
        """The levels of the run, coarsest first: a list of ``(depth, epochs)``; the last is the
        finest network (``depth``, ``epochs``); one entry without nested iteration."""
        K, m = self.nested_levels, self.nested_cf
        budgets = self.nested_epochs
        if budgets is None:
            budgets = (self.epochs,) * K
        elif not isinstance(budgets, tuple):
            budgets = (budgets,) * K
        return [(self.depth // m ** (K - i), int(budgets[i])) for i in range(K)] + \
            [(self.depth, self.epochs)]

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
            If an output is a directory, the training data, not a regular file (a checkpoint), or
            both outputs are one file; or the checkpoint exists from an earlier run and neither
            resume, resume_or_start nor overwrite is set.
        CheckpointError
            If ``resume`` is set and the checkpoint does not exist.
        """
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
        kw = dict(lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer == "sgd":
            kw["momentum"] = self.momentum
        return kw


#: The fields that belong to one model: with the other, a value that differs from the default is a
#: ConfigError (:meth:`TrainConfig._check_model_fields`).
_MODEL_FIELDS = {
    "gru": ("seq_len", "lengths", "pad", "cell", "newton_options", "hidden", "layers", "dt"),
    "odenet": ("depth", "width", "activation", "final_time", "opening", "tikhonov", "ddt_penalty",
               "layer_init", "nested_levels", "nested_cf", "nested_interp", "nested_epochs",
               "nested_target_acc"),
}
#: The fields of the minibatch optimizers, not of L-BFGS.
_MINIBATCH_FIELDS = ("lr", "momentum", "weight_decay", "clip", "max_batches")


def _reject_changed(cfg, names, owner, here):
    """ConfigError naming the fields among ``names`` that differ from their defaults (the flags
    of ``owner`` that do not apply ``here``)."""
    defaults = {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
                for f in dataclasses.fields(cfg)}
    changed = [n for n in names if getattr(cfg, n) != defaults[n]]
    if changed:
        flags = ", ".join("--" + n.replace("_", "-") for n in changed)
        raise ConfigError(f"{flags} {'is an option' if len(changed) == 1 else 'are options'} of "
                          f"{owner}, not of {here}: drop {'it' if len(changed) == 1 else 'them'}")


def _renamed_options(solver):
    """The option dicts of TrainConfig -> (owner, old name -> new name) of their config classes
    (for the solver named ``solver``)."""
    config = SOLVERS[solver].config if solver in SOLVERS else None
    return {"solver_options": (solver, getattr(config, "RENAMED", {})),
            "newton_options": ("Newton", NewtonConfig.RENAMED)}


