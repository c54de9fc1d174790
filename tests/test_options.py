"""One validator for every option (``mgritnn.options``): every config rejects a wrong type or
range with a ConfigError naming the option, accepts NumPy integers, rejects bools as counts, and
is frozen and hashable."""
import dataclasses

import numpy as np
import pytest

from mgritnn import AutoConfig, DEERConfig, MGRITConfig, NewtonConfig, TrainConfig
from mgritnn.errors import ConfigError
from mgritnn.options import check_bool, check_choice, check_int, check_real
import copy
import json
import pickle
import warnings

from mgritnn import train
from mgritnn.cli import _train_options, build_parser, main, train_config
from mgritnn.errors import MgritnnWarning
from mgritnn.io import atomic_savez, read_npz
from mgritnn.options import FrozenDict, field_docs, option_fields
from mgritnn.train.config import GRUSpec, SolverSpec, setting_fields
from mgritnn.solvers import (SOLVERS, DEERSolver, MGRITSolver, SerialSolver, get_solver,
                             make_solver)

#: (config class, integer fields, real fields, choice fields, bool fields)
CONFIGS = [
    (MGRITConfig, ["min_coarse", "max_levels", "max_iter", "adjoint_max_iter", "cf"],
     ["atol", "rtol", "divergence"], ["cycle", "initial_guess", "coarse_input", "relax"],
     ["skip_first_down"]),
    (DEERConfig, ["max_iter", "chunks"], ["atol", "rtol", "damping", "divergence", "max_memory"],
     ["initial_guess"], ["quasi", "fallback"]),
    (AutoConfig, ["calibration_steps"], ["margin"], [], []),
    (NewtonConfig, ["max_iter"], ["atol", "damping"], [], []),
    (TrainConfig, ["hidden", "layers", "epochs", "batch_size", "data_parallel", "seq_len",
                   "threads", "max_batches", "seed"],
     ["lr", "dt", "momentum", "weight_decay", "clip"], ["optimizer", "dtype"],
     ["resume", "overwrite"]),
]


def _cases():
    for cls, ints, reals, choices, bools in CONFIGS:
        for f in ints:
            yield cls, f, "3", True
            yield cls, f, True, True
            yield cls, f, 2.5, True
            yield cls, f, np.int64(3), False
        for f in reals:
            yield cls, f, "x", True
            yield cls, f, np.inf, True
            yield cls, f, False, True
        for f in choices:
            yield cls, f, "nonsense", True
        for f in bools:
            yield cls, f, 1, True


@pytest.mark.parametrize("cls, field, value, bad", list(_cases()),
                         ids=lambda v: getattr(v, "__name__", repr(v)))
def test_every_option_is_checked_by_the_shared_validator(cls, field, value, bad):
    if bad:
        with pytest.raises(ConfigError, match=field):
            cls(**{field: value})
    else:
        assert getattr(cls(**{field: value}), field) == value


@pytest.mark.parametrize("cls", [c[0] for c in CONFIGS])
def test_configs_are_frozen(cls):
    cfg = cls()
    field = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, field, getattr(cfg, field))
    assert hash(cfg) == hash(cls())


def test_the_checks_themselves():
    assert check_int("n", np.int32(4), least=1) == 4 and check_int("n", None, none=True) is None
    assert check_real("x", np.float32(0.5), low=0, high=1) == 0.5
    with pytest.raises(ConfigError, match=r"x must be a finite number > 0 and < 1, got 1"):
        check_real("x", 1, low=0, high=1, low_open=True, high_open=True)
    with pytest.raises(ConfigError, match="'a', 'b'"):
        check_choice("c", "z", ("a", "b"))
    with pytest.raises(ConfigError, match="True or False"):
        check_bool("b", "yes")


# ================================================================================================
# One options system (issue 10, item 3): every config is a frozen, hashable dataclass; one solver
# registry; the same names (``max_iter``, ``atol``, ``rtol``) everywhere, the old ones kept as
# deprecated aliases (constructors, command-line flags, old checkpoints); the command-line flags
# made from the config fields; a solver made from a config cached by the config's value.
# ================================================================================================

CONFIG_CLASSES = [MGRITConfig, DEERConfig, AutoConfig, NewtonConfig, TrainConfig]


def quiet(*_):
    pass


# -- frozen and hashable -----------------------------------------------------------------------

@pytest.mark.parametrize("cls", CONFIG_CLASSES)
def test_every_config_is_frozen_and_equal_configs_hash_equal(cls):
    a, b = cls(), cls()
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    for f in dataclasses.fields(cls):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(a, f.name, getattr(a, f.name))


