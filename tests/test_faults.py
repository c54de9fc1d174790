"""Nothing lost, never a traceback: every fault a user or the machine can cause ends a run with one
line ``mgritnn: error: ...`` and exit status 2 (under MPI too), before the first batch where it can
be known then, and the last checkpoint stays as it was. Each case runs the command line in a
subprocess, on a tiny model and data set."""
import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from mgritnn.cli import main
from mgritnn.io import read_npz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
SMALL = ["--max-batches", "1", "--hidden", "4", "--threads", "1", "--quiet"]
QUICK = ["--epochs", "1", *SMALL]


def run(*args, preexec_fn=None, timeout=120):
    """Run ``python -m mgritnn`` (exit status and both streams)."""
    return subprocess.run([sys.executable, "-m", "mgritnn", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=timeout, preexec_fn=preexec_fn)


def run_main(code, *args, timeout=120):
    """Run ``mgritnn.cli.main(args)`` in a subprocess after the Python statements ``code`` (to
    fake a condition of the machine)."""
    script = f"import sys\n{code}\nfrom mgritnn.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def write_npz(path, N=20, T=8, C=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, X_train=rng.normal(size=(N, T, C)).astype(np.float32),
             y_train=np.arange(N) % classes, X_test=rng.normal(size=(N // 2, T, C)).astype(np.float32),
             y_test=np.arange(N // 2) % classes)
    return str(path)


def error_line(r, *needles):
    """The one error line of a finished run that must have failed with status 2: stderr holds that
    line and otherwise only ``mgritnn: warning:`` lines (no traceback); it contains ``needles``."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mgritnn: error: ")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr
    assert all(line.startswith(("mgritnn: error: ", "mgritnn: warning: ")) for line in lines), r.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def warning_lines(r):
    return [line for line in r.stderr.splitlines() if line.startswith("mgritnn: warning: ")]


def epochs_run(r):
    return sum(line.startswith("epoch ") for line in r.stdout.splitlines())


def temps(directory):
    return sorted(n for n in os.listdir(directory) if ".tmp-" in n or ".probe-" in n)


@pytest.fixture
def data(tmp_path):
    return write_npz(tmp_path / "d.npz")


@pytest.fixture
def first_epoch(tmp_path, data):
    """A checkpoint of one epoch (Adam, lr 0.003, batch 100) and its bytes."""
    ck = tmp_path / "ck" / "ck.npz"
    r = run("train", "--data", data, "--checkpoint", ck, *QUICK)
    assert r.returncode == 0, r.stderr
    return ck, ck.read_bytes()


def _unwritable(tmp_path, how):
    """A directory where no file can be created: below a regular file, or read-only (skips where
    the permissions are not enforced, as for root)."""
    if how == "below-a-file":
        (tmp_path / "afile").write_text("x")
        return tmp_path / "afile" / "sub"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").write_text("x")
    except PermissionError:
        return ro
    (ro / "probe").unlink()
    pytest.skip("this user may write into a read-only directory (root): permissions not enforced")


# ------------------------------------------------------------------------------------------------
# 1. every output path is checked before the first batch
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how, match", [("below-a-file", "is a file, not a directory"),
                                        ("read-only", "Permission denied (EACCES)")])
@pytest.mark.parametrize("flag, name", [("--checkpoint", "ck.npz"), ("--log", "log.jsonl")])
def test_unwritable_outputs_fail_before_the_first_epoch(tmp_path, data, how, match, flag, name):
    where = _unwritable(tmp_path, how)
    try:
        r = run("train", "--data", data, flag, where / name, *SMALL, "--epochs", "50")
    finally:
        if how == "read-only":
            where.chmod(0o755)
    error_line(r, flag, str(where / name), match)
    assert epochs_run(r) == 0


def test_log_that_is_a_directory_is_refused(tmp_path, data):
    r = run("train", "--data", data, "--log", tmp_path, *QUICK)
    error_line(r, "--log", "is a directory", "run.jsonl")


def test_missing_output_directories_are_created(tmp_path, data):
    ck, log = tmp_path / "a" / "b" / "ck.npz", tmp_path / "c" / "log.jsonl"
    r = run("train", "--data", data, "--checkpoint", ck, "--log", log, *QUICK)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert read_npz(ck)[1]["epoch"] == 1 and json.loads(log.read_text())["epoch"] == 1
    assert temps(ck.parent) == [] and temps(log.parent) == []         # the probes are gone


def test_too_little_free_space_fails_before_the_first_epoch(tmp_path, data):
    """The free space a checkpoint needs (from the parameter count) is measured before the run."""
    fake = ("import shutil, collections\n"
            "shutil.disk_usage = lambda p: collections.namedtuple('u', 'total used free')"
            "(10 ** 9, 10 ** 9 - 4096, 4096)")
    r = run_main(fake, "train", "--data", data, "--checkpoint", tmp_path / "ck.npz", *QUICK)
    error_line(r, "--checkpoint", "are free on the file system", "4 KiB", "free disk space")
    assert epochs_run(r) == 0 and not (tmp_path / "ck.npz").exists()


# ------------------------------------------------------------------------------------------------
# 2. --resume of a missing checkpoint
# ------------------------------------------------------------------------------------------------

def test_resume_of_a_missing_checkpoint_is_an_error_unless_asked_to_start(tmp_path, data):
    ck = tmp_path / "ck.npz"
    r = run("train", "--data", data, "--checkpoint", ck, "--resume", *QUICK)
    error_line(r, "--resume", str(ck), "does not exist", "--resume-or-start")
    assert not ck.exists() and epochs_run(r) == 0
    r = run("train", "--data", data, "--checkpoint", ck, "--resume-or-start", *QUICK)
    assert r.returncode == 0 and epochs_run(r) == 1 and "resumed" not in r.stdout, r.stderr
    r = run("train", "--data", data, "--checkpoint", ck, "--resume-or-start", *SMALL,
            "--epochs", "2")
    assert r.returncode == 0 and "resumed from" in r.stdout and epochs_run(r) == 1, r.stderr
    assert read_npz(ck)[1]["epoch"] == 2
    r = run("train", "--data", data, "--resume-or-start", *QUICK)
    error_line(r, "--resume-or-start needs a checkpoint path")


# ------------------------------------------------------------------------------------------------
# 3. resume with other settings
# ------------------------------------------------------------------------------------------------

def test_resume_with_other_settings_warns_once_naming_them(tmp_path, data, first_epoch):
    ck, _ = first_epoch
    more = ["--data", data, "--checkpoint", ck, "--resume", *SMALL]
    r = run("train", *more, "--epochs", "3")              # more epochs only: no warning
    assert r.returncode == 0 and r.stderr == "" and epochs_run(r) == 2, r.stderr
    r = run("train", *more, "--epochs", "4", "--lr", "0.01", "--batch-size", "8", "--clip", "1",
            "--seed", "5")
    assert r.returncode == 0 and epochs_run(r) == 1, r.stderr
    assert r.stderr.count("\n") == 1 and len(warning_lines(r)) == 1, r.stderr
    w = warning_lines(r)[0]
    assert w.startswith("mgritnn: warning: resuming with settings that differ from the checkpoint:")
    items = w.split("differ from the checkpoint: ", 1)[1].split(" (resume with", 1)[0].split(", ")
    assert items == ["batch_size 100 -> 8", "lr 0.003 -> 0.01", "clip None -> 1.0", "seed 0 -> 5"], w
    r = run("train", *more, "--epochs", "5", "--hidden", "6")       # another model: an error
    error_line(r, "was made for the model", "hidden")


def test_resume_with_another_optimizer_starts_its_state_afresh(tmp_path, data, first_epoch):
    ck, _ = first_epoch
    r = run("train", "--data", data, "--checkpoint", ck, "--resume", "--optimizer", "sgd",
            *SMALL, "--epochs", "2")
    assert r.returncode == 0 and epochs_run(r) == 1, r.stderr
    (w,) = warning_lines(r)
    assert "optimizer adam -> sgd" in w and "starts afresh" in w and "bit for bit" in w, w
    arrays, meta = read_npz(ck)
    assert meta["epoch"] == 2 and int(arrays["optim/step"]) == 1      # one SGD step, not two
    assert "optim/momentum_buffer" in arrays and "optim/m" not in arrays


# ------------------------------------------------------------------------------------------------
# 4. OS errors while writing; orphaned temporary files; permissions
# ------------------------------------------------------------------------------------------------

def test_log_on_a_full_disk_exits_2_and_keeps_the_checkpoint(tmp_path, data, first_epoch):
    """/dev/full opens and fails every write with ENOSPC, like a full disk."""
    if not os.path.exists("/dev/full") or not stat.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("no /dev/full on this system")
    ck, before = first_epoch
    r = run("train", "--data", data, "--checkpoint", ck, "--resume", "--log", "/dev/full",
            *SMALL, "--epochs", "2")
    error_line(r, "cannot write the log (--log) '/dev/full'", "ENOSPC", "free disk space")
    assert ck.read_bytes() == before and temps(ck.parent) == []


def _limit_file_size(limit):
    """preexec_fn: files larger than ``limit`` bytes fail with EFBIG (SIGXFSZ ignored), as on a
    full disk."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _need_rlimit_fsize():
    try:
        import resource
        resource.getrlimit(resource.RLIMIT_FSIZE)
        signal.SIGXFSZ
    except (ImportError, AttributeError, OSError, ValueError):
        pytest.skip("RLIMIT_FSIZE / SIGXFSZ are not available on this system")


def test_checkpoint_on_a_full_disk_exits_2_and_keeps_the_previous(tmp_path, data, first_epoch):
    """The disk fills during the checkpoint write of epoch 2 (a file size limit below the
    checkpoint's size makes every larger write fail with EFBIG): one line, exit 2; the checkpoint
    of epoch 1 is byte for byte as it was and the temporary file is gone."""
    _need_rlimit_fsize()
    ck, before = first_epoch
    r = run("train", "--data", data, "--checkpoint", ck, "--resume", *SMALL, "--epochs", "2",
            preexec_fn=_limit_file_size(len(before) // 2))
    error_line(r, "cannot write the checkpoint (--checkpoint)", str(ck), "File too large (EFBIG)",
               "ulimit -f")
    assert epochs_run(r) == 1                            # epoch 2 ran; its checkpoint failed
    assert ck.read_bytes() == before and temps(ck.parent) == []
    assert main(["train", "--data", data, "--checkpoint", str(ck), "--resume", *SMALL,
                 "--epochs", "2"]) == 0                  # and the run continues from it


def test_predictions_that_cannot_be_written_exit_2(tmp_path, data, first_epoch):
    ck, _ = first_epoch
    _need_rlimit_fsize()
    out = tmp_path / "pred.npz"
    r = run("predict", "--checkpoint", ck, "--out", out, preexec_fn=_limit_file_size(256))
    error_line(r, "cannot write the predictions", str(out), "EFBIG")
    assert not out.exists() and temps(tmp_path) == []
    (tmp_path / "afile").write_text("x")
    r = run("predict", "--checkpoint", ck, "--out", tmp_path / "afile" / "pred.npz")
    error_line(r, "cannot write the predictions", "is a file, not a directory")
    os.mkfifo(tmp_path / "fifo")
    r = run("predict", "--checkpoint", ck, "--out", tmp_path / "fifo")
    error_line(r, "is not a regular file")
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)


def test_orphaned_temporary_files_of_the_checkpoint_are_removed(tmp_path, data, first_epoch):
    """A write killed with SIGKILL leaves its temporary file: the next run removes those of its
    checkpoint, and only those."""
    ck, _ = first_epoch
    d = ck.parent
    orphans = [d / ".ck.npz.tmp-abc_12de.npz", d / ".ck.npz.tmp-z9y8x7w6.npz"]
    kept = [d / ".other.npz.tmp-abc_12de.npz",      # another checkpoint's
            d / ".tmp-abc_12de.npz",                # an old-style name: whose, is unknown
            d / ".ck.npz.tmp-notes.txt",            # not our suffix
            d / "ck.npz.tmp-abc_12de.npz"]          # not hidden: not ours
    for p in orphans + kept:
        p.write_bytes(b"PK\x03\x04 partial")
    r = run("train", "--data", data, "--checkpoint", ck, "--resume", *SMALL, "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert "removed 2 temporary file(s)" in r.stdout
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in kept)


def test_outputs_are_created_with_the_umask(tmp_path, data):
    """New files get 0666 & ~umask (not mkstemp's 0600); a replaced checkpoint keeps its mode."""
    ck, log, pred = tmp_path / "ck.npz", tmp_path / "log.jsonl", tmp_path / "pred.npz"

    def umask027():
        os.umask(0o027)
    r = subprocess.run([sys.executable, "-m", "mgritnn", "train", "--data", data, "--checkpoint",
                        str(ck), "--log", str(log), *QUICK], capture_output=True, text=True,
                       env=ENV, preexec_fn=umask027, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "mgritnn", "predict", "--checkpoint", str(ck),
                        "--out", str(pred)], capture_output=True, text=True, env=ENV,
                       preexec_fn=umask027, timeout=120)
    assert r.returncode == 0, r.stderr
    for p in (ck, log, pred):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o640, (p, oct(os.stat(p).st_mode))
    ck.chmod(0o604)
    r = run("train", "--data", data, "--checkpoint", ck, "--resume", *SMALL, "--epochs", "2")
    assert r.returncode == 0 and read_npz(ck)[1]["epoch"] == 2, r.stderr
    assert stat.S_IMODE(os.stat(ck).st_mode) == 0o604


# ------------------------------------------------------------------------------------------------
# 5. divergence in the last update
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_divergence_in_the_last_update_is_not_saved(tmp_path, data, first_epoch, optimizer):
    """At lr 1e39 the first update overflows float32 parameters to inf while the loss and
    gradient that led to it are finite; it is the last update of the run. Nothing is saved, the
    checkpoint of epoch 1 stays, the run ends with one line and status 2."""
    ck, before = first_epoch
    r = run("train", "--data", data, "--checkpoint", ck, "--resume", "--lr", "1e39",
            "--optimizer", optimizer, *SMALL, "--epochs", "2")
    error_line(r, "parameters became NaN/inf", "epoch 2, batch 1", "--lr", "keeps epoch 1")
    assert ck.read_bytes() == before
    fresh = tmp_path / "fresh.npz"
    r = run("train", "--data", data, "--checkpoint", fresh, "--lr", "1e39", *QUICK)
    error_line(r, "parameters became NaN/inf", "no checkpoint was written")
    assert not fresh.exists()


# ------------------------------------------------------------------------------------------------
# 6. under mpiexec
# ------------------------------------------------------------------------------------------------

def _mpi_error_line(r, *needles, ranks=1):
    """mpiexec ended with status 2 and the ranks printed one error line (MPICH adds its own
    'Abort(2) ...' line), no traceback. ``ranks``: how many ranks raised the same error; rank 0
    reports it and the others wait ABORT_GRACE_S first, so it is normally printed once, but on a
    busy machine another rank may get there too (then with the same message)."""
    errors = [line for line in r.stderr.splitlines() if line.startswith("mgritnn: error: ")]
    assert r.returncode == 2 and 1 <= len(errors) <= ranks and "Traceback" not in r.output, \
        r.describe()
    assert len({e.split("] ", 1)[-1] for e in errors}) == 1, r.describe()
    for n in needles:
        assert n in errors[0], r.describe()
    return errors[0]


def test_unwritable_log_under_mpi_ends_every_rank_with_status_2(tmp_path, data):
    """Outputs are checked by rank 0 alone: its error aborts the other ranks, blocked in the
    run's first collective, with status 2."""
    from mpi_util import run_mpi
    (tmp_path / "afile").write_text("x")
    log = tmp_path / "afile" / "log.jsonl"
    r = run_mpi(2, "cli.py", "train", "--data", data, "--data-parallel", "2", "--log", log,
                *QUICK, timeout=120)
    _mpi_error_line(r, "[rank 0] --log", "is a file, not a directory")
    assert "epoch " not in r.stdout


def test_errors_under_mpi_are_one_line_with_status_2(tmp_path, data):
    """An error raised on every rank is reported once (by rank 0); an operating-system error on
    one rank only (here rank 1 cannot read the data) is its line and status 2, not a traceback."""
    from mpi_util import run_mpi
    r = run_mpi(2, "cli.py", "train", "--data", data, "--data-parallel", "2", "--checkpoint",
                tmp_path / "none.npz", "--resume", *QUICK, timeout=120)
    _mpi_error_line(r, "--resume", "does not exist", ranks=2)
    r = run_mpi(2, "oserror_on_one_rank.py", tmp_path / "secret.npz", "train", "--data", data,
                "--data-parallel", "2", *QUICK, timeout=120)
    _mpi_error_line(r, "[rank 1] cannot access", "secret.npz", f"({errno.errorcode[errno.EACCES]})")


# ------------------------------------------------------------------------------------------------
# 7. killed at random moments
# ------------------------------------------------------------------------------------------------

def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_result(tmp_path, data):
    """SIGKILL a run (1-batch epochs, a checkpoint written after each) five times, each at a
    seeded random moment inside a checkpoint write (once a temporary file is there: on a disk
    that fsyncs, nearly every kill leaves it behind): after each kill the checkpoint loads;
    ``--resume-or-start`` then finishes the run, leaves no temporary file, and ends bit for bit
    where the uninterrupted run ends."""
    epochs = 400     # a missed write window (2 s) must not let a run finish all epochs
    common = ["train", "--data", data, *SMALL, "--epochs", str(epochs), "--resume-or-start"]
    ref, ck = tmp_path / "ref" / "ck.npz", tmp_path / "killed" / "ck.npz"
    r = run(*common, "--checkpoint", ref)
    assert r.returncode == 0, r.stderr
    rng = random.Random(20261203)
    for _ in range(5):
        seen = os.stat(ck).st_mtime_ns if ck.exists() else None
        proc = subprocess.Popen([sys.executable, "-m", "mgritnn", *common, "--checkpoint", str(ck)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        try:
            deadline = time.monotonic() + 60
            while (os.stat(ck).st_mtime_ns if ck.exists() else None) == seen:   # training now
                assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.1))
            deadline = time.monotonic() + 2
            while not temps(ck.parent) and time.monotonic() < deadline:         # writing now
                time.sleep(0.0002)
            time.sleep(rng.uniform(0.0, 0.003))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert main(["eval", "--checkpoint", str(ck)]) == 0
        assert read_npz(ck)[1]["epoch"] < epochs
    r = run(*common, "--checkpoint", ck)
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr
    assert temps(ck.parent) == []
    (a, ma), (b, mb) = read_npz(ref), read_npz(ck)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert ma["epoch"] == mb["epoch"] == epochs and ma["rng"] == mb["rng"]
    assert [h["loss"] for h in ma["history"]] == [h["loss"] for h in mb["history"]]
