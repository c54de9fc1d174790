"""Every path option is checked before the first batch (issue 23): an empty path (an unset shell
variable), a trailing separator, a directory where a file is meant, a component that is a file,
an unwritable directory, and a data path that is empty, missing or a directory named ``.npz``:
one line ``mgritnn: error: ...``, exit status 2, nothing written."""
import os
import subprocess
import sys

import pytest

from mgritnn import datasets
from mgritnn.errors import ConfigError, DataError
from mgritnn.io import check_output_path
from mgritnn.train import TrainConfig
from mgritnn.train.config import RunSpec

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] +
    [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def run(*args, cwd):
    """Run ``python -m mgritnn`` for real (exit status and both streams)."""
    return subprocess.run([sys.executable, "-m", "mgritnn", *args], capture_output=True, text=True,
                          env=ENV, timeout=600, cwd=cwd)


def setup_tree(tmp):
    (tmp / "afile").write_text("x")
    (tmp / "adir").mkdir()
    (tmp / "data.npz").mkdir()                 # a directory named like an archive


#: (flag, value, the words the one error line must hold)
CASES = [
    ("--checkpoint", "", ["--checkpoint is empty", "leave --checkpoint out"]),
    ("--log", "", ["--log is empty", "leave --log out"]),
    ("--checkpoint", "out/", ["'out/' names a directory, not a file", "out/run.npz"]),
    ("--log", "logs/", ["'logs/' names a directory, not a file", "logs/run.jsonl"]),
    ("--checkpoint", "adir", ["'adir' is a directory", "adir/run.npz"]),
    ("--log", "adir", ["'adir' is a directory", "adir/run.jsonl"]),
    ("--checkpoint", "afile/ck.npz", ["is a file, not a directory"]),
    ("--log", "afile/sub/log.jsonl", ["is a file, not a directory"]),
    ("--data", "", ["--data is empty", "leave --data out"]),
    ("--data", "data.npz", ["'data.npz' is a directory, not a .npz file"]),
    ("--data", "missing.npz", ["'missing.npz' does not exist"]),
]


@pytest.mark.parametrize("flag, value, words", CASES)
def test_a_bad_path_is_one_error_line_before_any_work(tmp_path, flag, value, words):
    setup_tree(tmp_path)
    before = sorted(os.listdir(tmp_path))
    r = run("train", "--epochs", "1", "--max-batches", "1", "--quiet", flag, value, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mgritnn: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert "epoch 1" not in r.stdout                 # no batch was trained
    assert sorted(os.listdir(tmp_path)) == before    # nothing written or created


@pytest.mark.parametrize("flag, value, words", CASES)
def test_the_same_checks_in_the_api(tmp_path, monkeypatch, flag, value, words):
    setup_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(run=RunSpec(**{flag[2:]: value}))
    with pytest.raises(DataError if flag == "--data" else ConfigError) as e:
        cfg.check_paths()
    for w in words:
        assert w in str(e.value)


def test_data_sources_are_checked_once_for_loading_too(tmp_path):
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(DataError, match="is a directory, not a .npz file"):
        datasets.load(tmp_path / "d.npz")
    with pytest.raises(DataError, match="--data is empty"):
        datasets.load("")
    with pytest.raises(DataError, match="is a directory, not a .npz file"):
        datasets.load_npz(tmp_path / "d.npz")
    assert datasets.check_source("peaks") == "generated"
    assert datasets.check_source(tmp_path) == "dir"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes everywhere")
def test_an_unwritable_directory_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="is not writable"):
            check_output_path(str(locked / "new" / "ck.npz"), "--checkpoint", ConfigError)
    finally:
        locked.chmod(0o700)


def test_good_paths_pass(tmp_path):
    check_output_path(str(tmp_path / "new" / "dirs" / "ck.npz"), "--checkpoint", ConfigError)
    TrainConfig(run=RunSpec(checkpoint=str(tmp_path / "a" / "ck.npz"),
                            log=str(tmp_path / "log.jsonl"))).check_paths()
    assert not (tmp_path / "a").exists()             # checking writes nothing
