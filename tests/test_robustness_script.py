"""Issue 26 items 1 and 3: the ODENet's initial layer scale (--layer-init-scale) and the
scripts perf/peaks_robustness.py and perf/sgd_parity.py in a tiny mode (their tables read back
the logs they wrote). Accuracy is never asserted."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mgritnn.errors import ConfigError
from mgritnn.odenet import ODENet
from mgritnn.train.config import ODENetSpec

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "perf" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("layer_init", ["constant", "independent"])
def test_layer_init_scale_default_is_todays_draw(layer_init):
    """None (the default) draws every parameter uniform in +-1/sqrt(fan-in) from one generator,
    in the order of the parameters, as before the option existed."""
    m = ODENet(2, 8, 5, 4, seed=3, layer_init=layer_init)
    rng = np.random.default_rng(3)
    for name, view in m.params.items():
        fan_in = 2 if name.startswith("opening") else 8
        shape = view.shape[1:] if name == "layers" and layer_init == "constant" else view.shape
        bound = 1.0 / np.sqrt(fan_in)
        expect = np.broadcast_to(rng.uniform(-bound, bound, shape), view.shape)
        np.testing.assert_array_equal(view, expect, err_msg=name)
    np.testing.assert_array_equal(
        ODENet(2, 8, 5, 4, seed=3, layer_init=layer_init, layer_init_scale=None).flat, m.flat)


@pytest.mark.parametrize("scale", [0.0, 1e-6])
def test_layer_init_scale_scales_only_the_layers(scale):
    ref = ODENet(2, 8, 5, 4, seed=1, activation="smoothrelu")
    m = ODENet(2, 8, 5, 4, seed=1, activation="smoothrelu", layer_init_scale=scale)
    for name in m.params:
        if name.startswith("layers"):
            assert np.abs(m.params[name]).max() <= scale
            if scale:
                np.testing.assert_allclose(m.params[name], ref.params[name] * scale * np.sqrt(8))
        else:
            np.testing.assert_array_equal(m.params[name], ref.params[name], err_msg=name)
    assert "layer_init_scale" not in m.config      # the initialization only: not a shape


def test_layer_init_scale_checked():
    for bad in (-1e-6, float("nan"), "x"):
        with pytest.raises(ConfigError):
            ODENet(2, 8, 5, 4, layer_init_scale=bad)
        with pytest.raises(ConfigError):
            ODENetSpec(layer_init_scale=bad)
    assert ODENetSpec().layer_init_scale is None
    assert ODENetSpec(layer_init_scale=0.0).layer_init_scale == 0.0


def test_layer_init_scale_flag():
    """--layer-init-scale reaches the model spec (its training: test_peaks_robustness_tiny)."""
    from mgritnn.cli import build_parser, train_config
    argv = ["train", "--model", "odenet", "--data", "peaks", "--width", "5"]
    cfg = train_config(build_parser().parse_args(argv + ["--layer-init-scale", "1e-6"]))
    assert cfg.model_spec.layer_init_scale == 1e-6
    assert train_config(build_parser().parse_args(argv)).model_spec.layer_init_scale is None


def test_peaks_robustness_tiny(tmp_path, capsys):
    """One seed, one width, one setting, nested and not, a few epochs: the runs finish, the
    robustness table and the work-unit table read the logs' final accuracies."""
    mod = _load("peaks_robustness")
    out = tmp_path / "rob"
    argv = ["--out", str(out), "--seeds", "1", "--widths", "5", "--settings", "1",
            "--epochs", "2", "--nested-epochs", "1,1", "--fine-epochs", "1",
            "--optim", "--optimizer adam --lr 0.02 --batch-size 500"]
    assert mod.main(argv) == 0
    args = mod.parse_args(argv)
    final, curves, missing = mod.collect(args)
    assert not missing and set(final) == {(5, True), (5, False)}
    for name, width, nested, *_ in mod.runs(args):
        recs = mod.read_log(out / "runs" / f"{name}.jsonl")
        assert final[(width, nested)] == [100 * recs[-1]["test_acc"]]
        # depths 8, 16, 32 (one epoch each) against 2 depth-32 epochs
        assert mod.work_units(recs) == ([0.25, 0.75, 1.75] if nested else [1.0, 2.0])
    table = (out / "summary.md").read_text()
    acc = final[(5, True)][0]
    assert f"| mean | {acc:.1f} % / 86.7 %" in table
    assert "| runs | 1 / 48 | 1 / 48 |" in table
    assert "5 ch., nested" in capsys.readouterr().out
    # restarted: finished runs are not run again
    before = (out / "runs" / f"{mod.runs(args)[0][0]}.jsonl").read_text()
    assert mod.main(argv) == 0
    assert (out / "runs" / f"{mod.runs(args)[0][0]}.jsonl").read_text() == before


def test_sgd_parity_tiny(tmp_path):
    """The serial Peaks run of the SGD parity script, one epoch of 2 batches, and its table."""
    mod = _load("sgd_parity")
    out = tmp_path / "sgd"
    argv = ["--out", str(out), "--sets", "peaks", "--ranks", "1", "--epochs", "1",
            "--max-batches", "2"]
    assert mod.main(argv) == 0, (out / "peaks_serial.txt").read_text()
    recs = mod.read_log(out / "peaks_serial.jsonl")
    assert len(recs) == 1
    row = [r for r in (out / "summary.md").read_text().splitlines() if "| peaks | serial" in r]
    assert row and f"| {100 * recs[0]['test_acc']:.2f} % |" in row[0]
    assert "--optimizer sgd --momentum 0.9" in (out / "peaks_serial.txt").read_text()
