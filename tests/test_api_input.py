"""Issue 23: the Python API checks what it is given at the model boundary (X, y, lengths, keys),
before any solve, with a DataError naming the fix; and a DEER run whose solves did not converge
says so on the console, once per epoch.

The bad inputs form one table, run against every entry point of both models, so that a new entry
point added to ``ENTRY_POINTS`` gets every check for free.
"""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import mgritnn
from mgritnn.errors import DataError
from mgritnn.odenet import ODENet
from mgritnn.train import TrainConfig, train

B, T, I, C = 4, 5, 3, 3


def gru():
    return mgritnn.GRUClassifier(I, 4, C, dtype="float32")


def odenet():
    return ODENet(I, 4, C, depth=3, dtype="float32")


def good(model):
    rng = np.random.default_rng(0)
    shape = (B, T, I) if isinstance(model, mgritnn.GRUClassifier) else (B, I)
    return rng.standard_normal(shape), np.array([0, 1, 2, 1])


# entry point name -> call(model, X, y, keys): every path by which a user hands data to a model
ENTRY_POINTS = {
    "forward": lambda m, X, y, keys: m.forward(X),
    "predict": lambda m, X, y, keys: m.predict(X),
    "loss_and_grad": lambda m, X, y, keys: m.loss_and_grad(X, y, keys=keys),
    "loss_and_grad_flat": lambda m, X, y, keys: m.loss_and_grad_flat(X, y, keys=keys),
    "evaluate": lambda m, X, y, keys: mgritnn.evaluate(m, X, y),
}
USES_Y = {"loss_and_grad", "loss_and_grad_flat", "evaluate"}
USES_KEYS = {"loss_and_grad", "loss_and_grad_flat"}


def _x(fn):
    return lambda X, y: (fn(X), y, None)


def _y(fn):
    return lambda X, y: (X, fn(y), None)


# name -> (what it changes, which argument it concerns, message fragment)
BAD_INPUTS = {
    "X strings": (_x(lambda X: X.astype(str)), "X", "holds strings"),
    "X complex": (_x(lambda X: X + 1j), "X", "holds complex numbers"),
    "X objects": (_x(lambda X: X.astype(object)), "X", "holds Python objects"),
    "X NaN": (_x(lambda X: np.where(X > 0.5, np.nan, X)), "X", "contains NaN or inf"),
    "X inf": (_x(lambda X: np.full_like(X, np.inf)), "X", "contains NaN or inf"),
    "X beyond float32": (_x(lambda X: X * 1e39), "X",
                         "beyond the range of the model's dtype float32"),
    "y out of range": (_y(lambda y: y + 1), "y", "labels must lie in 0..2"),
    "y negative": (_y(lambda y: y - 1), "y", "labels must lie in 0..2"),
    "y strings": (_y(lambda y: y.astype(str)), "y", "labels y must be integers"),
    "y fractional": (_y(lambda y: y + 0.5), "y", "labels y must be integers"),
    "y short": (_y(lambda y: y[:-1]), "y", "y must have shape (4,)"),
    "y long": (_y(lambda y: np.append(y, 0)), "y", "y must have shape (4,)"),
    "keys long": (lambda X, y: (X, y, np.arange(B + 2)), "keys", "keys must have shape (4,)"),
    "keys short": (lambda X, y: (X, y, np.arange(B - 1)), "keys", "keys must have shape (4,)"),
    "keys fractional": (lambda X, y: (X, y, np.arange(B) + 0.5), "keys", "keys must be integers"),
}

CASES = [(model, entry, bad)
         for model in ("gru", "odenet") for entry in ENTRY_POINTS for bad in BAD_INPUTS
         if (BAD_INPUTS[bad][1] != "y" or entry in USES_Y)
         and (BAD_INPUTS[bad][1] != "keys" or entry in USES_KEYS)]


@pytest.mark.parametrize("model,entry,bad", CASES)
def test_bad_input_is_a_data_error_naming_the_fix(model, entry, bad):
    m = {"gru": gru, "odenet": odenet}[model]()
    X, y = good(m)
    change, _, fragment = BAD_INPUTS[bad]
    X, y, keys = change(X, y)
    with pytest.raises(DataError, match=re.escape(fragment)):
        ENTRY_POINTS[entry](m, X, y, keys)


