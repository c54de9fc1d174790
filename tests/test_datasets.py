"""Tests of mgritnn.datasets: the default task, the loaders, validation, sequence lengths and
standardisation."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import save_npz
from mgritnn import datasets
from mgritnn.datasets import DataWarning, Dataset, Standardizer, fix_length, load, load_npz
from mgritnn.datasets import load_uci_har_dir, make_oscillations, pad_front, real_steps, validate
from mgritnn.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def small_dataset(n=6, m=4, t=5, c=2, k=3, seed=0):
    """A valid raw Dataset (float64 X, int labels) to corrupt in the validate tests."""
    rng = np.random.default_rng(seed)
    return Dataset(rng.standard_normal((n, t, c)), np.arange(n) % k,
                   rng.standard_normal((m, t, c)), np.arange(m) % k, k, "small",
                   tuple(f"c{i}" for i in range(k)))


# --------------------------------------------------------------------------------------------
# make_oscillations
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def osc():
    return make_oscillations()


def test_oscillations_shapes_and_dtypes(osc):
    assert osc.X_train.shape == (2000, 128, 3) and osc.X_train.dtype == np.float32
    assert osc.X_test.shape == (500, 128, 3) and osc.X_test.dtype == np.float32
    assert osc.y_train.shape == (2000,) and osc.y_train.dtype == np.int64
    assert osc.y_test.shape == (500,) and osc.y_test.dtype == np.int64
    assert osc.X_train.flags.c_contiguous and osc.X_test.flags.c_contiguous
    assert osc.num_classes == 4 and len(osc.class_names) == 4
    assert osc.class_names[0] == "f0=0.031"
    assert osc.name == "oscillations"
    assert (osc.seq_len, osc.num_channels) == (128, 3)
    np.testing.assert_array_equal(validate(osc).X_train, osc.X_train)


def test_oscillations_deterministic_per_seed(osc):
    again = make_oscillations()
    for a, b in zip(osc[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    other = make_oscillations(seed=1)
    assert not np.array_equal(osc.X_train, other.X_train)
    assert not np.array_equal(osc.y_train, other.y_train)


def test_oscillations_train_set_independent_of_n_test(osc):
    other = make_oscillations(n_test=7)
    np.testing.assert_array_equal(osc.X_train, other.X_train)
    np.testing.assert_array_equal(osc.y_train, other.y_train)


def test_oscillations_balanced(osc):
    assert np.bincount(osc.y_train).tolist() == [500] * 4
    assert np.bincount(osc.y_test).tolist() == [125] * 4


@settings(deadline=None, max_examples=25)
@given(n_train=st.integers(1, 60), n_test=st.integers(1, 30), num_classes=st.integers(2, 7),
       channels=st.integers(1, 4), seq_len=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_oscillations_any_size(n_train, n_test, num_classes, channels, seq_len, seed):
    ds = make_oscillations(n_train=n_train, n_test=n_test, seq_len=seq_len,
                           num_classes=num_classes, channels=channels, seed=seed)
    assert ds.X_train.shape == (n_train, seq_len, channels)
    assert ds.X_test.shape == (n_test, seq_len, channels)
    for y in (ds.y_train, ds.y_test):
        counts = np.bincount(y, minlength=num_classes)
        assert len(counts) == num_classes and counts.max() - counts.min() <= 1
    assert np.all(np.isfinite(ds.X_train))


@pytest.mark.parametrize("seq_len", [16, 1000])
def test_oscillations_seq_len(seq_len):
    ds = make_oscillations(n_train=40, n_test=8, seq_len=seq_len)
    assert ds.X_train.shape == (40, seq_len, 3) and ds.X_test.shape == (8, seq_len, 3)
    assert ds.class_names == make_oscillations(n_train=4, n_test=4).class_names


@pytest.mark.parametrize("kwargs", [dict(n_train=0), dict(n_test=-1), dict(seq_len=0),
                                    dict(num_classes=1), dict(channels=0), dict(noise=-0.1),
                                    dict(seq_len=2.5)])
def test_oscillations_bad_arguments(kwargs):
    with pytest.raises(DataError, match="make_oscillations"):
        make_oscillations(**kwargs)


def periodogram(X):
    """Power spectrum summed over channels, normalised per sample: (N, T // 2 + 1)."""
    p = (np.abs(np.fft.rfft(X - X.mean(axis=1, keepdims=True), axis=1)) ** 2).sum(axis=2)
    return p / p.sum(axis=1, keepdims=True)


def nearest_centroid_accuracy(F_train, y_train, F_test, y_test, k):
    centroids = np.stack([F_train[y_train == c].mean(axis=0) for c in range(k)])
    d = ((F_test[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    return np.mean(np.argmin(d, axis=1) == y_test)


def test_oscillations_labels_carry_signal(osc):
    """A spectral feature separates the classes; one time step (all channels) does not."""
    k = osc.num_classes
    spectral = nearest_centroid_accuracy(periodogram(osc.X_train), osc.y_train,
                                         periodogram(osc.X_test), osc.y_test, k)
    assert spectral > 0.9
    t = osc.seq_len // 2
    single_step = nearest_centroid_accuracy(osc.X_train[:, t], osc.y_train,
                                            osc.X_test[:, t], osc.y_test, k)
    # also with second-order features of the step (x_c * x_d): no linear/quadratic shortcut
    quad = lambda X: np.einsum("nc,nd->ncd", X[:, t], X[:, t]).reshape(len(X), -1)  # noqa: E731
    single_step_quad = nearest_centroid_accuracy(quad(osc.X_train), osc.y_train,
                                                 quad(osc.X_test), osc.y_test, k)
    assert single_step < 1.0 / k + 0.1 and single_step_quad < 1.0 / k + 0.1


# --------------------------------------------------------------------------------------------
# load_npz
# --------------------------------------------------------------------------------------------

def test_load_npz_small(tmp_path):
    raw = small_dataset()
    path = save_npz(tmp_path / "toy.npz", raw, class_names=np.array(["a", "b", "c"]),
                    subject_train=np.arange(6))
    ds = load_npz(path)
    assert ds.len_train is None and ds.len_test is None and ds.pad == "end"
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.X_train.shape == (6, 5, 2) and ds.X_test.shape == (4, 5, 2)
    np.testing.assert_array_equal(ds.X_train, raw.X_train.astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, raw.y_test)
    assert ds.class_names == ("a", "b", "c") and ds.num_classes == 3 and ds.name == "toy"
    assert load_npz(str(path)).name == "toy"


def test_load_npz_infers_classes_and_accepts_integral_float_labels(tmp_path):
    raw = small_dataset(k=3)._replace(y_train=np.array([0, 1, 3, 0, 2, 1], dtype=np.float64))
    ds = load_npz(save_npz(tmp_path / "f.npz", raw))
    assert ds.num_classes == 4 and ds.class_names == ("0", "1", "2", "3")
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == [0, 1, 3, 0, 2, 1]


def test_load_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.npz.*not found"):
        load_npz(tmp_path / "nope.npz")


def test_load_npz_missing_keys(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, X_train=np.zeros((2, 3, 1)), y_train=np.zeros(2))
    with pytest.raises(DataError, match="partial.npz.*X_test, y_test"):
        load_npz(path)


def test_load_npz_unreadable(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"this is not an archive" * 10)
    with pytest.raises(DataError, match="garbage.npz"):
        load_npz(path)
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match="single array"):
        load_npz(npy)


def test_load_npz_refuses_pickle(tmp_path):
    path = save_npz(tmp_path / "obj.npz", small_dataset(),
                    class_names=np.array(["a", 1, None], dtype=object))
    with pytest.raises(DataError, match="pickle"):
        load_npz(path)


def test_load_npz_two_dimensional_is_static(tmp_path):
    raw = small_dataset()
    path = save_npz(tmp_path / "flat.npz", raw._replace(X_train=raw.X_train[:, 0],
                                                        X_test=raw.X_test[:, 0]))
    ds = load_npz(path)
    assert ds.kind == "static" and not ds.is_sequence and ds.X_train.shape == (6, 2)
    path = save_npz(tmp_path / "one.npz", raw._replace(X_train=raw.X_train[:, 0, 0],
                                                       X_test=raw.X_test[:, 0, 0]))
    with pytest.raises(DataError, match=r"\(N, T, C\).*\(N, F\).*X\[:, None\]"):
        load_npz(path)


def test_load_npz_absurd_labels(tmp_path):
    raw = small_dataset()._replace(y_train=np.array([0, 1, 2, 0, 1, 10**9]))
    with pytest.raises(DataError, match="label"):
        load_npz(save_npz(tmp_path / "big.npz", raw))


def shared_file(name):
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"shared data file {path} not present")
    return path


def test_load_shared_uci_har():
    ds = load_npz(shared_file("uci_har.npz"))
    assert ds.X_train.shape == (7352, 128, 9) and ds.X_test.shape == (2947, 128, 9)
    assert ds.num_classes == 6 and ds.class_names == datasets.UCI_HAR_CLASS_NAMES
    assert np.bincount(ds.y_test).tolist() == [496, 471, 420, 491, 532, 537]


def test_load_shared_japanese_vowels():
    ds = load(shared_file("japanese_vowels.npz"))
    assert ds.X_train.shape == (270, 29, 12) and ds.X_test.shape == (370, 29, 12)
    assert ds.num_classes == 9 and ds.class_names == tuple("123456789")
    assert load(shared_file("japanese_vowels.npz"), seq_len=20).X_test.shape == (370, 20, 12)


def test_load_shared_peaks_is_static():
    ds = load_npz(shared_file("peaks.npz"))
    assert ds.kind == "static" and ds.X_train.shape == (5000, 2) and ds.num_classes == 5


# --------------------------------------------------------------------------------------------
# load_uci_har_dir
# --------------------------------------------------------------------------------------------

@pytest.fixture
def har_dir(tmp_path):
    """A miniature UCI HAR tree (5 train, 3 test windows of 128 steps); returns (root, values)."""
    rng = np.random.default_rng(3)
    root = tmp_path / "UCI HAR Dataset"
    values = {}
    for split, n in (("train", 5), ("test", 3)):
        signal_dir = root / split / "Inertial Signals"
        signal_dir.mkdir(parents=True)
        X = rng.standard_normal((n, 128, 9)) * 0.7
        for c, channel in enumerate(datasets.UCI_HAR_CHANNELS):
            np.savetxt(signal_dir / f"{channel}_{split}.txt", X[:, :, c], fmt="%.7e")
        y = rng.integers(1, 7, n)
        np.savetxt(root / split / f"y_{split}.txt", y, fmt="%d")
        # the expected values are what the text holds (8 significant digits), as float32
        values[split] = (np.char.mod("%.7e", X).astype(np.float64).astype(np.float32), y - 1)
    return root, values


def test_load_uci_har_dir(har_dir):
    root, values = har_dir
    for path in (root, root.parent, str(root)):
        ds = load_uci_har_dir(path)
        assert ds.X_train.shape == (5, 128, 9) and ds.X_test.shape == (3, 128, 9)
        assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
        np.testing.assert_array_equal(ds.X_train, values["train"][0])
        np.testing.assert_array_equal(ds.X_test, values["test"][0])
        np.testing.assert_array_equal(ds.y_train, values["train"][1])
        np.testing.assert_array_equal(ds.y_test, values["test"][1])
        assert ds.num_classes == 6 and ds.class_names[0] == "WALKING"
        assert ds.class_names[5] == "LAYING"
    assert load(root.parent).X_train.shape == (5, 128, 9)
    assert load(root, seq_len=130).X_train.shape == (5, 130, 9)


def test_load_uci_har_dir_channel_order(har_dir):
    root, _ = har_dir
    ds = load_uci_har_dir(root)
    gyro_y = np.loadtxt(root / "train" / "Inertial Signals" / "body_gyro_y_train.txt")
    np.testing.assert_array_equal(ds.X_train[:, :, 4], gyro_y.astype(np.float32))


def test_load_uci_har_dir_missing_files(har_dir):
    root, _ = har_dir
    (root / "test" / "Inertial Signals" / "total_acc_z_test.txt").unlink()
    (root / "train" / "y_train.txt").unlink()
    with pytest.raises(DataError, match="missing 2 file") as info:
        load_uci_har_dir(root)
    assert "total_acc_z_test.txt" in str(info.value) and "y_train.txt" in str(info.value)


def test_load_uci_har_dir_bad_content(har_dir):
    root, _ = har_dir
    (root / "train" / "y_train.txt").write_text("1\n2\n3\n")
    with pytest.raises(DataError, match="3 labels"):
        load_uci_har_dir(root)
    (root / "train" / "y_train.txt").write_text("1\nwalking\n")
    with pytest.raises(DataError, match="y_train.txt"):
        load_uci_har_dir(root)


def test_load_uci_har_dir_not_a_directory(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_uci_har_dir(tmp_path / "absent")
    with pytest.raises(DataError, match="missing 20 file"):
        load_uci_har_dir(tmp_path)


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------

def test_load_default():
    ds = load("default", seq_len=16, seed=3)
    assert ds.X_train.shape == (2000, 16, 3)
    np.testing.assert_array_equal(ds.X_test, make_oscillations(seq_len=16, seed=3).X_test)
    assert load().X_train.shape == (2000, 128, 3)


def test_load_npz_with_seq_len(tmp_path):
    path = save_npz(tmp_path / "toy.npz", small_dataset(t=5))
    assert load(path, seq_len=3).X_train.shape == (6, 3, 2)
    assert load(str(path), seq_len=8).X_test.shape == (4, 8, 2)
    assert load(path).X_train.shape == (6, 5, 2)
    with pytest.raises(DataError, match="seq_len"):
        load(path, seq_len=0)


def test_load_unknown_source(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load("uci")
    text = tmp_path / "data.csv"
    text.write_text("1,2,3\n")
    with pytest.raises(DataError, match="neither a .npz file nor a directory"):
        load(text)


# --------------------------------------------------------------------------------------------
# fix_length and Standardizer
# --------------------------------------------------------------------------------------------

def test_fix_length_truncate_and_pad():
    X = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    short = fix_length(X, 2)
    np.testing.assert_array_equal(short, X[:, :2])
    assert short.flags.c_contiguous
    long = fix_length(X, 6)
    assert long.shape == (2, 6, 3) and long.dtype == np.float32
    np.testing.assert_array_equal(long[:, :4], X)
    assert not long[:, 4:].any()
    np.testing.assert_array_equal(fix_length(X, 4), X)
    for bad in (0, -3, 1.5):
        with pytest.raises(DataError, match="seq_len"):
            fix_length(X, bad)
    with pytest.raises(DataError, match=r"\(N, T, C\)"):
        fix_length(X[:, 0], 3)


def test_standardizer():
    rng = np.random.default_rng(0)
    X = rng.normal([1.0, -50.0, 3.0], [2.0, 0.01, 7.0], size=(40, 30, 3)).astype(np.float32)
    X[:, :, 2] = 4.25                                       # a constant channel
    before = X.copy()
    s = Standardizer.fit(X)
    assert s.mean.shape == (3,) and s.mean.dtype == np.float64 and s.std.dtype == np.float64
    assert s.std[2] == 1.0
    Z = s.transform(X)
    np.testing.assert_array_equal(X, before)                # input untouched
    assert Z.dtype == np.float32 and Z.flags.c_contiguous and Z.shape == X.shape
    np.testing.assert_allclose(Z[:, :, :2].mean(axis=(0, 1)), 0.0, atol=1e-4)
    np.testing.assert_allclose(Z[:, :, :2].std(axis=(0, 1)), 1.0, rtol=1e-4)
    assert np.all(np.isfinite(Z)) and np.abs(Z[:, :, 2]).max() < 1e-5
    assert s.transform(X[:3], dtype=np.float64).dtype == np.float64


@settings(deadline=None, max_examples=30)
@given(value=st.floats(-1e6, 1e6, allow_nan=False, width=32), n=st.integers(1, 50))
def test_standardizer_constant_channel_any_value(value, n):
    X = np.full((n, 7, 1), value, dtype=np.float32)
    s = Standardizer.fit(X)
    assert s.std[0] == 1.0
    assert np.all(np.abs(s.transform(X)) <= 1e-6 * max(1.0, abs(value)))


def test_standardizer_errors():
    s = Standardizer.fit(np.ones((2, 3, 4)))
    with pytest.raises(DataError, match="channels"):
        s.transform(np.ones((2, 3, 5)))
    with pytest.raises(DataError, match="standardizer"):
        Standardizer.fit(np.ones((0, 3, 4)))


# --------------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------------

def test_validate_casts():
    raw = small_dataset()._replace(y_test=np.array([0.0, 1.0, 2.0, 0.0]))
    raw = raw._replace(X_train=np.asfortranarray(raw.X_train))
    ds = validate(raw)
    assert ds.X_train.dtype == np.float32 and ds.X_train.flags.c_contiguous
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.y_test.tolist() == [0, 1, 2, 0]
    assert isinstance(ds.class_names, tuple)


def corrupt(**changes):
    return small_dataset()._replace(**changes)


X6 = small_dataset().X_train


def with_nan(X, where):
    X = X.copy()
    X[where] = np.nan
    return X


@pytest.mark.parametrize("ds, pattern", [
    (corrupt(X_train=X6[:, :, 0]), r"X_train is static \(N, F\) \(shape \(6, 5\)\) but X_test is "
                                   r"sequences \(N, T, C\)"),
    (corrupt(X_train=X6[:, 0, 0]), r"X_train has shape \(6,\).*\(N, T, C\).*\(N, F\)"),
    (corrupt(X_test=np.zeros((4, 5, 2, 1))), r"X_test.*\(N, T, C\)"),
    (corrupt(X_train=X6.astype(str)), "real numbers"),
    (corrupt(y_train=np.zeros((6, 3))), "1-D"),
    (corrupt(y_train=np.zeros(5, dtype=int)), "5 labels but X has 6 samples"),
    (corrupt(y_test=np.array([0.0, 1.5, 2.0, 0.0])), "integer"),
    (corrupt(y_test=np.array([0.0, np.nan, 2.0, 0.0])), "integer"),
    (corrupt(y_test=np.array(["a", "b", "c", "a"])), "integer"),
    (corrupt(y_train=np.array([0, 1, 2, 0, -1, 1])), r"label values in \[-1, 2\]"),
    (corrupt(y_train=np.array([1, 2, 3, 1, 2, 3])), r"num_classes is 3.*subtract 1"),
    (corrupt(X_train=with_nan(X6, (4, 2, 1))), r"X_train contains 1 NaN or inf.*sample 4"),
    (corrupt(X_train=with_nan(X6, (slice(2, 4), 0))), r"contains 4 NaN or inf.*sample 2"),
    (corrupt(X_test=np.full((4, 5, 2), np.inf)), r"X_test contains 40 NaN or inf"),
    (corrupt(X_test=np.full((4, 5, 2), 1e300)), r"X_test contains 40 NaN or inf"),
    (corrupt(X_test=np.zeros((4, 5, 3))), "channels"),
    (corrupt(X_test=np.zeros((4, 7, 2))), "--seq-len"),
    (corrupt(X_train=np.zeros((0, 5, 2)), y_train=np.zeros(0, int)), "train set is empty"),
    (corrupt(X_test=np.zeros((0, 5, 2)), y_test=np.zeros(0, int)), "test set is empty"),
    (corrupt(X_train=np.zeros((6, 0, 2)), X_test=np.zeros((4, 0, 2))), "seq_len 0"),
    (corrupt(class_names=("a", "b")), "class_names"),
])
def test_validate_rejects(ds, pattern):
    with pytest.raises(DataError, match=pattern):
        validate(ds)


@settings(deadline=None, max_examples=30)
@given(n=st.integers(1, 8), t=st.integers(1, 6), c=st.integers(1, 3),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), data=st.data())
def test_validate_reports_first_bad_sample(n, t, c, bad, data):
    X = np.zeros((n, t, c))
    idx = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, t - 1),
                                       st.integers(0, c - 1)), min_size=1, unique=True))
    for i in idx:
        X[i] = bad
    ds = Dataset(X, np.zeros(n, int), np.zeros((1, t, c)), np.zeros(1, int), 1, "h", ("only",))
    first = min(i[0] for i in idx)
    with pytest.raises(DataError, match=rf"contains {len(idx)} NaN.*sample {first};"):
        validate(ds)


