"""Signals on the command line: Ctrl-C (SIGINT) during ``mgritnn train`` ends it with one line
``mgritnn: interrupted (SIGINT) ...`` on stderr and exit status 130, no traceback, and leaves the
last checkpoint whole, to resume from."""
import os
import signal
import subprocess
import sys
import threading
import time

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


def test_sigint_under_mpiexec_is_one_line_and_exit_130(tmp_path):
    """``mpiexec -n 2``: hydra forwards Ctrl-C to every rank; rank 0 prints the one line, every
    rank ends with 130 (no traceback per rank, no MPI_Abort), and the checkpoint loads."""
    from mpi_util import _kill_tree, find_mpiexec, mpi_env
    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec")
    ck = str(tmp_path / "ck.npz")
    proc = subprocess.Popen([mpiexec, "-n", "2", sys.executable, "-m", "mgritnn", *TRAIN,
                             "--data-parallel", "2", "--checkpoint", ck],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(), start_new_session=True)
    try:
        _wait_for_epochs(proc, 2)
        err = _interrupt(proc)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Abort" not in err, err
    ours = err.strip().splitlines()
    assert len(ours) == 1 and ours[0].startswith("mgritnn: interrupted (SIGINT)"), err
    assert repr(ck) in ours[0] and "--resume" in ours[0]
    model, _, _ = load_checkpoint(ck)
    assert model is not None


_SPIN = '''
import argparse, sys, time
from mgritnn import cli
from mgritnn.distributed import get_comm

def spin(args):
    """Rank 0 waits inside MPI (a barrier) while its peer works in Python: the race in which an
    interrupted peer that stops leaves rank 0 stuck in C, killed by the launcher, silent."""
    comm = get_comm()
    comm.Barrier()
    if comm.Get_rank() == 0:
        print("ready", flush=True)
    while True:
        if comm.Get_rank() != 0:
            time.sleep(0.5)
        comm.Barrier()

def build_parser():
    parser = argparse.ArgumentParser(prog="mgritnn")
    parser.set_defaults(func=spin, command="spin")
    return parser

cli.build_parser = build_parser
sys.exit(cli.main([]))
'''


def test_sigint_under_mpiexec_while_rank_0_waits_inside_mpi(tmp_path):
    """Ctrl-C while rank 0 is blocked in an MPI call and rank 1 is in Python: still one line from
    rank 0 and status 130 (rank 1 leaves the signal to rank 0, meets it, and rank 0 acts)."""
    from mpi_util import _kill_tree, find_mpiexec, mpi_env
    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec")
    script = tmp_path / "spin.py"
    script.write_text(_SPIN)
    env = mpi_env()
    proc = subprocess.Popen([mpiexec, "-n", "2", sys.executable, str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        ready = proc.stdout.readline()
        assert ready == "ready\n", ready
        time.sleep(1.2)
        err = _interrupt(proc)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines == ["mgritnn: interrupted (SIGINT)"], err


def test_a_rank_other_than_0_ends_itself_after_the_grace(tmp_path):
    """The watchdog of a rank other than 0: Ctrl-C raises nothing there (the main thread goes on
    waiting), and the rank ends silently with status 130 once the grace has passed, should the
    launcher not end it."""
    script = tmp_path / "rank1.py"
    script.write_text("import threading\nfrom mgritnn import cli\n"
                      "cli._leave_interrupt_to_rank_0(grace=0.5)\nprint('ready', flush=True)\n"
                      "threading.Event().wait()\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline() == "ready\n"
    t0 = time.monotonic()
    err = _interrupt(proc)
    assert proc.returncode == 130 and err == "", err
    assert 0.4 < time.monotonic() - t0 < 60
