"""One rule for options that do not apply (issue 23): an option away from its default that the
chosen model, optimizer or setting does not use is a ConfigError naming it. Table-driven from the
rule's own tables (``_APPLIES_ONLY``, ``_MODEL_FIELDS``), so a flag added to a row is tested here
without a new test."""
import dataclasses
import os
import subprocess
import sys
import warnings

import pytest

from mgritnn.errors import CheckpointError, ConfigError
from mgritnn.train import TrainConfig
from mgritnn.train.checkpoint import Checkpointer, model_diff
from mgritnn.train.config import (_APPLIES_ONLY, _MODEL_FIELDS, MODEL_SPECS, ODENetSpec,
                                  _default, _field)

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] +
    [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))

#: Values for the fields whose type says too little to make a valid non-default one.
_SPECIAL = {"newton_options": {"max_iter": 3}, "nested_epochs": 1, "nested_target_acc": 0.5,
            "seq_len": 5, "max_batches": 2, "clip": 1.0, "momentum": 0.5, "lr": 0.01,
            "weight_decay": 0.1, "nested_cf": 4, "layer_init_scale": 1e-6}
#: Settings to try as "where it does not apply": the first that a row's applies() rejects is used.
_BASES = [dict(optimizer="lbfgs"), dict(optimizer="adam"), dict(model="odenet"),
          dict(model="odenet", optimizer="lbfgs"), dict(model="gru")]