# --------------------------------------------------------------------------------------------
# Sequence lengths: reading, validation, the padding policy, standardisation on real steps
# --------------------------------------------------------------------------------------------

def padded_dataset(n=6, m=4, t=7, c=2, k=3, seed=0, len_train=None, len_test=None):
    """A raw Dataset whose sequences are zero-padded at the end after their true lengths."""
    rng = np.random.default_rng(seed)
    len_train = rng.integers(1, t + 1, n) if len_train is None else np.asarray(len_train)
    len_test = rng.integers(1, t + 1, m) if len_test is None else np.asarray(len_test)
    X_train = rng.standard_normal((n, t, c)) * ~real_steps(t - len_train, t, "front")[..., None]
    X_test = rng.standard_normal((m, t, c)) * ~real_steps(t - len_test, t, "front")[..., None]
    return Dataset(X_train, np.arange(n) % k, X_test, np.arange(m) % k, k, "padded",
                   tuple(f"c{i}" for i in range(k)), len_train, len_test)


def save_padded(path, ds, **extra):
    return save_npz(path, ds, len_train=ds.len_train, len_test=ds.len_test, **extra)


def test_padded_dataset_helper_pads_at_the_end():
    ds = padded_dataset(len_train=[7, 3, 1, 7, 2, 5])
    assert not ds.X_train[1, 3:].any() and ds.X_train[1, :3].all()
    assert not ds.X_train[2, 1:].any() and ds.X_train[0].all()


