"""Bad input never ends in a traceback: the class set and its labels, files that are not .npz
archives, checkpoints of another class count, batches that leave a data group empty, MGRIT lists
longer than the levels, and models or batches that cannot fit in memory. Each class of problem is
checked through the command line (``python -m mgritnn`` in a subprocess: exit status 2 and one
line ``mgritnn: error: ...`` naming the problem and the fix) and, where natural, at the unit."""
import os
import resource
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from mgritnn import datasets
from mgritnn.cli import main
from mgritnn.datasets import DataWarning, load, load_npz, resolve_classes
from mgritnn.errors import CheckpointError, ConfigError, DataError, MgritnnWarning
from mgritnn.io import read_npz
from mgritnn.memory import (available_memory, check_memory, check_training_memory,
                            memory_estimate, odenet_memory_estimate)
from mgritnn.model import GRUClassifier
from mgritnn.solvers import MGRITConfig
from mpi_util import run_mpi

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
QUICK = ["--epochs", "1", "--max-batches", "1", "--hidden", "4", "--quiet"]


def mgritnn(*args, limit_memory=None):
    """``python -m mgritnn args`` in a subprocess; ``limit_memory``: its address-space limit
    (bytes, RLIMIT_AS), so that a large allocation fails with a MemoryError."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_memory, limit_memory))
    return subprocess.run([sys.executable, "-m", "mgritnn", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=300, cwd=REPO,
                          preexec_fn=limit if limit_memory else None)


def error_line(r, *fragments):
    """The one ``mgritnn: error:`` line of a run that must have failed with status 2 and no
    traceback; every fragment must be in it."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("mgritnn: error: ")]
    others = [line for line in r.stderr.splitlines()
              if line.strip() and not line.startswith(("mgritnn: error: ", "mgritnn: warning: "))]
    assert len(errors) == 1 and not others, r.stderr
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


def warning_lines(r):
    return [line for line in r.stderr.splitlines() if line.startswith("mgritnn: warning: ")]


def write(path, y_train, y_test, T=6, C=2, seed=0, **extra):
    """A small sequence data set with the given labels, as an .npz archive; returns its path."""
    rng = np.random.default_rng(seed)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    np.savez(path, X_train=rng.normal(size=(len(y_train), T, C)).astype(np.float32),
             y_train=y_train, X_test=rng.normal(size=(len(y_test), T, C)).astype(np.float32),
             y_test=y_test, **extra)
    return str(path)


def labels(n, classes, start=0):
    return np.arange(n) % classes + start


# --------------------------------------------------------------------------------------------
# 1, 2. The class set and the labels
# --------------------------------------------------------------------------------------------

BAD_LABELS = [
    # (y_train, y_test, extra arrays, CLI flags, fragments of the one error line)
    (labels(20, 3, 1), labels(10, 3, 1), {}, [],
     ["1-based", "subtract 1", "--num-classes 4"]),
    (labels(20, 2) * 50, labels(10, 2) * 50, {}, [],
     ["1..49 never appear", "51", "np.unique", "--num-classes 51"]),
    (np.r_[labels(19, 3), 7], labels(10, 3), {}, [],
     ["3..6 never appear", "largest label 7", "--num-classes 8"]),
    (labels(20, 3), labels(10, 4), {}, [],
     ["class 3 appears in y_test", "never in y_train", "training split"]),
    (np.zeros(20, int), np.zeros(10, int), {}, [], ["only one class", "at least 2"]),
    (labels(20, 3) - 1, labels(10, 3), {}, [], ["negative label -1", "0-based"]),
    (labels(20, 3), labels(10, 3), {}, ["--num-classes", "2"],
     ["labels in [0, 2]", "--num-classes is 2", "--num-classes 3"]),
    (labels(20, 3, 1), labels(10, 3, 1), {}, ["--num-classes", "3"],
     ["--num-classes is 3", "1-based", "subtract 1"]),
    (labels(20, 3), labels(10, 3), dict(class_names=np.array(["a", "b", "c"])),
     ["--num-classes", "5"], ["--num-classes 5 contradicts the 3 class_names"]),
    (labels(20, 3), labels(10, 3), {}, ["--num-classes", "1"], ["--num-classes", ">= 2"]),
    # 2. class_names shorter than the labels: the message blames class_names
    (labels(20, 5), labels(10, 5), dict(class_names=np.array(["a", "b", "c"])), [],
     ["class_names has only 3 entries", "labels in [0, 4]", "one class name per class"]),
    (labels(20, 3, 1), labels(10, 3, 1), dict(class_names=np.array(["a", "b", "c"])), [],
     ["class_names has only 3 entries", "1-based", "subtract 1"]),
]


