"""One validator for every option (``mgritnn.options``): every config rejects a wrong type or
range with a ConfigError naming the option, accepts NumPy integers, rejects bools as counts, and
is frozen and hashable."""
import dataclasses

import numpy as np
import pytest

from mgritnn import AutoConfig, DEERConfig, MGRITConfig, NewtonConfig, TrainConfig
from mgritnn.errors import ConfigError
from mgritnn.options import check_bool, check_choice, check_int, check_real

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