def test_real_steps():
    np.testing.assert_array_equal(real_steps([2, 4, 1], 4), [[1, 1, 0, 0], [1, 1, 1, 1],
                                                             [1, 0, 0, 0]])
    np.testing.assert_array_equal(real_steps([2, 4, 1], 4, "front"), [[0, 0, 1, 1], [1, 1, 1, 1],
                                                                      [0, 0, 0, 1]])
    with pytest.raises(ConfigError, match="pad must be one of 'end', 'front', got 'middle'"):
        real_steps([1], 2, "middle")


def test_load_npz_reads_lengths(tmp_path):
    raw = padded_dataset()
    ds = load_npz(save_padded(tmp_path / "var.npz", raw))
    assert ds.len_train.dtype == np.int64 and ds.len_test.dtype == np.int64
    np.testing.assert_array_equal(ds.len_train, raw.len_train)
    np.testing.assert_array_equal(ds.len_test, raw.len_test)
    np.testing.assert_array_equal(ds.X_train, raw.X_train.astype(np.float32))
    assert ds.pad == "end" and load(tmp_path / "var.npz").len_train.tolist() == \
        raw.len_train.tolist()
    floats = save_npz(tmp_path / "f.npz", raw, len_train=raw.len_train.astype(np.float64),
                      len_test=raw.len_test.astype(np.float32))      # integral floats are fine
    assert load_npz(floats).len_test.dtype == np.int64