@pytest.mark.parametrize("y_train, y_test, extra, flags, fragments", BAD_LABELS)
def test_bad_labels_exit_2_naming_the_fix(tmp_path, y_train, y_test, extra, flags, fragments):
    """Each way labels can miss the class set stops before training with one line."""
    data = write(tmp_path / "d.npz", y_train, y_test, **extra)
    error_line(mgritnn("train", "--data", data, *flags, *QUICK), *fragments)


def test_declared_classes_without_training_samples_warn_and_train(tmp_path):
    """A class declared by --num-classes or class_names but absent from the training split is
    one warning line; the run goes on with the declared number of outputs."""
    data = write(tmp_path / "d.npz", labels(20, 3), labels(10, 3))
    ck = tmp_path / "ck.npz"
    r = mgritnn("train", "--data", data, "--num-classes", "4", "--checkpoint", ck, *QUICK)
    assert r.returncode == 0, r.stderr
    (line,) = warning_lines(r)
    assert "1 of the 4 classes (from --num-classes) has no training samples: class 3" in line
    _, meta = read_npz(ck)
    assert meta["model"]["num_classes"] == 4 and meta["train"]["num_classes"] == 4
    names = np.array(["a", "b", "c", "d"])
    data = write(tmp_path / "e.npz", labels(20, 3), labels(10, 4), class_names=names)
    r = mgritnn("train", "--data", data, *QUICK)
    assert r.returncode == 0, r.stderr
    (line,) = warning_lines(r)
    assert "class 3 ('d')" in line and "2 test sample(s)" in line and "class_names" in line


def test_resolve_classes_sources_and_results():
    """class_names, then num_classes, then model_classes, then the labels decide the class set."""
    y = labels(6, 3)
    assert resolve_classes(y, y) == (3, ("0", "1", "2"))
    assert resolve_classes(y, y, class_names=["a", "b", "c"]) == (3, ("a", "b", "c"))
    assert resolve_classes(y, y, class_names=["a", "b", "c"], num_classes=3)[0] == 3
    assert resolve_classes(y, y, model_classes=5) == (5, ("0", "1", "2", "3", "4"))
    assert resolve_classes(y, y, class_names=["a", "b", "c"], model_classes=5)[0] == 3
    with pytest.warns(DataWarning, match=r"2 of the 5 classes .* classes 3\.\.4"):
        assert resolve_classes(y, y, num_classes=5)[0] == 5
    assert issubclass(DataWarning, MgritnnWarning)


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(y_train=[1, 2, 3], y_test=[1, 2]), DataError, "1-based.*subtract 1.*--num-classes 4"),
    (dict(y_train=[0, 2, 0], y_test=[2]), DataError, "class 1 never appears.*--num-classes 3"),
    (dict(y_train=[0, 1, 10**12], y_test=[0]), DataError, r"2\.\.999999999999 never appear"),
    (dict(y_train=[0, 1], y_test=[0, 2]), DataError, "class 2 appears in y_test"),
    (dict(y_train=[0, 0], y_test=[0]), DataError, "only one class"),
    (dict(y_train=[0, 3], y_test=[0], num_classes=3), DataError, "--num-classes is 3"),
    (dict(y_train=[0, 1], y_test=[0, 3], class_names=["a", "b", "c"]), DataError,
     r"y_test has labels in \[0, 3\] but class_names has only 3 entries"),
    (dict(y_train=[0, 1], y_test=[0, 1], class_names=["a"]), DataError, "at least 2 classes"),
    (dict(y_train=[0, 1], y_test=[0, 1], num_classes=True), ConfigError, "--num-classes"),
    (dict(y_train=[0, 1], y_test=[0, 1], num_classes=2.0), ConfigError, "--num-classes"),
    (dict(y_train=[0, 4], y_test=[0], model_classes=3), DataError,
     r"\(5 classes\) but the model has 3 classes"),
    (dict(y_train=[1, 3], y_test=[2], model_classes=3), DataError, "1-based.*subtract 1"),
    (dict(y_train=[0, 1], y_test=[0], class_names=list("abcd"), model_classes=3), DataError,
     "has 4 classes .*class_names.* but the model has 3"),
])
def test_resolve_classes_errors(kwargs, error, pattern):
    kwargs = dict(kwargs)
    y_train, y_test = np.array(kwargs.pop("y_train")), np.array(kwargs.pop("y_test"))
    with pytest.raises(error, match=pattern):
        resolve_classes(y_train, y_test, **kwargs)