@pytest.mark.parametrize("model", ["gru", "odenet"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_good_input_passes_every_entry_point(model, entry):
    """The checks refuse nothing valid: float64, int and bool X (bool reads as 0/1), integer
    labels given as floats, keys one per sample."""
    m = {"gru": gru, "odenet": odenet}[model]()
    X, y = good(m)
    for x in (X, X.astype(np.float32), (X > 0).astype(np.int32), X > 0):
        ENTRY_POINTS[entry](m, x, y.astype(np.float64), np.arange(B))


def test_bool_x_reads_as_zero_one():
    m = gru()
    X = np.random.default_rng(1).standard_normal((B, T, I)) > 0
    np.testing.assert_array_equal(m.forward(X), m.forward(X.astype(np.float32)))


def test_evaluate_lengths_must_match_x():
    m = gru()
    X, y = good(m)
    with pytest.raises(DataError, match=r"lengths must have shape \(4,\)"):
        mgritnn.evaluate(m, X, y, lengths=np.array([T, T]))


def test_evaluate_refuses_empty_x():
    m = gru()
    with pytest.raises(DataError, match="X is empty"):
        mgritnn.evaluate(m, np.zeros((0, T, I)), np.zeros(0, int))


def test_float64_model_keeps_large_values():
    """Values beyond float32's range are fine for a float64 model."""
    m = mgritnn.GRUClassifier(I, 4, C, dtype="float64")
    X, y = good(m)
    loss, _ = m.loss_and_grad(X * 1e39, y)
    assert np.isfinite(loss)


def test_cli_says_unconverged_deer_solves(tmp_path):
    """The issue's run: DEER with --max-iter 1 --no-fallback says on the console that its
    solves did not converge (one line per epoch), not only in the JSON log."""
    r = subprocess.run([sys.executable, "-m", "mgritnn", "train", "--solver", "deer", "--max-iter",
                        "1", "--no-fallback", "--epochs", "2", "--hidden", "6", "--seq-len", "16",
                        "--max-batches", "1", "--quiet"],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    said = [line for line in (r.stdout + r.stderr).splitlines() if "did not converge" in line]
    assert len(said) == 2, r.stdout + r.stderr
    assert "1 of 1 forward" in said[0] and "--max-iter" in said[0]


# -- DEER's unconverged solves on the console -------------------------------------------------

def test_unconverged_deer_solves_are_said_once_per_epoch(tmp_path):
    lines, log = [], tmp_path / "log.jsonl"
    cfg = TrainConfig.from_settings(dict(
        epochs=2, hidden=6, seq_len=16, batch_size=32, max_batches=2, solver="deer",
        solver_options=dict(max_iter=1, fallback=False), log=str(log)))
    _, hist = train(cfg, out=lines.append, progress=False)
    for rec in hist:
        un = rec["unconverged"]
        assert un["solves"] == 2 and un["forward"] == 2
    said = [line for line in lines if "did not converge" in line]
    assert len(said) == 2, lines                                   # one line per epoch
    assert "2 of 2 forward" in said[0] and "deer" in said[0] and "--max-iter" in said[0]
    epochs = [json.loads(x) for x in log.read_text().splitlines() if '"type": "epoch"' in x]
    assert epochs[0]["unconverged"]["forward"] == 2


def test_converged_deer_solves_say_nothing():
    lines = []
    cfg = TrainConfig.from_settings(dict(epochs=1, hidden=6, seq_len=16, batch_size=32,
                                         max_batches=2, solver="deer"))
    _, hist = train(cfg, out=lines.append, progress=False)
    assert hist[0]["unconverged"] == dict(forward=0, adjoint=0, solves=2)
    assert not any("did not converge" in line for line in lines)


def test_fixed_cycle_mgrit_is_not_reported_unconverged():
    """MGRIT without a tolerance (the paper's fixed cycle counts; the default atol_l2 is a
    round-off floor) ends unconverged by design: no record, no warning."""
    lines = []
    cfg = TrainConfig.from_settings(dict(epochs=1, hidden=6, seq_len=16, batch_size=32,
                                         max_batches=1, solver="mgrit",
                                         solver_options=dict(levels=2, cf=4)))
    _, hist = train(cfg, out=lines.append, progress=False)
    assert "unconverged" not in hist[0]
    assert not any("did not converge" in line for line in lines)