@pytest.mark.parametrize("key, other", [("len_train", "len_test"), ("len_test", "len_train")])
def test_load_npz_one_length_alone_is_an_error(tmp_path, key, other):
    raw = padded_dataset()
    path = save_npz(tmp_path / "half.npz", raw, **{key: getattr(raw, key)})
    with pytest.raises(DataError, match=rf"half.npz' has {key} but no {other}: give the true "
                                        rf"lengths of both splits \({other} with one length per "
                                        rf"sequence\), or neither"):
        load_npz(path)
    with pytest.raises(DataError, match=rf"'padded' has {key} but no {other}"):
        validate(raw._replace(**{other: None}))


L6 = padded_dataset().len_train


@pytest.mark.parametrize("changes, pattern", [
    (dict(len_train=L6[:5]), r"len_train has shape \(5,\) but X_train has 6 sequences; give one "
                             r"length per sequence, shape \(6,\)"),
    (dict(len_test=np.full((4, 1), 7)), r"len_test has shape \(4, 1\) but X_test has 4 "
                                        r"sequences"),
    (dict(len_train=L6 + 0.5), r"len_train has dtype float64 with non-integer values; each "
                               r"length must be an integer number of time steps 1 \.\. 7"),
    (dict(len_train=np.where(L6 == L6[2], np.nan, L6)), "non-integer values"),
    (dict(len_train=L6 > 0), r"len_train has dtype bool; each length must be an integer"),
    (dict(len_test=np.array(["7"] * 4)), r"len_test has dtype <U1; each length must be"),
    (dict(len_train=np.r_[L6[:3], 0, L6[4:]]), r"len_train\[3\] is 0, but a length must lie in "
                                               r"1 \.\. 7 \(the time steps of X_train; 1 "
                                               r"length\(s\) do not\): store each sequence's true "
                                               r"number of steps"),
    (dict(len_test=np.array([7, 8, -1, 9])), r"len_test\[1\] is 8, but a length must lie in "
                                             r"1 \.\. 7 .*3 length\(s\) do not"),
    (dict(len_test=np.array([7, 1e300, 7, 7])), r"len_test\[1\] is 10000000000000000525047"),
    (dict(pad="middle"), r"data set 'padded' has pad 'middle'; the padding lies at one of "
                         r"'end', 'front'"),
])
def test_validate_rejects_bad_lengths(changes, pattern):
    with pytest.raises(DataError, match=pattern):
        validate(padded_dataset()._replace(**changes))