def test_list_options_are_kept_as_tuples():
    cfg = MGRITConfig(levels=3, cf=[2, 4], relax=["F", "FCF"])
    assert cfg.cf == (2, 4) and cfg.relax == ("F", "FCF")
    assert cfg == MGRITConfig(levels=3, cf=(2, 4), relax=("F", "FCF"))
    assert hash(cfg) == hash(MGRITConfig(levels=3, cf=(2, 4), relax=("F", "FCF")))


def test_train_config_option_dicts_are_read_only_mappings():
    cfg = TrainConfig(solver="mgrit", solver_options={"levels": 2, "cf": [2]},
                      cell="implicit-newton", newton_options={"max_iter": 3})
    same = TrainConfig(solver="mgrit", solver_options={"cf": (2,), "levels": 2},
                       cell="implicit-newton", newton_options={"max_iter": 3})
    assert cfg == same and hash(cfg) == hash(same)
    assert cfg.solver_options == {"levels": 2, "cf": (2,)} and dict(**cfg.solver_options)
    with pytest.raises(TypeError, match="frozen config"):
        cfg.solver_options["levels"] = 3
    with pytest.raises(TypeError, match="frozen config"):
        cfg.newton_options.update(max_iter=4)
    assert hash(TrainConfig(solver="mgrit", solver_options={"levels": 3})) != hash(cfg)
    # saved as JSON, pickled (MPI) and copied as before
    saved = json.loads(json.dumps(cfg.settings()))
    assert saved["solver_options"] == {"levels": 2, "cf": [2]}
    for twin in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg), copy.copy(cfg)):
        assert twin == cfg and isinstance(twin.solver_options, FrozenDict)
    with pytest.raises(ConfigError, match="solver_options must be a dict"):
        TrainConfig(solver_options=[("levels", 2)])


def test_the_communicator_is_not_part_of_a_config_value():
    class OneRank:
        def Get_size(self):
            return 1
    for cls in (MGRITConfig, DEERConfig, AutoConfig):
        assert cls(comm=OneRank()) == cls() and hash(cls(comm=OneRank())) == hash(cls())
        assert "comm" not in repr(cls(comm=OneRank()))


# -- one registry ------------------------------------------------------------------------------

def test_one_registry_of_solvers_and_their_configs():
    assert {n: (e.solver.__name__, e.config and e.config.__name__) for n, e in SOLVERS.items()} \
        == {"serial": ("SerialSolver", "SerialConfig"), "mgrit": ("MGRITSolver", "MGRITConfig"),
            "deer": ("DEERSolver", "DEERConfig"), "quasi-deer": ("QuasiDEERSolver", "DEERConfig"),
            "auto": ("AutoSolver", "AutoConfig")}
    assert dict(SOLVERS["quasi-deer"].fixed) == {"quasi": True}
    assert make_solver is get_solver


def test_get_solver_takes_a_name_a_config_or_a_solver():
    assert isinstance(get_solver("serial"), SerialSolver)
    s = get_solver("mgrit", {"levels": 2, "cf": 2})
    assert isinstance(s, MGRITSolver) and s.config == MGRITConfig(levels=2, cf=2)
    assert get_solver("quasi-deer", {"max_iter": 3}).config == DEERConfig(quasi=True, max_iter=3)
    assert isinstance(get_solver(DEERConfig()), DEERSolver)
    assert get_solver(s) is s
    for bad in ("lstm", 3, None):
        with pytest.raises(ConfigError, match="unknown solver .*auto, deer, mgrit, quasi-deer, "
                                              "serial"):
            get_solver(bad)
    with pytest.raises(ConfigError, match="takes no options"):
        get_solver("serial", {"levels": 2})
    with pytest.raises(ConfigError, match="go with a solver's name"):
        get_solver(MGRITConfig(), {"levels": 2})
    with pytest.raises(ConfigError, match="bad option for solver 'mgrit'"):
        get_solver("mgrit", {"levelz": 2})


# -- the same names, the old ones kept ---------------------------------------------------------

def test_the_same_names_for_the_same_things():
    names = {cls: {f.name for f in option_fields(cls)} for cls in (MGRITConfig, DEERConfig,
                                                                   NewtonConfig)}
    for cls, fields in names.items():
        assert {"max_iter", "atol" if cls is not MGRITConfig else "atol_l2"} <= fields, cls
        assert not fields & {"tol", "fwd_iters", "bwd_iters"}, cls
    assert "rtol_l2" in names[MGRITConfig] and "rtol" in names[DEERConfig]
    assert not names[MGRITConfig] & {"atol", "rtol"}       # MGRIT's norm is a 2-norm


