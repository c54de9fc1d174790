"""``mgritnn plan`` and ``eval`` messages: bad counts and shapes, a T too long to plan, the
out-of-memory advice in the flags of the model in use, and a checkpoint's relative data path."""
import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

from mgritnn.cli import _out_of_memory_message, main
from mgritnn.errors import ConfigError
from mgritnn.plan import parse_shape, plan

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] +
    [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def run(*args, cwd=None):
    """Run ``python -m mgritnn`` for real (exit status and both streams)."""
    return subprocess.run([sys.executable, "-m", "mgritnn", *args], capture_output=True, text=True,
                          env=ENV, timeout=300, cwd=cwd)


def assert_one_line_error(r, *parts):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mgritnn: error: "), r.stderr
    assert "Traceback" not in r.stderr and "expected one argument" not in r.stderr
    for part in parts:
        assert part in lines[0], r.stderr
    assert r.stdout == ""           # no plan printed


@pytest.mark.parametrize("flags, parts", [
    (["--classes", "0"], ["--classes 0", "class"]),
    (["--classes", "-3"], ["--classes -3"]),
    (["--ranks", "0"], ["--ranks 0"]),
    (["--threads", "0"], ["--threads 0"]),
    (["--cores", "0"], ["--cores 0"]),
    (["--deer-iters", "0"], ["--deer-iters 0"]),
])
def test_plan_refuses_counts_below_one(flags, parts):
    assert_one_line_error(run("plan", "--shape", "10,16,3,4,1", *flags), *parts)


@pytest.mark.parametrize("flag", ["--batch-size", "--hidden", "--layers"])
def test_plan_with_data_refuses_sizes_below_one(flag):
    assert_one_line_error(run("plan", "--data", "default", flag, "0"), f"{flag} 0")


@pytest.mark.parametrize("shape, parts", [
    ("-1,128,9,32,1", ["B (batch) is -1", "at least 1"]),
    ("10,-5,9,32,1", ["T (steps) is -5"]),
    ("10,128,9,0,1", ["H (hidden) is 0"]),
    ("10,x,9,32,1", ["T (steps) is 'x'", "not an integer"]),
    ("1,2,3", ["3 number(s)", "B,T,I,H,L"]),
])
def test_plan_shape_says_what_is_wrong(shape, parts):
    assert_one_line_error(run("plan", "--shape", shape), *parts)       # a value starting with '-'
    assert_one_line_error(run("plan", f"--shape={shape}"), *parts)


def test_plan_of_a_huge_T_is_a_prediction_counted_not_listed():
    """T = 10^12: the grids are counted in arithmetic, so the plan is a prediction (no memory
    proportional to T): every route's step evaluations are those of its T, serial's 2 T."""
    r = run("plan", "--shape", f"10,{10 ** 12},9,32,1", "--ranks", "4")
    assert r.returncode == 0, r.stderr
    assert f"| {2 * 10 ** 12} |" in r.stdout and "MGRIT paper" in r.stdout
    rows = plan(parse_shape((10, 10 ** 12, 9, 32, 1)), 4)
    assert all(row.prediction.seconds > 0 for row in rows if row.prediction is not None)


def test_out_of_memory_advice_names_the_flags_of_the_model_in_use():
    e = MemoryError("Unable to allocate 7 TiB")
    odenet = _out_of_memory_message(e, argparse.Namespace(command="train", model="odenet"))
    assert "--width" in odenet and "--depth" in odenet
    assert "--hidden" not in odenet and "--layers" not in odenet and "--seq-len" not in odenet
    gru = _out_of_memory_message(e, argparse.Namespace(command="train", model="gru"))
    assert "--hidden" in gru and "--layers" in gru and "--width" not in gru
    shape = _out_of_memory_message(e, argparse.Namespace(command="plan", shape="1,2,3,4,5"))
    assert "--shape" in shape and "--hidden" not in shape and "7 TiB" in shape


def test_eval_from_another_directory_names_the_checkpoints_relative_data(tmp_path, monkeypatch):
    train_dir, other = tmp_path / "run", tmp_path / "elsewhere"
    (train_dir / "data").mkdir(parents=True)
    other.mkdir()
    rng = np.random.default_rng(0)
    np.savez(train_dir / "data" / "x.npz", X_train=rng.normal(size=(20, 12, 3)).astype(np.float32),
             y_train=np.arange(20) % 3, X_test=rng.normal(size=(10, 12, 3)).astype(np.float32),
             y_test=np.arange(10) % 3)
    ck = str(train_dir / "ck.npz")
    monkeypatch.chdir(train_dir)
    assert main(["train", "--data", "data/x.npz", "--epochs", "1", "--hidden", "4",
                 "--checkpoint", ck, "--quiet"]) == 0
    r = run("eval", "--checkpoint", ck, cwd=str(other))
    assert_one_line_error(r, "'data/x.npz'", "checkpoint", "relative to the directory training ran",
                          "--data")
    ok = run("eval", "--checkpoint", ck, "--data", str(train_dir / "data" / "x.npz"),
             cwd=str(other))
    assert ok.returncode == 0 and "accuracy" in ok.stdout, ok.stderr