def test_validate_names_the_first_step_that_breaks_the_padding():
    raw = padded_dataset(len_train=[7, 3, 1, 7, 2, 5], len_test=[7, 7, 4, 2])
    X = raw.X_train.copy()
    X[4, 6, 1] = 0.25             # sample 4 (length 2): step 6 is padding
    X[4, 3, 0] = -1e-3            # ... and so is step 3, the first
    X[2, 5, 0] = 1.0              # sample 2 (length 1): the first sample that breaks it
    with pytest.raises(DataError, match=r"X_train sample 2 has a nonzero value at step 5, but "
                                        r"its len_train is 1, so that step is padding \(steps "
                                        r"1 \.\. 6\), which must be all zeros \(2 sample\(s\) "
                                        r"break this\): fix len_train, or remove len_train and "
                                        r"len_test to use the sequences as stored"):
        validate(raw._replace(X_train=X))
    X[2, 5, 0] = 0.0
    with pytest.raises(DataError, match=r"sample 4 has a nonzero value at step 3, but its "
                                        r"len_train is 2.*\(1 sample"):
        validate(raw._replace(X_train=X))
    Xt = raw.X_test.copy()
    Xt[3, 2] = np.float32(1e-30)  # tiny is not zero
    with pytest.raises(DataError, match=r"X_test sample 3 has a nonzero value at step 2, but its "
                                        r"len_test is 2"):
        validate(raw._replace(X_test=Xt))
    Xt[3, 2] = -0.0               # negative zero is padding
    validate(raw._replace(X_test=Xt))
    # front padding: the padding lies before the real steps
    front = raw._replace(X_train=pad_front(raw.X_train, raw.len_train),
                         X_test=pad_front(raw.X_test, raw.len_test), pad="front")
    validate(front)
    with pytest.raises(DataError, match=r"sample 1 has a nonzero value at step 4"):
        validate(front._replace(pad="end"))
    X = front.X_train.copy()
    X[5, 1, 0] = 2.0              # length 5 of 7: steps 0 .. 1 are padding
    with pytest.raises(DataError, match=r"sample 5 has a nonzero value at step 1, but its "
                                        r"len_train is 5, so that step is padding \(steps 0 \.\. "
                                        r"1, pad 'front'\)"):
        validate(front._replace(X_train=X))