@pytest.mark.parametrize("cls, old, new, value", [
    (MGRITConfig, "fwd_iters", "max_iter", 5), (MGRITConfig, "bwd_iters", "adjoint_max_iter", 4),
    (MGRITConfig, "tol", "atol_l2", 1e-7), (MGRITConfig, "atol", "atol_l2", 1e-7),
    (MGRITConfig, "rtol", "rtol_l2", 1e-7), (NewtonConfig, "tol", "atol", 1e-7)])
def test_old_keyword_names_still_work_with_a_warning(cls, old, new, value):
    with pytest.warns(MgritnnWarning, match=f"'{old}' is deprecated: use '{new}'"):
        cfg = cls(**{old: value})
    assert cfg == cls(**{new: value})
    with pytest.raises(ConfigError, match=f"{old} is the old name of {new}: give only {new}"):
        cls(**{old: value, new: value})
    with pytest.raises(ConfigError, match=new):         # checked under the new name
        with pytest.warns(MgritnnWarning):
            cls(**{old: -1})


def test_old_names_in_presets_and_training_options():
    with pytest.warns(MgritnnWarning, match="fwd_iters"):
        assert MGRITConfig.preset("fast", fwd_iters=3) == MGRITConfig.preset("fast", max_iter=3)
    with pytest.warns(MgritnnWarning) as got:
        cfg = TrainConfig(solver=SolverSpec("mgrit", dict(bwd_iters=2, tol=0.0)),
                          model=GRUSpec(cell="implicit-newton", newton_options=dict(tol=1e-8)))
    assert [str(w.message) for w in got] == [
        "mgrit option 'bwd_iters' is deprecated: use 'adjoint_max_iter'",
        "mgrit option 'tol' is deprecated: use 'atol_l2'",
        "Newton option 'tol' is deprecated: use 'atol'"]
    assert {w.filename for w in got} == {__file__}           # warned where the spec was made
    assert cfg.solver_options == {"adjoint_max_iter": 2, "atol_l2": 0.0}
    assert cfg.newton_options == {"atol": 1e-8}
    old = dict(TrainConfig().settings(), solver="mgrit",
               solver_options={"fwd_iters": 2, "bwd_iters": 1, "tol": 1e-9, "levels": 3},
               newton_options={"tol": 1e-6})
    with warnings.catch_warnings():
        warnings.simplefilter("error", MgritnnWarning)     # a file's old names: silently
        new = TrainConfig.upgrade_settings(old)
    assert new["solver_options"] == {"max_iter": 2, "adjoint_max_iter": 1, "atol_l2": 1e-9,
                                     "levels": 3}
    assert new["newton_options"] == {"atol": 1e-6}


def test_a_checkpoint_with_the_old_option_names_resumes_without_a_difference(tmp_path):
    """A checkpoint written before the rename (its metadata holds ``fwd_iters``, ``bwd_iters``,
    ``tol``) resumes with today's names as the same run: no settings-difference warning."""
    ck = tmp_path / "ck.npz"
    opts = dict(levels=2, cf=2, max_iter=2, adjoint_max_iter=1, atol_l2=1e-9)
    common = dict(hidden=4, seq_len=16, max_batches=1, checkpoint=str(ck), solver="mgrit",
                  solver_options=opts)
    train(TrainConfig(epochs=1, **common), out=quiet, progress=False)
    arrays, meta = read_npz(str(ck))
    meta["train"]["solver_options"] = dict(levels=2, cf=2, fwd_iters=2, bwd_iters=1, tol=1e-9)
    atomic_savez(str(ck), arrays, meta)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MgritnnWarning)
        _, hist = train(TrainConfig(epochs=2, resume=True, **common), out=quiet, progress=False)
    assert len(hist) == 2


# -- command-line flags from the fields ----------------------------------------------------------

def _flags():
    return {o.flag: o for options in _train_options().values() for o in options}


def test_every_config_field_has_a_flag_and_every_flag_a_field():
    from mgritnn.solvers import MGRIT_PRESETS  # noqa: F401  (--preset: a named set, not a field)
    flags = _flags()
    dests = {o.dest for o in flags.values()}
    expected = set()
    for name, _, _ in setting_fields():
        if name not in ("solver_options", "newton_options"):
            expected.add(name)
    for f in option_fields(NewtonConfig):
        expected.add(f"newton_options.{f.name}")
    for e in SOLVERS.values():
        for f in option_fields(e.config) if e.config else ():
            if f.metadata.get("flag") is not False:
                expected.add(f"solver_options.{f.name}")
    assert dests == expected | {"solver_options.preset"}
    # the fields left out on purpose: the communicator, and quasi (--solver quasi-deer)
    assert {f.name for f in dataclasses.fields(DEERConfig)} - {
        d.split(".")[1] for d in dests if d.startswith("solver_options.")} == {"comm", "quasi"}


