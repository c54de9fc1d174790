"""TrainConfig as four nested specs (issue 21, item 2): the nested form, the flat names as
read-only aliases and settings, the flat keywords of earlier versions (deprecated, warned once),
a solver config object as the solver, and old checkpoints' settings."""
import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from mgritnn import DEERConfig, MGRITConfig, SerialConfig, TrainConfig
from mgritnn.errors import ConfigError
from mgritnn.io import read_npz
from mgritnn.train import config as config_module
from mgritnn.train.config import (MODEL_SPECS, SETTINGS, FlatConfigWarning, GRUSpec, ODENetSpec,
                                  OptimSpec, RunSpec, SolverSpec, setting_fields)

DATA = Path(__file__).parent / "data"


def flat(**kw):
    """TrainConfig(**kw) with the flat keywords' deprecation warning silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlatConfigWarning)
        return TrainConfig(**kw)


def test_the_nested_form_equals_the_flat_one():
    nested = TrainConfig(model=GRUSpec(hidden=4, seq_len=16), optim=OptimSpec(lr=0.01),
                         solver=SolverSpec("mgrit", {"levels": 2, "cf": [2]}),
                         run=RunSpec(epochs=2, max_batches=1))
    old = flat(hidden=4, seq_len=16, lr=0.01, solver="mgrit",
               solver_options={"levels": 2, "cf": (2,)}, epochs=2, max_batches=1)
    assert nested == old and hash(nested) == hash(old)
    assert isinstance(nested.model_spec, GRUSpec) and nested.optim == OptimSpec(lr=0.01)
    assert nested.run == RunSpec(epochs=2, max_batches=1)
    odenet = TrainConfig(model=ODENetSpec(depth=8, nested_levels=1))
    assert odenet == flat(model="odenet", depth=8, nested_levels=1)
    assert TrainConfig() == TrainConfig(model=GRUSpec(), optim=OptimSpec(), solver=SolverSpec(),
                                        run=RunSpec())


def test_every_setting_reads_as_an_alias_of_its_spec():
    cfg = TrainConfig(model=GRUSpec(hidden=4, dtype="float64"), optim=OptimSpec("sgd", lr=0.1),
                      solver=SolverSpec("deer", {"max_iter": 3}), run=RunSpec(epochs=3))
    assert (cfg.model, cfg.hidden, cfg.dtype, cfg.optimizer, cfg.lr, cfg.epochs) == \
        ("gru", 4, "float64", "sgd", 0.1, 3)
    assert cfg.solver == "deer" and cfg.solver_options == {"max_iter": 3}
    assert cfg.optimizer_kwargs() == dict(lr=0.1, weight_decay=0.0, momentum=0.9)
    # the other model's fields read as their defaults, as before
    assert cfg.depth == ODENetSpec().depth and cfg.nested_levels == 0
    assert cfg.nested_stages() == [(ODENetSpec().depth, 3)]
    for name in SETTINGS:
        getattr(cfg, name)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, name, getattr(cfg, name))
    odenet = TrainConfig(model=ODENetSpec(depth=8, nested_levels=1, nested_epochs=[2]))
    assert odenet.hidden == GRUSpec().hidden and odenet.nested_stages() == [(4, 2), (8, 15)]


def test_settings_are_the_flat_record_of_earlier_checkpoints():
    cfg = TrainConfig(model=ODENetSpec(depth=8), solver=SolverSpec("mgrit", {"levels": 2}))
    s = cfg.settings()
    assert tuple(s) == SETTINGS and s["model"] == "odenet" and s["depth"] == 8
    assert s["solver_options"] == {"levels": 2} and s["hidden"] == GRUSpec().hidden
    assert TrainConfig.from_settings(s) == cfg
    saved = json.loads(json.dumps(s))                     # as a checkpoint holds it
    assert TrainConfig.from_settings(TrainConfig.upgrade_settings(saved)) == cfg
    for name in ("adam", "sgd"):                          # the settings of mgritnn 0.1's files
        _, meta = read_npz(DATA / f"checkpoint_88ab840_{name}.npz")
        old = TrainConfig.upgrade_settings(meta["train"])
        assert set(old) <= set(SETTINGS)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cfg = TrainConfig.from_settings(old)          # no deprecation: a file's settings
        now = json.loads(json.dumps(cfg.settings()))
        assert {k: v for k, v in now.items() if k in old} == old


def test_every_setting_has_one_field_and_one_flag():
    fields = setting_fields()
    assert [name for name, _, _ in fields] == list(SETTINGS)
    for name, f, doc in fields:
        assert f.name == name and doc, name
    owners = {}
    for cls in (*MODEL_SPECS.values(), OptimSpec, SolverSpec, RunSpec):
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, set()).add(cls)
    shared = {n for n, o in owners.items() if len(o) > 1}
    assert shared == {"dtype"}                             # the models' common field
    assert set(owners) | {"model"} == set(SETTINGS)


def test_flat_keywords_warn_once_per_process(monkeypatch):
    monkeypatch.setattr(config_module, "_warned_flat", False)
    with pytest.warns(FlatConfigWarning, match="GRUSpec") as got:
        TrainConfig(hidden=4)
        TrainConfig(lr=0.1)
        TrainConfig(model=GRUSpec(hidden=4))                # nested: never warned
    assert len(got) == 1 and got[0].filename == __file__
    assert issubclass(FlatConfigWarning, DeprecationWarning)
    monkeypatch.setattr(config_module, "_warned_flat", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(model=GRUSpec(), optim=OptimSpec(), solver=MGRITConfig(), run=RunSpec())
        TrainConfig.from_settings(dict(hidden=4, solver="mgrit"))


def test_flat_keywords_refine_given_specs_and_are_checked():
    cfg = flat(model=GRUSpec(hidden=4), lr=0.1, layers=2)
    assert (cfg.hidden, cfg.layers, cfg.lr) == (4, 2, 0.1)
    with pytest.raises(ConfigError, match="--depth is an option of --model odenet, not of "
                                          "--model gru"):
        flat(model=GRUSpec(), depth=4)
    flat(model=GRUSpec(), depth=ODENetSpec().depth)          # the default: accepted, as before
    with pytest.raises(TypeError, match="unexpected keyword argument 'hiden'"):
        flat(hiden=4)
    with pytest.raises(TypeError, match="model= or model_spec="):
        TrainConfig(model=ODENetSpec(), model_spec=GRUSpec())
    with pytest.raises(ConfigError, match="contradicts the model spec"):
        flat(model="odenet", model_spec=GRUSpec())
    cfg = TrainConfig(model=GRUSpec(hidden=4), solver=SolverSpec("mgrit", {"levels": 2}))
    serial = flat(**{**cfg.__dict__, "solver": "serial", "solver_options": {}})
    assert serial == TrainConfig(model=GRUSpec(hidden=4))        # the old idiom still works


def test_a_solver_config_object_is_a_solver():
    cfg = TrainConfig(solver=MGRITConfig(levels=2, cf=2))
    assert cfg.solver == "mgrit" and cfg.solver_options == {"levels": 2, "cf": 2}
    assert cfg.solver_spec.config == MGRITConfig(levels=2, cf=2)
    quasi = TrainConfig(solver=DEERConfig(quasi=True, max_iter=3))
    assert quasi.solver == "quasi-deer" and quasi.solver_options == {"max_iter": 3}
    assert quasi.solver_spec.config == DEERConfig(quasi=True, max_iter=3)
    assert TrainConfig().solver_spec.config == SerialConfig()     # serial: no options
    assert TrainConfig(solver=SolverSpec("mgrit", {"preset": "paper"})).solver_options == \
        {"preset": "paper"}                                       # as given, preset kept


@pytest.mark.parametrize("make, message", [
    (lambda: SolverSpec("serial", {"levels": 2}), "takes no options"),
    (lambda: SolverSpec("mgrit", {"levelz": 2}), "bad option for solver 'mgrit'"),
    (lambda: SolverSpec("lstm"), "solver must be one of"),
    (lambda: SolverSpec("mgrit", [("levels", 2)]), "solver_options must be a dict"),
    (lambda: TrainConfig(solver=3), "solver must be a solver name"),
    (lambda: TrainConfig(model=OptimSpec()), "model must be GRUSpec"),
    (lambda: TrainConfig(optim=RunSpec()), "optim must be OptimSpec"),
    (lambda: GRUSpec(cell="lstm"), "cell must be one of"),
    (lambda: GRUSpec(newton_options=3), "newton_options must be a dict"),
    (lambda: ODENetSpec(depth=6, nested_levels=1, nested_cf=4), "must be divisible by 4"),
    (lambda: OptimSpec(lr="0.1"), r"lr must be a finite number > 0, got '0.1'"),
    (lambda: OptimSpec(clip=True), "clip must be a finite number > 0 or None, got True"),
    (lambda: OptimSpec(clip=np.inf), "clip must be a finite number > 0 or None, got inf"),
    (lambda: OptimSpec(momentum=1.0), "momentum must be a finite number >= 0 and < 1"),
    (lambda: OptimSpec("rmsprop"), "optimizer must be one of 'adam', 'sgd', 'lbfgs'"),
    (lambda: RunSpec(resume=True), "--resume needs a checkpoint path"),
    (lambda: TrainConfig(model=ODENetSpec(), solver=SolverSpec("deer")),
     "--solver deer does not apply to --model odenet"),
    (lambda: TrainConfig(optim=OptimSpec("lbfgs", lr=0.1)),
     "--lr is an option of the minibatch optimizers"),
    (lambda: TrainConfig(optim=OptimSpec("lbfgs"), run=RunSpec(max_batches=2)),
     "--max-batches is an option of the minibatch optimizers"),
])
def test_every_spec_checks_its_fields_on_construction(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_old_option_names_in_flat_keywords_warn_at_the_caller():
    from mgritnn.errors import MgritnnWarning
    with pytest.warns(MgritnnWarning) as got:
        cfg = flat(solver="mgrit", solver_options=dict(bwd_iters=2), cell="implicit-newton",
                   newton_options=dict(tol=1e-8))
    assert [str(w.message) for w in got if issubclass(w.category, MgritnnWarning)] == [
        "mgrit option 'bwd_iters' is deprecated: use 'adjoint_max_iter'",
        "Newton option 'tol' is deprecated: use 'atol'"]
    assert {w.filename for w in got} == {__file__}
    assert cfg.solver_options == {"adjoint_max_iter": 2} and cfg.newton_options == {"atol": 1e-8}


def test_replace_pickle_and_copy_keep_the_specs():
    import copy
    import pickle
    cfg = TrainConfig(model=ODENetSpec(depth=8), solver=MGRITConfig(levels=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        later = dataclasses.replace(cfg, run=RunSpec(epochs=3))
    assert later.epochs == 3 and later.model_spec == cfg.model_spec and later != cfg
    for twin in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg), copy.copy(cfg)):
        assert twin == cfg and hash(twin) == hash(cfg)


def test_the_command_line_builds_the_nested_specs_without_a_warning():
    from mgritnn.cli import build_parser, train_config
    parse = build_parser().parse_args
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = train_config(parse(["train", "--model", "odenet", "--depth", "16", "--solver",
                                  "mgrit", "--levels", "2", "--optimizer", "sgd", "--lr", "0.1",
                                  "--epochs", "3", "--dtype", "float64"]))
    assert cfg.model_spec == ODENetSpec(depth=16, dtype="float64")
    assert cfg.solver_spec == SolverSpec("mgrit", {"levels": 2})
    assert cfg.optim == OptimSpec("sgd", lr=0.1) and cfg.run == RunSpec(epochs=3)
    with pytest.raises(ConfigError, match="--hidden is an option of --model gru"):
        train_config(parse(["train", "--model", "odenet", "--hidden", "4"]))