def test_load_npz_checks_the_padding_of_the_file(tmp_path):
    raw = padded_dataset(len_train=[7, 3, 1, 7, 2, 5])
    X = raw.X_train.copy()
    X[1, 4] = 1.0
    with pytest.raises(DataError, match=r"X_train sample 1 has a nonzero value at step 4"):
        load(save_padded(tmp_path / "bad.npz", raw._replace(X_train=X)))


@settings(deadline=None, max_examples=30)
@given(n=st.integers(1, 6), t=st.integers(1, 9), c=st.integers(1, 3), data=st.data())
def test_validate_finds_any_padding_violation(n, t, c, data):
    lengths = np.array(data.draw(st.lists(st.integers(1, t), min_size=n, max_size=n)))
    X = np.ones((n, t, c)) * real_steps(lengths, t)[..., None]
    pads = [(i, s) for i in range(n) for s in range(lengths[i], t)]
    bad = data.draw(st.lists(st.sampled_from(pads), unique=True, max_size=4)) if pads else []
    for i, s in bad:
        X[i, s, data.draw(st.integers(0, c - 1))] = -3.0
    ds = Dataset(X, np.zeros(n, int), X[:1], np.zeros(1, int), 1, "h", ("only",), lengths,
                 lengths[:1])
    if not bad:
        assert validate(ds).len_train.tolist() == lengths.tolist()
        return
    i, s = min(bad)
    with pytest.raises(DataError, match=rf"sample {i} has a nonzero value at step {s}, but its "
                                        rf"len_train is {lengths[i]}.*"
                                        rf"\({len({j for j, _ in bad})} sample"):
        validate(ds)


def test_pad_front_moves_exactly_the_real_steps():
    raw = padded_dataset(n=9, t=11, c=3, seed=5)
    X = raw.X_train.astype(np.float32)
    out = pad_front(X, raw.len_train)
    assert out.shape == X.shape and out.dtype == np.float32 and out.flags.c_contiguous
    T = X.shape[1]
    for i, L in enumerate(raw.len_train):       # the slow twin, sample by sample
        np.testing.assert_array_equal(out[i, T - L:], X[i, :L])
        assert not out[i, :T - L].any()
    np.testing.assert_array_equal(pad_front(X, np.full(9, T)), X)     # full length: unchanged
    padded = X.copy()
    padded[0, -1] = 9.0                                                # not padding: not copied
    if raw.len_train[0] < T:
        np.testing.assert_array_equal(pad_front(padded, raw.len_train), out)


