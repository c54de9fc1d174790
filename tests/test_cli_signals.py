"""Signals on the command line: Ctrl-C (SIGINT) during ``mgritnn train`` ends it with one line
``mgritnn: interrupted (SIGINT) ...`` on stderr and exit status 130, no traceback, and leaves the
last checkpoint whole, to resume from."""
import os
import signal
import subprocess
import sys
import threading

import pytest

from mgritnn.train import load_checkpoint

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] +
    [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))

TRAIN = ["train", "--epochs", "500", "--hidden", "8", "--seq-len", "16", "--max-batches", "3",
         "--quiet"]


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "mgritnn", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def _wait_for_epochs(proc, n, timeout=900):
    """Read ``proc``'s stdout until its ``n``-th epoch line (the lines read, list of str)."""
    lines, done = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if sum(x.startswith("epoch ") for x in lines) >= n:
                done.set()
                return
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout) or sum(x.startswith("epoch ") for x in lines) < n:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"train did not reach epoch {n}: stdout {''.join(lines)}{out} stderr {err}")
    return lines


def _interrupt(proc):
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("train did not stop on SIGINT")
    return err


def test_sigint_during_train_is_one_line_and_exit_130(tmp_path):
    ck = str(tmp_path / "ck.npz")
    proc = _start(TRAIN + ["--checkpoint", ck])
    _wait_for_epochs(proc, 2)
    err = _interrupt(proc)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mgritnn: interrupted (SIGINT)")
    assert repr(ck) in lines[0] and "intact" in lines[0] and "--resume" in lines[0]
    model, _, meta = load_checkpoint(ck)            # whole: it loads
    assert model is not None and meta is not None


def test_sigint_without_checkpoint_says_nothing_to_resume(tmp_path):
    proc = _start(TRAIN)
    _wait_for_epochs(proc, 1)
    err = _interrupt(proc)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mgritnn: interrupted (SIGINT)") and "--checkpoint" in lines[0]