def test_flag_spellings_and_help_come_from_the_fields():
    flags = _flags()
    for flag in ("--data", "--seq-len", "--num-classes", "--cell", "--hidden", "--layers",
                 "--dtype", "--dt", "--epochs", "--batch-size", "--optimizer", "--lr",
                 "--momentum", "--weight-decay", "--clip", "--seed", "--solver", "--data-parallel",
                 "--threads", "--checkpoint", "--resume", "--resume-or-start", "--overwrite",
                 "--log", "--max-batches", "--newton-atol", "--newton-max-iter",
                 "--newton-damping", "--preset", "--levels", "--cf", "--relax", "--cycle",
                 "--max-iter", "--adjoint-max-iter", "--atol", "--rtol", "--min-coarse",
                 "--coarse-input", "--coarse-cell", "--initial-guess", "--damping", "--chunks",
                 "--no-skip-first-down", "--no-fallback"):
        assert flag in flags, flag
    assert set(flags["--max-iter"].solvers) == {"mgrit", "deer", "quasi-deer"}
    assert set(flags["--atol"].solvers) == {"mgrit", "deer", "quasi-deer"}
    assert flags["--levels"].solvers == ("mgrit",)
    assert set(flags["--initial-guess"].kwargs["choices"]) == {"zero", "input", "warm"}
    docs = field_docs(MGRITConfig)
    assert docs["adjoint_max_iter"].startswith("Maximum number of cycles of the adjoint")
    assert "MGRIT: Maximum number of cycles of the adjoint" in \
        flags["--adjoint-max-iter"].kwargs["help"]
    assert "(default: 1)" in flags["--adjoint-max-iter"].kwargs["help"]
    # defaults: a training flag has its field's default; a solver flag is None (not given)
    a = build_parser().parse_args(["train"])
    assert train_config(a) == TrainConfig()


def test_old_flags_are_hidden_aliases_that_warn(capsys):
    p = build_parser()
    a = p.parse_args(["train", "--solver", "mgrit", "--fwd-iters", "3", "--bwd-iters", "2",
                      "--tol", "1e-7", "--cell", "implicit-newton", "--newton-tol", "1e-6"])
    cfg = train_config(a)
    assert cfg.solver_options == {"max_iter": 3, "adjoint_max_iter": 2, "atol_l2": 1e-7}
    assert cfg.newton_options == {"atol": 1e-6}
    assert a.deprecated_flags == ["--fwd-iters is deprecated: use --max-iter",
                                  "--bwd-iters is deprecated: use --adjoint-max-iter",
                                  "--tol is deprecated: use --atol-l2",
                                  "--newton-tol is deprecated: use --newton-atol"]
    a = p.parse_args(["train", "--solver", "mgrit", "--atol", "1e-5"])   # MGRIT's old name
    with pytest.warns(MgritnnWarning, match="'atol' is deprecated: use 'atol_l2'"):
        assert train_config(a).solver_options == {"atol_l2": 1e-5}
    help_text = p._subparsers._group_actions[0].choices["train"].format_help()
    assert "--max-iter" in help_text and "--fwd-iters" not in help_text
    assert "--newton-atol" in help_text and "--newton-tol" not in help_text
    # through main: the deprecation is one warning line
    assert main(["train", "--epochs", "1", "--hidden", "4", "--seq-len", "8", "--max-batches",
                 "1", "--quiet", "--solver", "mgrit", "--levels", "2", "--cf", "2",
                 "--fwd-iters", "1"]) == 0
    err = capsys.readouterr().err
    assert "mgritnn: warning: --fwd-iters is deprecated: use --max-iter" in err


# -- a solver per config value -------------------------------------------------------------------

def test_equal_configs_share_one_solver_in_a_model():
    from mgritnn import GRUClassifier
    m = GRUClassifier(3, 4, 2)
    a, b = AutoConfig(calibration_steps=8), AutoConfig(calibration_steps=8)
    assert a is not b and m._solver(a) is m._solver(b)
    assert m._solver(AutoConfig(calibration_steps=9)) is not m._solver(a)
    X = np.random.default_rng(0).normal(size=(2, 6, 3))
    m.loss_and_grad(X, np.array([0, 1]), a)
    assert m._solver(b).choices                       # the calibration made for a serves b