def test_load_pad_front(tmp_path):
    raw = padded_dataset(seed=2)
    path = save_padded(tmp_path / "var.npz", raw)
    end, front = load(path), load(path, pad="front")
    assert front.pad == "front" and end.pad == "end"
    np.testing.assert_array_equal(front.len_train, end.len_train)
    np.testing.assert_array_equal(front.X_train, pad_front(end.X_train, end.len_train))
    np.testing.assert_array_equal(front.X_test, pad_front(end.X_test, end.len_test))
    # data without lengths is the same under every policy
    plain = save_npz(tmp_path / "plain.npz", small_dataset())
    for kw in (dict(pad="front"), dict(lengths="ignore"), dict(lengths="ignore", pad="front")):
        ds = load(plain, **kw)
        assert ds.len_train is None
        np.testing.assert_array_equal(ds.X_train, load(plain).X_train)
    with pytest.raises(ConfigError, match="pad must be one of 'end', 'front', got 'start'"):
        load(path, pad="start")
    with pytest.raises(ConfigError, match="lengths must be one of 'use', 'ignore', got True"):
        load(path, lengths=True)


def test_seq_len_keeps_the_lengths_consistent(tmp_path):
    raw = padded_dataset(len_train=[7, 3, 1, 7, 2, 5], len_test=[7, 6, 4, 2])
    path = save_padded(tmp_path / "var.npz", raw)
    short = load(path, seq_len=4)                          # truncation clips the lengths
    assert short.len_train.tolist() == [4, 3, 1, 4, 2, 4]
    assert short.len_test.tolist() == [4, 4, 4, 2]
    np.testing.assert_array_equal(short.X_train, raw.X_train[:, :4].astype(np.float32))
    long = load(path, seq_len=10)                          # zero padding leaves them
    assert long.len_train.tolist() == [7, 3, 1, 7, 2, 5] and long.X_train.shape == (6, 10, 2)
    # front padding happens after the truncation: each sequence's first seq_len steps, right-aligned
    front = load(path, seq_len=4, pad="front")
    np.testing.assert_array_equal(front.X_train, pad_front(short.X_train, short.len_train))
    assert front.X_train[1, 0].tolist() == [0, 0] and front.X_train[0, 0].any()
    front_long = load(path, seq_len=10, pad="front")
    np.testing.assert_array_equal(front_long.X_train[:, 3:], load(path, pad="front").X_train)


def test_ignored_lengths_warn_once(tmp_path):
    raw = padded_dataset(len_train=[7, 3, 1, 7, 2, 5], len_test=[7, 6, 4, 2])
    path = save_padded(tmp_path / "var.npz", raw)
    with pytest.warns(DataWarning) as got:
        ds = load(path, lengths="ignore")
    assert len(got) == 1 and got[0].filename == __file__
    msg = str(got[0].message)
    assert msg == (f"{str(path)!r} has sequence lengths (len_train, len_test), which are ignored "
                   "(--lengths ignore): the zero padding (up to 6 step(s)) at the end of the "
                   "shorter sequences counts as data, in the standardization too, and the "
                   "classifier reads the state after the padding (--pad front puts the padding "
                   "before the real steps)")
    assert ds.len_train is None and ds.len_test is None
    np.testing.assert_array_equal(ds.X_train, load(path).X_train)
    with pytest.warns(DataWarning, match=r"up to 6 step\(s\)\) before the real steps"):
        front = load(path, lengths="ignore", pad="front")
    np.testing.assert_array_equal(front.X_train, load(path, pad="front").X_train)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(path)                                          # use: no warning
        load(path, lengths="ignore", seq_len=1)             # every length is T: nothing ignored
        load(save_padded(tmp_path / "full.npz", padded_dataset(len_train=np.full(6, 7),
                                                               len_test=np.full(4, 7))),
             lengths="ignore")


@pytest.mark.filterwarnings("ignore::mgritnn.datasets.DataWarning")   # har_dir lacks 3 classes
def test_generated_and_uci_har_data_have_no_lengths(har_dir):
    assert load("default", seq_len=8).len_train is None
    assert load("default", seq_len=8, pad="front").len_test is None
    ds = load_uci_har_dir(har_dir[0])
    assert ds.len_train is None and ds.len_test is None


def concatenated_real_steps(X, lengths, pad="end"):
    """The slow twin: every sequence's real steps, one after the other, (sum(lengths), C)."""
    T = X.shape[1]
    return np.concatenate([X[i, :L] if pad == "end" else X[i, T - L:]
                           for i, L in enumerate(lengths)])