def test_model_classes_never_warn_about_absent_classes():
    """Evaluation data may lack classes (a subset): no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_classes(np.array([0, 0]), np.array([1]), model_classes=4)[0] == 4


def test_num_classes_reaches_every_loader(tmp_path):
    """load(): num_classes for an .npz without class_names, the generated default set (that many
    classes) and a UCI HAR directory (fixed at 6 classes: anything else contradicts it)."""
    path = write(tmp_path / "d.npz", labels(8, 2), labels(4, 2))
    with pytest.warns(DataWarning):
        assert load(path, num_classes=3).class_names == ("0", "1", "2")
    ds = load("default", seq_len=8, num_classes=6)
    assert ds.num_classes == 6 and set(np.unique(ds.y_train)) == set(range(6))
    with pytest.raises(ConfigError, match="--num-classes"):
        load("default", seq_len=8, num_classes=1)
    with pytest.raises(DataError, match="default data set has 4 classes but the model has 3"):
        load("default", seq_len=8, model_classes=3)
    root = tmp_path / "UCI HAR Dataset"
    for split, n in (("train", 6), ("test", 2)):
        (root / split / "Inertial Signals").mkdir(parents=True)
        for ch in datasets.UCI_HAR_CHANNELS:
            np.savetxt(root / split / "Inertial Signals" / f"{ch}_{split}.txt", np.zeros((n, 4)))
        np.savetxt(root / split / f"y_{split}.txt", np.arange(n) % 6 + 1, fmt="%d")
    assert load(root).num_classes == 6
    with pytest.raises(ConfigError, match="--num-classes 7 contradicts the 6 class_names"):
        load(root, num_classes=7)


def test_shared_data_with_num_classes(shared_data):
    """The shared sets store class_names: a matching --num-classes is accepted, another one is
    named as contradicting them."""
    path = shared_data / "japanese_vowels.npz"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    assert load_npz(path, num_classes=9).num_classes == 9
    with pytest.raises(ConfigError, match="--num-classes 10 contradicts the 9 class_names"):
        load_npz(path, num_classes=10)


# --------------------------------------------------------------------------------------------
# 3. Files that are not .npz archives
# --------------------------------------------------------------------------------------------

def _corrupt_member(path, tmp_path, compressed):
    """An archive with every key whose X_train member is damaged (CRC, or the deflate stream)."""
    good = tmp_path / "good.npz"
    save = np.savez_compressed if compressed else np.savez
    save(good, X_train=np.arange(4000, dtype=np.float32).reshape(100, 20, 2),
         y_train=labels(100, 2), X_test=np.zeros((4, 20, 2), np.float32), y_test=labels(4, 2))
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("X_train.npy")
    raw = bytearray(good.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("make, pattern", [
    (lambda p, t: p.write_bytes(np.random.default_rng(1).bytes(500)) and p,
     "is not a .npz archive.*does not start like a zip archive.*np.savez"),
    (lambda p, t: p.write_bytes(b"") or p, "is not a .npz archive.*is empty"),
    (lambda p, t: p.write_text("X_train,y_train\n1,2\n") and p, "is not a .npz archive"),
    (lambda p, t: np.save(open(p, "wb"), np.zeros(3)) or p, r"single array \(.npy\)"),
    (lambda p, t: p.write_bytes(_corrupt_member(t / "c.npz", t, False).read_bytes()[:300]) and p,
     "corrupt .npz archive.*np.savez"),
    (lambda p, t: _corrupt_member(p, t, False), "corrupt .npz archive.*X_train"),
    (lambda p, t: _corrupt_member(p, t, True), "corrupt .npz archive.*X_train"),
])
def test_not_an_npz_archive(tmp_path, make, pattern):
    """Random bytes, an empty file, text, a .npy, a truncated archive and damaged members: a
    DataError that says what the file is and how to make one, never advising allow_pickle."""
    path = tmp_path / "d.npz"
    make(path, tmp_path)
    with pytest.raises(DataError, match=pattern) as info:
        load_npz(path)
    assert "allow_pickle" not in str(info.value)
    # the same file as a checkpoint: the same checks (a .npy and a damaged deflate stream were
    # tracebacks there), with the checkpoint's fix
    with pytest.raises(CheckpointError, match=pattern.split(".*")[0]) as info:
        read_npz(path)
    assert "allow_pickle" not in str(info.value) and "GRUClassifier.save" in str(info.value)


def test_object_arrays_are_refused_without_advising_pickle(tmp_path):
    path = tmp_path / "obj.npz"
    write(path, labels(6, 2), labels(2, 2), class_names=np.array(["a", 1], dtype=object))
    with pytest.raises(DataError, match="'class_names' is an object array") as info:
        load_npz(path)
    assert "allow_pickle" not in str(info.value)
    with pytest.raises(CheckpointError, match="'class_names' is an object array") as info:
        read_npz(path)
    assert "allow_pickle" not in str(info.value)


def test_random_bytes_through_the_cli(tmp_path):
    """As --data and as --checkpoint: one line that does not advise allow_pickle."""
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(2).bytes(1000))
    line = error_line(mgritnn("train", "--data", junk, *QUICK), "not a .npz archive",
                      "np.savez(path, X_train=..., y_train=..., X_test=..., y_test=...)")
    assert "pickle" not in line
    line = error_line(mgritnn("eval", "--checkpoint", junk), "not a readable .npz checkpoint")
    assert "allow_pickle" not in line


# --------------------------------------------------------------------------------------------
# 4. eval / predict: the model's class count, --seq-len and --data given explicitly
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 3-class checkpoint trained on a 2-channel file (in this process: fast)."""
    d = tmp_path_factory.mktemp("ck")
    data = write(d / "three.npz", labels(20, 3), labels(10, 3))
    ck = d / "ck.npz"
    assert main(["train", "--data", data, "--checkpoint", str(ck), *QUICK]) == 0
    return ck, d


