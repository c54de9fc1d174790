"""The command line: each subcommand works, and every bad input gets a message and exit status 2."""
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import eval_and_predict
from mgritnn.cli import main

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] +
    [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def run(*args):
    """Run ``python -m mgritnn`` for real (exit status and both streams)."""
    return subprocess.run([sys.executable, "-m", "mgritnn", *args], capture_output=True, text=True,
                          env=ENV, timeout=300)


def write_npz(path, N=20, T=12, C=3, classes=3, seed=0, **override):
    rng = np.random.default_rng(seed)
    d = dict(X_train=rng.normal(size=(N, T, C)).astype(np.float32),
             y_train=np.arange(N) % classes,
             X_test=rng.normal(size=(N // 2, T, C)).astype(np.float32),
             y_test=np.arange(N // 2) % classes)
    d.update(override)
    np.savez(path, **d)
    return str(path)


def test_train_eval_predict_round_trip(tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    assert main(["train", "--epochs", "2", "--hidden", "8", "--seq-len", "16", "--max-batches", "3",
                 "--checkpoint", str(ck), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("epoch ") for line in out.splitlines()) == 2 and "test acc" in out
    _, z = eval_and_predict(ck, tmp_path / "pred.npz", capsys)
    assert z["logits"].shape == (500, 4) and z["predictions"].shape == (500,)


def test_gradcheck_and_info(capsys):
    assert main(["gradcheck", "--cell", "implicit", "--dt", "2.0"]) == 0
    out = capsys.readouterr().out
    assert "weight_hh_l1" in out and "ok: all below" in out
    assert main(["info"]) == 0
    assert "numba threads" in capsys.readouterr().out


def test_help_everywhere():
    for sub in ([], ["train"], ["eval"], ["predict"], ["gradcheck"], ["info"]):
        r = run(*sub, "--help")
        assert r.returncode == 0 and "usage" in r.stdout


@pytest.mark.parametrize("override, match", [
    (dict(X_train=np.full((20, 12, 3), np.nan, np.float32)), "NaN"),
    (dict(X_train=np.zeros((20, 12), np.float32)), "(N, T, C)"),
    (dict(y_train=np.arange(20) - 5), "label"),
    (dict(y_train=np.arange(20), class_names=np.array(["a", "b", "c"])), "label"),
    (dict(y_train=np.linspace(0, 2, 20)), "integer"),
    (dict(X_test=np.zeros((10, 12, 4), np.float32)), "channels"),
    (dict(X_train=np.zeros((0, 12, 3), np.float32), y_train=np.zeros(0, np.int64)), "empty"),
])
def test_bad_data_exits_2_with_a_message(tmp_path, override, match):
    r = run("train", "--data", write_npz(tmp_path / "d.npz", **override), "--epochs", "1")
    assert r.returncode == 2
    assert "mgritnn: error:" in r.stderr and match in r.stderr
    assert "Traceback" not in r.stderr


def test_checkpoint_of_another_shape_exits_2(tmp_path):
    ck = str(tmp_path / "ck.npz")
    data = write_npz(tmp_path / "d.npz")
    assert main(["train", "--data", data, "--epochs", "1", "--hidden", "4", "--checkpoint", ck,
                 "--quiet"]) == 0
    r = run("train", "--data", data, "--epochs", "2", "--hidden", "6", "--checkpoint", ck, "--resume")
    assert r.returncode == 2 and "hidden" in r.stderr and "Traceback" not in r.stderr
    r = run("eval", "--checkpoint", str(tmp_path / "missing.npz"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_bad_options_exit_2():
    r = run("train", "--hidden", "-3")
    assert r.returncode == 2 and "hidden" in r.stderr
    r = run("train", "--cell", "lstm")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = run("train", "--data", "/nonexistent/file.npz")
    assert r.returncode == 2 and "mgritnn: error:" in r.stderr


@pytest.mark.parametrize("solver", ["deer", "quasi-deer"])
def test_train_with_deer_logs_newton_diagnostics(tmp_path, capsys, solver):
    """--solver deer|quasi-deer trains; every batch's Newton iterations, final update, status and
    whether the fallback ran are in the JSON log."""
    import json
    log = tmp_path / "log.jsonl"
    assert main(["train", "--epochs", "1", "--hidden", "6", "--seq-len", "24", "--max-batches", "2",
                 "--solver", solver, "--atol", "1e-5", "--max-iter", "30", "--damping", "0.1",
                 "--initial-guess", "warm", "--log", str(log), "--quiet"]) == 0
    assert f"solver={solver}" in capsys.readouterr().out
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    batches = [r for r in recs if r["type"] == "batch"]
    assert len(batches) == 2
    for r in batches:
        assert (r["forward_iterations"] >= 1 and r["forward_status"] == 0
                and r["forward_fallback"] is False)
        assert r["forward_residual"] >= 0 and r["forward_message"] == "converged"


@pytest.mark.parametrize("args, match", [
    (["--solver", "deer", "--levels", "3"], "--levels is an option of --solver mgrit"),
    (["--solver", "mgrit", "--damping", "1"], "--damping is an option of --solver deer or quasi-deer"),
    (["--atol", "1e-3"], "not of --solver serial"),
    (["--solver", "mgrit", "--no-fallback"], "--no-fallback"),
    (["--solver", "deer", "--initial-guess", "warm", "--max-iter", "0"], "max_iter"),
    (["--solver", "mgrit", "--initial-guess", "input"], "initial_guess"),
    (["--solver", "deer", "--preset", "fast"], "--preset is an option of --solver mgrit"),
])
def test_solver_flags_of_another_solver_exit_2(args, match):
    r = run("train", "--epochs", "1", "--seq-len", "8", *args)
    assert r.returncode == 2 and "mgritnn: error:" in r.stderr and match in r.stderr, r.stderr


def test_newton_options_reach_the_cell(tmp_path, capsys):
    """--newton-max-iter etc. build the implicit-newton cell with that NewtonConfig; with another
    cell they are an error."""
    import json
    log = tmp_path / "log.jsonl"
    with pytest.warns(RuntimeWarning, match="implicit-newton"):
        assert main(["train", "--cell", "implicit-newton", "--newton-max-iter", "1", "--newton-atol",
                     "1e-12", "--dt", "4", "--epochs", "1", "--hidden", "6", "--seq-len", "12",
                     "--max-batches", "1", "--log", str(log), "--quiet"]) == 0
    rec = [json.loads(line) for line in log.read_text().splitlines()][-1]
    assert rec["newton"]["unconverged"] > 0            # one update cannot reach 1e-12 at dt = 4
    assert "did not reach the tolerance" in capsys.readouterr().out
    r = run("train", "--newton-max-iter", "3", "--epochs", "1", "--seq-len", "8")
    assert r.returncode == 2 and "need --cell implicit-newton" in r.stderr
    r = run("train", "--cell", "implicit-newton", "--newton-max-iter", "0", "--epochs", "1")
    assert r.returncode == 2 and "max_iter" in r.stderr


def test_train_with_the_fast_mgrit_preset(tmp_path, capsys):
    """--preset fast reaches the solver (and other MGRIT flags override it): the log shows one
    forward cycle per batch."""
    import json
    log = tmp_path / "log.jsonl"
    assert main(["train", "--epochs", "2", "--hidden", "6", "--seq-len", "32", "--max-batches", "2",
                 "--solver", "mgrit", "--preset", "fast", "--adjoint-max-iter", "2", "--log", str(log),
                 "--quiet"]) == 0
    assert "preset=fast" in capsys.readouterr().out
    batches = [r for r in map(json.loads, log.read_text().splitlines()) if r["type"] == "batch"]
    assert len(batches) == 4 and all(r["forward_iterations"] == 1 for r in batches)
    r = run("train", "--solver", "mgrit", "--preset", "fastest", "--epochs", "1")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_outputs_never_replace_inputs_or_an_earlier_run(tmp_path):
    """No run destroys a file: a checkpoint or log that is the training data, a second run onto an
    existing checkpoint without --resume or --overwrite, predictions written onto the checkpoint,
    and outputs that are directories all stop at once with exit 2 and one line naming the fix; the
    files stay byte for byte as they were."""
    data = write_npz(tmp_path / "d.npz")
    data_bytes = open(data, "rb").read()
    ck = tmp_path / "ck.npz"
    quick = ["--epochs", "1", "--hidden", "4", "--max-batches", "1", "--quiet"]
    for flag in ("--checkpoint", "--log"):
        r = run("train", "--data", data, flag, data, *quick)
        assert r.returncode == 2 and "is the training data" in r.stderr, r.stderr
    r = run("train", "--data", data, "--checkpoint", str(tmp_path), *quick)
    assert r.returncode == 2 and "is a directory" in r.stderr, r.stderr
    assert main(["train", "--data", data, "--checkpoint", str(ck), *quick]) == 0
    ck_bytes = ck.read_bytes()
    r = run("train", "--data", data, "--checkpoint", str(ck), *quick)
    assert r.returncode == 2 and "exists from an earlier run" in r.stderr and "--overwrite" in r.stderr
    r = run("predict", "--checkpoint", str(ck), "--out", str(ck))
    assert r.returncode == 2 and "would destroy it" in r.stderr, r.stderr
    r = run("predict", "--checkpoint", str(ck), "--out", str(tmp_path))
    assert r.returncode == 2 and "is a directory" in r.stderr, r.stderr
    assert open(data, "rb").read() == data_bytes and ck.read_bytes() == ck_bytes
    assert main(["train", "--data", data, "--checkpoint", str(ck), "--overwrite", *quick]) == 0
    assert main(["train", "--data", data, "--checkpoint", str(ck), "--resume", *quick]) == 0


@pytest.mark.parametrize("args, match", [
    (["train", "--seed", "-1"], "seed must be an integer >= 0, got -1"),
    (["gradcheck", "--eps", "0"], "eps must be a positive step"),
    (["gradcheck", "--classes", "1"], "use --classes 2 or more"),
])
def test_bad_values_exit_2_without_a_traceback(args, match):
    r = run(*args)
    assert r.returncode == 2 and "mgritnn: error:" in r.stderr and match in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def write_padded(path, N=20, T=12, C=3, classes=3, seed=0):
    """A .npz with true lengths (len_train, len_test): each sequence zero-padded at the end."""
    rng = np.random.default_rng(seed)
    d = {}
    for split, n in (("train", N), ("test", N // 2)):
        L = rng.integers(2, T + 1, n)
        X = rng.normal(size=(n, T, C)) * (np.arange(T)[:, None] < L[:, None, None])
        d.update({f"X_{split}": X.astype(np.float32), f"y_{split}": np.arange(n) % classes,
                  f"len_{split}": L})
    np.savez(path, **d)
    return str(path)


def test_length_flags_reach_training_and_eval_predict_use_the_checkpoints_policy(tmp_path,
                                                                                 capsys):
    from mgritnn import datasets
    from mgritnn.io import atomic_savez, read_npz
    from mgritnn.train import evaluate, load_checkpoint
    r = run("train", "--help")
    assert "--lengths {use,ignore}" in r.stdout and "--pad {end,front}" in r.stdout
    data, ck, pred = write_padded(tmp_path / "var.npz"), tmp_path / "ck.npz", tmp_path / "p.npz"
    quick = ["--epochs", "1", "--hidden", "4", "--batch-size", "8", "--quiet"]
    assert main(["train", "--data", data, "--pad", "front", "--checkpoint", str(ck), *quick]) == 0
    assert read_npz(ck)[1]["train"]["pad"] == "front"
    assert read_npz(ck)[1]["train"]["lengths"] == "use"
    assert main(["predict", "--checkpoint", str(ck), "--out", str(pred)]) == 0
    model, std, _ = load_checkpoint(ck)
    ds = datasets.load(data, pad="front")
    expected = evaluate(model, std.transform(ds.X_test, model.dtype, ds.len_test, "front"),
                        ds.y_test, lengths=ds.len_test, pad="front")["logits"]
    with np.load(pred) as z:
        assert z["logits"].tobytes() == expected.tobytes()
    capsys.readouterr()
    ck2 = tmp_path / "ck2.npz"
    assert main(["train", "--data", data, "--lengths", "ignore", "--checkpoint", str(ck2),
                 *quick]) == 0
    assert "mgritnn: warning: " in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(ck2)]) == 0         # the checkpoint's policy: ignore
    err = capsys.readouterr().err
    assert "mgritnn: warning: " in err and "ignored (--lengths ignore)" in err
    arrays, meta = read_npz(ck2)        # a checkpoint from before the length policy is evaluated
    for key in ("lengths", "pad"):      # as it was trained: "ignore"
        del meta["train"][key]
    atomic_savez(tmp_path / "old.npz", arrays, meta=meta)
    for name in ("ck2", "old"):
        assert main(["predict", "--checkpoint", str(tmp_path / f"{name}.npz"),
                     "--out", str(tmp_path / f"{name}-p.npz")]) == 0
    with np.load(tmp_path / "ck2-p.npz") as a, np.load(tmp_path / "old-p.npz") as b:
        assert a["logits"].tobytes() == b["logits"].tobytes()
    r = run("train", "--data", data, "--pad", "middle")
    assert r.returncode == 2 and "invalid choice: 'middle'" in r.stderr