def other_value(name, model="gru"):
    """A valid value of the setting ``name`` other than its default."""
    if name in _SPECIAL:
        return _SPECIAL[name]
    f = _field(name, model)
    default = _default(f)
    choices = f.metadata.get("flag", {}).get("choices")
    if choices is not None:
        choices = choices() if callable(choices) else choices
        return next(c for c in choices if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default * 2 if default else 0.5
    raise AssertionError(f"add a non-default value of {name!r} to _SPECIAL")


def config(**settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TrainConfig(**settings)


def flag(name):
    """``--name``, or ``--no-name`` for a bool setting whose default is True."""
    f = _field(name)
    return "--" + ("no-" if _default(f) is True else "") + name.replace("_", "-")


def _fits(base, name, row):
    """Whether ``base`` is where the ``row``-th rule rejects ``name``: a setting of its model, the
    row does not apply and every earlier row that holds ``name`` does (they are checked first)."""
    cfg = config(**base)
    spec = MODEL_SPECS[cfg.model]
    if any(name in names for m, names in _MODEL_FIELDS.items() if m != cfg.model) and \
            name not in spec.__dataclass_fields__:
        return False
    return not _APPLIES_ONLY[row][1](cfg) and all(
        applies(cfg) for fields, applies, *_ in _APPLIES_ONLY[:row] if name in fields)


def _rule_cases():
    cases = []
    for row, (fields, applies, owner, here) in enumerate(_APPLIES_ONLY):
        for name in fields:
            base = next(b for b in _BASES if _fits(b, name, row))
            cases.append(pytest.param(base, name, owner, here(config(**base)),
                                      id=f"{name}-{'-'.join(base.values())}"))
    return cases


@pytest.mark.parametrize("base, name, owner, here", _rule_cases())
def test_an_option_that_does_not_apply_is_named(base, name, owner, here):
    model = base.get("model", "gru")
    with pytest.raises(ConfigError) as e:
        config(**base, **{name: other_value(name, model)})
    msg = str(e.value)
    assert msg.startswith(f"{flag(name)} is an option of {owner}, not of {here}"), msg
    assert msg.endswith("drop it")


@pytest.mark.parametrize("base, name, owner, here", _rule_cases())
def test_the_same_option_is_accepted_where_it_applies(base, name, owner, here):
    for fields, applies, *_ in _APPLIES_ONLY:
        if name in fields:
            good = next(b for b in _BASES + [dict(optimizer="sgd"),
                                             dict(model="odenet", nested_levels=1, depth=8),
                                             dict(solver="mgrit")]
                        if all(a(config(**b)) for f, a, *_ in _APPLIES_ONLY if name in f))
    settings = dict(good, **{name: other_value(name, good.get("model", "gru"))})
    if name == "nested_epochs":
        settings["nested_epochs"] = 1
    assert getattr(config(**settings), name) is not None


@pytest.mark.parametrize("model, name", [(m, n) for m, names in _MODEL_FIELDS.items()
                                         for n in names])
def test_a_field_of_the_other_model_is_named(model, name):
    other = next(m for m in MODEL_SPECS if m != model)
    with pytest.raises(ConfigError, match=f"^{flag(name)} is an option of --model {model}, not "
                                          f"of --model {other}: drop it$"):
        config(model=other, **{name: other_value(name, model)})


@pytest.mark.parametrize("args, words", [
    (["--optimizer", "lbfgs", "--batch-size", "7"],
     "--batch-size is an option of the minibatch optimizers (adam, sgd), not of --optimizer lbfgs"),
    (["--model", "odenet", "--data", "peaks", "--nested-cf", "4"],
     "--nested-cf is an option of nested iteration (--nested-levels K >= 1)"),
    (["--model", "odenet", "--data", "peaks", "--nested-epochs", "3", "--nested-target-acc", "0.9"],
     "--nested-epochs, --nested-target-acc are options of nested iteration"),
    (["--momentum", "0.5"], "--momentum is an option of --optimizer sgd, not of --optimizer adam"),
    (["--model", "odenet", "--data", "peaks", "--depth", "8", "--nested-levels", "2",
      "--nested-cf", "1"], "give --nested-cf 2 or more"),
])
def test_cli_exits_2_with_one_line(tmp_path, args, words):
    r = subprocess.run([sys.executable, "-m", "mgritnn", "train", "--epochs", "1", *args],
                       capture_output=True, text=True, env=ENV, timeout=600, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mgritnn: error: ") and words in lines[0], \
        r.stderr


def test_nested_cf_1_is_rejected():
    with pytest.raises(ConfigError, match="--nested-levels 2 with --nested-cf 1 would train "
                                          "depth 8 3 times.*--nested-cf 2 or more"):
        ODENetSpec(depth=8, nested_levels=2, nested_cf=1)


class _Ranks:
    root = True


class _Model:
    def __init__(self, config):
        self.config = config


def test_resume_with_another_shape_names_the_differing_fields(tmp_path):
    saved = config(model="odenet", depth=8)
    now = config(model="odenet", depth=16, nested_levels=1,
                 checkpoint=str(tmp_path / "ck.npz"), resume=True)
    meta = dict(model=dict(depth=4, width=8, model_type="odenet"), train=saved.settings())
    ck = Checkpointer.__new__(Checkpointer)
    ck.cfg, ck.ranks, ck.out = now, _Ranks(), print
    with pytest.raises(CheckpointError) as e:
        ck.check_model(_Model(dict(depth=8, width=8, model_type="odenet")), meta)
    msg = str(e.value)
    assert "depth 4 -> 8 (checkpoint -> this run)" in msg, msg
    assert "the settings that differ: depth 8 -> 16, nested_levels 0 -> 1" in msg, msg
    assert "hidden" not in msg and "cell" not in msg and "{" not in msg, msg
    assert model_diff({"a": 1, "b": 2}, {"a": 1, "c": 3}) == ["b 2 -> None", "c None -> 3"]


@pytest.mark.parametrize("saved, now, words", [
    (dict(nested_levels=1), dict(nested_levels=0), "nested_levels 1 -> 0"),
    (dict(nested_levels=0), dict(nested_levels=2), "nested_levels 0 -> 2"),
    (dict(nested_levels=1, nested_cf=2), dict(nested_levels=1, nested_cf=4),
     "nested_cf 2 -> 4"),
])
def test_resume_with_another_nested_iteration_names_the_difference(tmp_path, saved, now, words):
    old = config(model="odenet", depth=16, **saved)
    ck = Checkpointer.__new__(Checkpointer)
    ck.cfg, ck.ranks, ck.out = config(model="odenet", depth=16, checkpoint=str(tmp_path / "c.npz"),
                                      resume=True, **now), _Ranks(), print
    with pytest.raises(CheckpointError) as e:
        ck.check_schedule(dict(train=old.settings()))
    msg = str(e.value)
    assert "another nested iteration: " + words in msg and "(checkpoint -> this run)" in msg, msg
    assert f"--nested-levels {old.nested_levels} --nested-cf {old.nested_cf}" in msg, msg
    ck.cfg = old                                         # the same schedule: no error
    ck.check_schedule(dict(train=old.settings()))