@pytest.mark.parametrize("cmd", ["eval", "predict"])
def test_eval_on_data_with_more_classes_than_the_model(checkpoint, cmd):
    ck, d = checkpoint
    out = ["--out", d / f"p-{cmd}.npz"] if cmd == "predict" else []
    five = write(d / "five.npz", labels(20, 5), labels(10, 5))
    error_line(mgritnn(cmd, "--checkpoint", ck, "--data", five, *out),
               "(5 classes) but the model has 3 classes", "labelled with the model's classes 0..2")
    named = write(d / "named.npz", labels(20, 4), labels(10, 4), class_names=np.array(list("abcd")))
    error_line(mgritnn(cmd, "--checkpoint", ck, "--data", named, *out),
               "has 4 classes", "the model has 3", "train a model on this data")
    error_line(mgritnn(cmd, "--checkpoint", ck, "--data", "default", *out),
               "default data set has 4 classes but the model has 3")
    assert not (d / f"p-{cmd}.npz").exists()


@pytest.mark.parametrize("cmd", ["eval", "predict"])
def test_eval_rejects_explicit_bad_values(checkpoint, cmd):
    """--seq-len 0 or negative and an empty --data are errors, not the checkpoint's values."""
    ck, d = checkpoint
    out = ["--out", d / f"q-{cmd}.npz"] if cmd == "predict" else []
    for bad in ("0", "-2"):
        error_line(mgritnn(cmd, "--checkpoint", ck, "--seq-len", bad, *out),
                   f"--seq-len {bad}", "at least 1")
    error_line(mgritnn(cmd, "--checkpoint", ck, "--data=", *out), "--data is empty")
    three_channels = d / "c3.npz"
    np.savez(three_channels, X_train=np.zeros((6, 5, 3), np.float32), y_train=labels(6, 3),
             X_test=np.zeros((3, 5, 3), np.float32), y_test=labels(3, 3))
    error_line(mgritnn(cmd, "--checkpoint", ck, "--data", three_channels, *out),
               "3 channels", "model takes 2")