@pytest.mark.parametrize("pad", ["end", "front"])
def test_standardizer_ignores_the_padding(pad):
    raw = padded_dataset(n=30, t=20, c=3, seed=7)
    X = (raw.X_train * [2.0, 0.5, 10.0] + [1.0, -3.0, 40.0]).astype(np.float32)
    X *= real_steps(raw.len_train, 20)[..., None]                   # zero padding again
    L = raw.len_train
    if pad == "front":
        X = pad_front(X, L)
    real = concatenated_real_steps(X, L, pad)
    s = Standardizer.fit(X, L, pad)
    np.testing.assert_allclose(s.mean, real.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s.std, real.astype(np.float64).std(axis=0), rtol=1e-12)
    assert not np.allclose(s.mean, Standardizer.fit(X).mean, rtol=1e-3)   # padding would count
    Z = s.transform(X, np.float64, L, pad)
    mask = real_steps(L, 20, pad)
    assert np.all(Z[~mask] == 0.0)                                 # padding stays exactly 0
    np.testing.assert_array_equal(Z[mask], s.transform(X, np.float64)[mask])
    np.testing.assert_allclose(concatenated_real_steps(Z, L, pad).mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(concatenated_real_steps(Z, L, pad).std(axis=0), 1.0, rtol=1e-12)
    assert s.transform(X, lengths=L, pad=pad).dtype == np.float32


def test_standardizer_without_lengths_is_bitwise_unchanged():
    """lengths=None is the computation of the standardizer before lengths existed."""
    rng = np.random.default_rng(11)
    X = rng.normal([1.0, -50.0, 3.0], [2.0, 0.01, 7.0], size=(23, 17, 3)).astype(np.float32)
    flat = X.reshape(-1, 3)
    mean, std = flat.mean(axis=0, dtype=np.float64), flat.std(axis=0, dtype=np.float64)
    for s in (Standardizer.fit(X), Standardizer.fit(X, None), Standardizer.fit(X, lengths=None)):
        assert s.mean.tobytes() == mean.tobytes() and s.std.tobytes() == std.tobytes()
        for dtype in (np.float32, np.float64):
            expected = np.ascontiguousarray((X - mean) / std, dtype=dtype)
            assert s.transform(X, dtype).tobytes() == expected.tobytes()
            assert s.transform(X, dtype, None).tobytes() == expected.tobytes()
    # full lengths give the same statistics (the same values, in the same order)
    full = Standardizer.fit(X, np.full(23, 17))
    assert full.mean.tobytes() == mean.tobytes() and full.std.tobytes() == std.tobytes()


def test_standardizer_errors_with_lengths():
    X = np.ones((4, 5, 2))
    with pytest.raises(DataError, match=r"lengths has shape \(3,\) but X has 4 sequences"):
        Standardizer.fit(X, [1, 2, 3])
    with pytest.raises(DataError, match=r"lengths\[2\] is 6, but a length must lie in 1 \.\. 5"):
        Standardizer.fit(X, [1, 2, 6, 1])
    s = Standardizer.fit(X)
    with pytest.raises(DataError, match=r"lengths\[0\] is 0"):
        s.transform(X, lengths=[0, 1, 1, 1])
    with pytest.raises(DataError, match=r"with lengths it must be sequences \(N, T, C\)"):
        s.transform(X[0], lengths=[1] * 5)
    with pytest.raises(ConfigError, match="pad must be one of"):
        s.transform(X, lengths=[1] * 4, pad="both")


@pytest.mark.parametrize("name, shapes, span", [
    ("japanese_vowels.npz", ((270, 29, 12), (370, 29, 12)), (7, 29)),
    ("watch_exercise.npz", ((98, 2618, 6), (42, 2618, 6)), (947, 2618)),
])
def test_real_variable_length_files_load_with_both_policies(shared_data, name, shapes, span):
    path = shared_data / name
    with np.load(path) as f:
        stored = f["len_train"], f["len_test"]
    used = load(path)
    assert (used.X_train.shape, used.X_test.shape) == shapes
    np.testing.assert_array_equal(used.len_train, stored[0])
    np.testing.assert_array_equal(used.len_test, stored[1])
    lo = min(used.len_train.min(), used.len_test.min())
    hi = max(used.len_train.max(), used.len_test.max())
    assert (lo, hi) == span
    front = load(path, pad="front")
    np.testing.assert_array_equal(front.X_train, pad_front(used.X_train, used.len_train))
    with pytest.warns(DataWarning, match="ignored"):
        ignored = load(path, lengths="ignore")
    assert ignored.len_train is None and ignored.len_test is None
    np.testing.assert_array_equal(ignored.X_test, used.X_test)
    s = Standardizer.fit(used.X_train, used.len_train)
    real = concatenated_real_steps(used.X_train, used.len_train)
    np.testing.assert_allclose(s.mean, real.mean(axis=0, dtype=np.float64), rtol=1e-9, atol=1e-12)
    Z = s.transform(used.X_test, lengths=used.len_test)
    assert not Z[~real_steps(used.len_test, used.seq_len)].any()
    short = load(path, seq_len=int(lo))                  # truncated to the shortest: no padding
    assert np.all(short.len_train == lo) and np.all(short.len_test == lo)
