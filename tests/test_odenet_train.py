"""``mgritnn train --model odenet``: the CLI round trip on Peaks, resume, flag validation, L-BFGS,
nested iteration, and MGRIT over layers at a tight tolerance equal to the serial trainer."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import eval_and_predict
from mgritnn.cli import main
from mgritnn.errors import ConfigError
from mgritnn.io import read_npz
from mgritnn.odenet import inject_layers
from mgritnn.train import _MODEL_FIELDS, TrainConfig, Trainer, train

#: A tiny Peaks run: 4 layers of width 4, 2 batches of 250 per epoch.
SMALL = dict(model="odenet", data="peaks", depth=4, width=4, activation="smoothrelu",
             batch_size=250, max_batches=2, dtype="float64", lr=0.02)
SMALL_FLAGS = ["--model", "odenet", "--data", "peaks", "--depth", "4", "--width", "4",
               "--activation", "smoothrelu", "--batch-size", "250", "--max-batches", "2",
               "--dtype", "float64", "--lr", "0.02", "--quiet"]
TIGHT_MGRIT = dict(levels=2, cf=2, max_iter=60, adjoint_max_iter=60, atol_l2=1e-15)


def quiet(*a, **k):
    pass


def run(cfg, **kw):
    return train(TrainConfig(**dict(SMALL, **cfg), **kw), out=quiet, progress=False)


def test_cli_round_trip_on_peaks(tmp_path, capsys):
    ck, log = tmp_path / "ck.npz", tmp_path / "log.jsonl"
    assert main(["train", *SMALL_FLAGS, "--epochs", "2", "--checkpoint", str(ck),
                 "--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "model=odenet depth=4" in out and out.count("epoch ") == 2
    arrays, meta = read_npz(ck)
    assert meta["model_type"] == "odenet" and meta["model"]["depth"] == 4
    assert arrays["layers"].shape == (4, 4, 5)
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["depth"] for r in recs] == [4, 4] and all(r["level"] == 0 for r in recs)
    out, z = eval_and_predict(ck, tmp_path / "pred.npz", capsys)
    assert "(5000 samples)" in out and z["logits"].shape == (200, 5)
    acc = np.mean(z["predictions"] == z["labels"])
    assert abs(acc - meta["history"][-1]["test_acc"]) < 1e-12


def test_resume_is_bit_for_bit(tmp_path):
    full, _ = run(dict(epochs=3))
    ck = tmp_path / "ck.npz"
    run(dict(epochs=1), checkpoint=str(ck))
    resumed, hist = run(dict(epochs=3), checkpoint=str(ck), resume=True)
    assert np.array_equal(resumed.flat, full.flat) and len(hist) == 3


def test_resume_inside_a_coarse_level_of_nested_iteration(tmp_path):
    """A checkpoint written on a coarse level resumes there (its depth) and refines on time."""
    nested = dict(depth=8, nested_levels=2, nested_epochs=(2, 1), epochs=2)
    full, hist = run(nested)
    assert [r["depth"] for r in hist] == [2, 2, 4, 8, 8]
    ck = tmp_path / "ck.npz"
    with pytest.raises(SystemExit):
        cfg = TrainConfig(**dict(SMALL, **nested), checkpoint=str(ck))
        with Trainer(cfg, out=quiet, progress=False) as t:
            t.train_epoch(0)
            raise SystemExit                           # "killed" after epoch 1 of depth 2
    _, meta = read_npz(ck)
    assert meta["nested_stage"] == 0 and meta["model"]["depth"] == 2
    resumed, hist2 = run(nested, checkpoint=str(ck), resume=True)
    assert np.array_equal(resumed.flat, full.flat)
    assert [r["depth"] for r in hist2] == [2, 2, 4, 8, 8]


@pytest.mark.parametrize("kind", ["constant", "linear"])
def test_refinement_starts_from_the_interpolated_coarse_network(tmp_path, kind):
    log = tmp_path / "log.jsonl"
    cfg = TrainConfig(**dict(SMALL, depth=8, nested_levels=1, nested_epochs=2, epochs=1,
                             nested_interp=kind), log=str(log))
    with Trainer(cfg, out=quiet, progress=False) as t:
        t.train_epoch(0)
        t.train_epoch(1)
        assert t.stage_finished(2)
        coarse = t.model
        t.refine(2)
        fine = t.model
        assert fine.depth == 8 and coarse.depth == 4
        assert np.array_equal(inject_layers(fine.params["layers"], 2), coarse.params["layers"])
        for name in ("opening.weight", "opening.bias", "classifier.weight", "classifier.bias"):
            assert np.array_equal(fine.params[name], coarse.params[name])
        assert not t.stage_finished(2)
    rec = [json.loads(line) for line in log.read_text().splitlines()][-1]
    assert rec["type"] == "refine" and (rec["depth_from"], rec["depth_to"]) == (4, 8)
    assert abs(rec["train_loss_fine"] - rec["train_loss_coarse"]) < 0.02 * rec["train_loss_coarse"]


def test_nested_target_accuracy_ends_coarse_levels_early():
    _, hist = run(dict(depth=8, nested_levels=2, nested_epochs=(5, 5), epochs=1,
                       nested_target_acc=0.0))
    assert [r["depth"] for r in hist] == [2, 4, 8]
    assert [r["level"] for r in hist] == [2, 1, 0]


@settings(max_examples=12, deadline=None)
@given(depth=st.integers(1, 64), K=st.integers(0, 3), m=st.integers(2, 4),
       budgets=st.lists(st.integers(0, 5), min_size=3, max_size=3), epochs=st.integers(1, 9))
def test_nested_stages(depth, K, m, budgets, epochs):
    kw = dict(model="odenet", depth=depth * m ** K, nested_levels=K, nested_cf=m if K else 2,
              epochs=epochs)
    stages = TrainConfig(**kw, nested_epochs=tuple(budgets[:K]) if K else None).nested_stages()
    assert stages == [(depth * m ** (K - k), e) for k, e in zip(range(K, 0, -1), budgets)] + \
        [(depth * m ** K, epochs)]
    assert TrainConfig(**kw).nested_stages()[:-1] == [(depth * m ** (K - k), epochs)
                                                      for k in range(K, 0, -1)]


def test_lbfgs_decreases_the_loss():
    model0, _ = run(dict(epochs=1, max_batches=None, batch_size=100, optimizer="lbfgs", lr=3e-3))
    model, hist = run(dict(epochs=6, max_batches=None, batch_size=100, optimizer="lbfgs", lr=3e-3))
    losses = [r["loss"] for r in hist]
    assert len(hist) == 6 and all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.9 * losses[0]
    assert all(r["batches"] >= 1 for r in hist)        # function evaluations per iteration


def test_mgrit_over_layers_at_a_tight_tolerance_equals_serial_training():
    serial, h1 = run(dict(epochs=2, depth=8))
    mgrit, h2 = run(dict(epochs=2, depth=8), solver="mgrit", solver_options=TIGHT_MGRIT)
    np.testing.assert_allclose(mgrit.flat, serial.flat, rtol=1e-9, atol=1e-12)
    assert h2[-1]["solver"] == "mgrit"


def test_layers_preset_trains():
    _, hist = run(dict(epochs=1, depth=16), solver="mgrit", solver_options=dict(preset="layers"))
    assert hist[-1]["solver"] == "mgrit" and np.isfinite(hist[-1]["loss"])


@pytest.mark.parametrize("args, match", [
    (["--hidden", "16"], "--hidden is an option of --model gru"),
    (["--lengths", "ignore"], "--lengths is an option of --model gru"),
    (["--solver", "deer"], "does not apply to --model odenet"),
    (["--solver", "auto"], "does not apply to --model odenet"),
    (["--solver", "mgrit", "--initial-guess", "warm"], "warm start"),
    (["--solver", "mgrit", "--preset", "fast"], "warm start"),
    (["--optimizer", "lbfgs", "--clip", "1"], "--clip is an option of the minibatch optimizers"),
    (["--depth", "6", "--nested-levels", "2"], "must be divisible by 4"),
    (["--depth", "8", "--nested-levels", "2", "--nested-epochs", "1,2,3"], "one per coarse level"),
    (["--depth", "8", "--nested-levels", "2", "--solver", "mgrit", "--levels", "3", "--cf", "4"],
     "nested iteration's network of depth 2"),
])
def test_bad_odenet_flags_exit_2(capsys, args, match):
    assert main(["train", "--model", "odenet", "--data", "peaks", *args]) == 2
    assert match in capsys.readouterr().err


def test_odenet_flags_with_the_gru_exit_2(capsys):
    assert main(["train", "--depth", "8", "--nested-levels", "1"]) == 2
    assert "--depth, --nested-levels are options of --model odenet" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--tikhonov is an option of --model odenet"):
        TrainConfig(tikhonov=1.0)


def test_data_of_the_wrong_kind_exits_2(tmp_path, capsys):
    assert main(["train", "--model", "odenet"]) == 2                       # default: sequences
    assert "--model odenet needs static feature vectors" in capsys.readouterr().err
    gru = tmp_path / "gru.npz"
    assert main(["train", "--epochs", "1", "--hidden", "4", "--seq-len", "8", "--max-batches", "1",
                 "--checkpoint", str(gru), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(gru), "--data", "peaks"]) == 2
    err = capsys.readouterr().err      # the kind, not the checkpoint's --seq-len or class count
    assert "is static" in err and f"the gru of checkpoint {str(gru)!r} needs sequences" in err
    assert "evaluate it on sequence data" in err and "--seq-len" not in err and "classes" not in err
    ode = tmp_path / "ode.npz"
    assert main(["train", *SMALL_FLAGS, "--epochs", "1", "--checkpoint", str(ode)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ode), "--data", "default"]) == 2
    err = capsys.readouterr().err
    assert "holds sequences" in err and f"the odenet of checkpoint {str(ode)!r} needs static" in err
    assert "evaluate it on static data" in err and "classes" not in err
    assert main(["train", "--epochs", "2", "--hidden", "4", "--seq-len", "8", "--data", "peaks",
                 "--checkpoint", str(ode), "--resume"]) == 2
    assert "static" in capsys.readouterr().err


#: A valid value other than the default of every field that belongs to one model.
OTHER_VALUES = dict(seq_len=8, lengths="ignore", pad="front", cell="implicit",
                    newton_options={"max_iter": 3}, hidden=4, layers=2, dt=0.5, depth=16,
                    width=3, activation="relu", final_time=2.0, opening="copy", tikhonov=0.0,
                    ddt_penalty=0.0, layer_init="independent", layer_init_scale=1e-6,
                    layer="conv", channels=4,
                    nested_levels=1, nested_cf=4,
                    nested_interp="linear", nested_epochs=3, nested_target_acc=0.5)


@pytest.mark.parametrize("model, name", [(m, n) for m, other in (("gru", "odenet"), ("odenet", "gru"))
                                         for n in _MODEL_FIELDS[other]])
def test_every_field_of_the_other_model_is_refused(model, name):
    assert set(OTHER_VALUES) >= {name}
    with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} is an option of --model"):
        TrainConfig(model=model, **{name: OTHER_VALUES[name]})