def test_eval_with_fewer_classes_and_a_subset_works(checkpoint, capsys):
    """Data whose labels are a subset of the model's classes (no class_names) evaluates, with
    neither an error nor a warning; --seq-len given explicitly is used."""
    ck, d = checkpoint
    subset = write(d / "subset.npz", labels(6, 2), np.zeros(4, int))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["eval", "--checkpoint", str(ck), "--data", subset, "--seq-len", "3"]) == 0
    assert "test: loss" in capsys.readouterr().out
    pred = d / "pred.npz"
    assert main(["predict", "--checkpoint", str(ck), "--data", subset, "--out", str(pred)]) == 0
    with np.load(pred) as z:
        assert z["logits"].shape == (4, 3)


# --------------------------------------------------------------------------------------------
# 5. A batch that would leave a data group without samples
# --------------------------------------------------------------------------------------------

def test_last_batch_smaller_than_the_data_groups(tmp_path):
    """60 samples, --batch-size 59 on 2 data groups: the last batch has 1 sample; the run stops
    before training and names a batch size that works; fewer samples than data groups too."""
    data = write(tmp_path / "d.npz", labels(60, 3), labels(6, 3))
    r = run_mpi(2, "cli.py", "train", "--data", data, "--data-parallel", "2", "--batch-size", "59",
                "--epochs", "1", "--hidden", "4", "--quiet", timeout=120)
    assert r.returncode != 0, r.describe()
    assert "last batch of every epoch would have 1 sample(s)" in r.stderr, r.describe()
    assert "use --batch-size 58" in r.stderr and "is empty" not in r.output
    assert "Traceback" not in r.output
    tiny = write(tmp_path / "t.npz", [0], [0, 1])
    r = run_mpi(2, "cli.py", "train", "--data", tiny, "--num-classes", "2", "--data-parallel",
                "2", "--batch-size", "2", "--epochs", "1", "--hidden", "4", "--quiet",
                timeout=120)
    assert r.returncode != 0 and "training set has 1 samples, fewer than --data-parallel 2" in \
        r.stderr, r.describe()


# --------------------------------------------------------------------------------------------
# 6. MGRIT lists longer than the levels
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, pattern", [
    (dict(levels=3, cf=(2, 2, 2)), r"cf has 3 entries \(2,2,2\) but --levels 3 has 2 level "
                                   r"transition.*at most 2 entries, or --levels 4"),
    (dict(levels=1, cf=(2,)), "cf has 1 entry.*--levels 1 has 0.*a single value"),
    (dict(levels=2, relax=("F", "FCF", "F")), "relax has 3 entries.*--levels 2 has 2 level"),
    (dict(levels=None, cf=(2,) * 12), "cf has 12 entries.*max_levels 12.*at most 11"),
    (dict(levels=None, cf=(2, 2), relax=("F",) * 4),
     r"relax has 4 entries.*stop at 3 levels \(max_levels 12 and the 2 cf entries\)"),
    (dict(levels=None, max_levels=4, relax=("F",) * 5), "relax has 5 entries.*stop at 4 levels"),
    (dict(cf=()), "cf is an empty list"),
    (dict(relax=[]), "relax is an empty list"),
])
def test_mgrit_lists_longer_than_the_levels(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        MGRITConfig(**kwargs)


def test_mgrit_lists_that_fit():
    """One relax per level (the coarsest's included), one cf per transition, shorter lists, and
    automatic levels bounded by the cf list."""
    MGRITConfig(levels=3, cf=(4, 2), relax=("F", "FCF", "F"))
    MGRITConfig(levels=3, cf=(4,), relax=("F",))
    MGRITConfig(levels=2, relax=("F", "FCF"))
    cfg = MGRITConfig(levels=None, cf=(2, 2), relax=("F", "FCF", "F"))
    assert cfg.cfs(4) == [2]                 # a short sequence uses the first entries only


@pytest.mark.parametrize("flags, fragment", [
    (["--cf", "2,2,2"], "cf has 3 entries (2,2,2) but --levels 3 has 2 level transition(s)"),
    (["--levels", "2", "--relax", "F,FCF,F"], "relax has 3 entries (F,FCF,F) but --levels 2"),
    (["--levels", "0", "--cf", ",".join(["2"] * 12)], "automatic levels stop at max_levels 12"),
])
def test_mgrit_lists_through_the_cli(tmp_path, flags, fragment):
    error_line(mgritnn("train", "--solver", "mgrit", *flags, "--seq-len", "16", *QUICK), fragment,
               "the extra entries would be ignored")


# --------------------------------------------------------------------------------------------
# 7. Memory
# --------------------------------------------------------------------------------------------

def test_memory_estimate_counts_the_parameters_exactly():
    m = GRUClassifier(3, 7, 4, num_layers=2)
    e = memory_estimate(3, 7, 4, num_layers=2, dtype="float64", batch=5, seq_len=11,
                        optimizer="adam")
    assert e["parameters"] == m.flat.size
    assert e["initialization"] == m.flat.size * (8 + 8)
    P, item = m.flat.size, 8
    weights = sum(w.size for k, w in m.params.items() if k.startswith("weight"))
    assert e["model"] == P * item * 4 + weights * item
    assert e["batch"] == 5 * 11 * item * (3 * 7 + 5 * 7 * 2 + 3 * 7)
    assert e["total"] == e["model"] + e["batch"]
    small = memory_estimate(3, 7, 4, optimizer="sgd")
    assert small["total"] == small["initialization"]         # no batch: building the model


def test_check_memory_names_the_estimate_and_the_fix():
    """--hidden 60000 (the issue's example) on a 24 GB machine: the parameters dominate; a long
    batch: the batch does; below the threshold or with an unknown amount nothing is checked."""
    with pytest.raises(ConfigError, match=r"at least 2\d\d\.\d GB.*10,80\d,\d{3},\d{3} parameters"
                                          r".*only 24\.0 GB is available: use a smaller --hidden"):
        check_training_memory(3, 60000, 4, batch=100, seq_len=128, available=24 * 10 ** 9)
    with pytest.raises(ConfigError, match="one batch: .*use a smaller --batch-size or --seq-len"):
        check_training_memory(3, 256, 4, batch=4096, seq_len=100_000, available=24 * 10 ** 9)
    check_training_memory(3, 60000, 4, batch=100, seq_len=128, available=10 ** 15)
    check_memory(memory_estimate(3, 32, 4, batch=100, seq_len=128, optimizer="adam"),
                 available=1)                                  # tiny: not checked at all


def test_the_odenet_has_its_own_estimate_and_names_its_own_flags():
    """The ODENet's parameters (every rank holds all) and its states (per row: this rank's layers'
    points and activation derivatives): the fix names --width/--depth or --batch-size, never the
    GRU's flags."""
    e = odenet_memory_estimate(1000, 10, "float64", batch=4, depth=8, optimizer="adam")
    assert e["model"] == 1000 * 8 * 4 and e["batch"] == 4 * 8 * 10 * (9 + 8)
    assert e["total"] == max(e["initialization"], e["model"] + e["batch"])
    with pytest.raises(ConfigError, match=r"\d+,\d{3},\d{3},\d{3} parameters.*use a smaller "
                                          r"--width or --depth$"):
        check_memory(odenet_memory_estimate(10 ** 10, 10 ** 5, "float32", batch=10, depth=10,
                                            optimizer="adam"), available=24 * 10 ** 9)
    with pytest.raises(ConfigError, match=r"one batch: .*use a smaller --batch-size \(or "
                                          r"--width, --depth\)$"):
        check_memory(odenet_memory_estimate(10 ** 5, 1000, "float64", batch=10 ** 5, depth=10 ** 4,
                                            optimizer="adam"), available=24 * 10 ** 9)


def test_an_odenet_too_big_for_this_machine_is_refused_through_the_cli():
    if available_memory() is None:
        pytest.skip("available memory unknown here (/proc/meminfo): nothing is checked")
    line = error_line(mgritnn("train", "--model", "odenet", "--data", "peaks", "--width",
                              "20000", "--depth", "64", "--epochs", "1"),
                      "not enough memory", "use a smaller --width or --depth")
    assert "--hidden" not in line


def test_models_and_batches_that_cannot_fit_are_refused_before_allocating():
    available = available_memory()
    if available is None:
        pytest.skip("available memory unknown here (/proc/meminfo): nothing is checked")
    with pytest.raises(ConfigError, match="not enough memory.*use a smaller --hidden"):
        GRUClassifier(3, 10 ** 7, 4)
    m = GRUClassifier(1, 64, 2)
    batch, steps = 4096, 1 + available // (4 * 4096 * (3 * 64 + 5 * 64 + 3 * 64))
    X = np.broadcast_to(np.zeros((1, 1, 1), np.float32), (batch, steps, 1))
    if X.size * 4 > available // 8:
        pytest.skip("the input alone would take an eighth of the memory here")
    with pytest.raises(ConfigError, match="one batch: .*--batch-size or --seq-len"):
        m.loss_and_grad(X, np.zeros(batch, int))


def test_huge_hidden_through_the_cli():
    """--hidden 2000000: refused in one line naming the estimate and the fix, without trying."""
    if available_memory() is None:
        pytest.skip("available memory unknown here (/proc/meminfo): nothing is checked")
    error_line(mgritnn("train", "--hidden", "2000000", "--epochs", "1", "--seq-len", "8"),
               "not enough memory", "TB", "use a smaller --hidden")


def test_memory_error_is_one_line(tmp_path):
    """A MemoryError the estimates did not foresee (here: a 3 GiB address space, so NumPy cannot
    allocate the 3.2 GiB the initialization draws) is one line with NumPy's size and the fix,
    status 2."""
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS limits the address space as needed on Linux only")
    available = available_memory()
    if available is not None and available < 12 * 10 ** 9:
        pytest.skip("under 12 GB available: the up-front estimate would refuse the run first")
    data = write(tmp_path / "d.npz", labels(20, 3), labels(10, 3))
    line = error_line(mgritnn("train", "--data", data, "--hidden", "12000", "--epochs", "1",
                              "--max-batches", "1", "--quiet", limit_memory=3 * 2 ** 30),
                      "out of memory", "--hidden")
    assert "Unable to allocate" in line


def test_memory_error_anywhere_in_a_command_is_one_line():
    """main() turns a MemoryError raised by any command into the one line (status 2)."""
    code = ("import sys\nimport mgritnn.cli as cli\n"
            "def boom(a):\n    raise MemoryError('Unable to allocate 1.00 TiB for an array')\n"
            "cli.cmd_info = boom\nsys.exit(cli.main(['info']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                       timeout=120, cwd=REPO)
    error_line(r, "out of memory (Unable to allocate 1.00 TiB for an array)",
               "use a smaller --hidden")
