"""Tests of static (non-sequence) data sets: the Peaks generator (mgritnn.peaks and
datasets.peaks_dataset / load("peaks")), 2-D .npz data, per-feature standardisation, the data kind
check of the models, and the shared peaks.npz and indian_pines.npz."""

import numpy as np
import pytest

from helpers import save_npz
from mgritnn import datasets
from mgritnn.datasets import (Dataset, Standardizer, check_data_kind, load, peaks_dataset,
                              validate)
from mgritnn.errors import ConfigError, DataError
from mgritnn.peaks import (MATLAB_DEFAULT_SEED, column_major, level_set_labels, matlab_draw,
                           peaks, peaks_grid)


def shared_file(shared_data, name):
    path = shared_data / name
    if not path.is_file():
        pytest.skip(f"shared data file {path} not present")
    return path


def grid_rows(X):
    """The rows of :func:`peaks_grid`'s 256 x 256 grid nearest the points ``X`` (N, 2)."""
    ij = np.rint((np.asarray(X, dtype=np.float64) + 3.0) * (255.0 / 6.0)).astype(np.int64)
    return ij[:, 1] * 256 + ij[:, 0]                    # columns (x, y) = (j, i)


def static_dataset(n=8, m=5, f=3, k=3, seed=0):
    """A valid raw static Dataset (float64 X (n, f), int labels) to corrupt."""
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 100.0, 0.01])[:f]
    return Dataset(5.0 + scale * rng.standard_normal((n, f)), np.arange(n) % k,
                   5.0 + scale * rng.standard_normal((m, f)), np.arange(m) % k, k, "toy",
                   tuple(f"c{i}" for i in range(k)))


# --------------------------------------------------------------------------------------------
# peaks(x, y)
# --------------------------------------------------------------------------------------------

def test_peaks_at_hand_computed_points():
    # peaks(0, 0) = 3 e^-1 - 0 - e^-1 / 3 = (8 / 3) e^-1
    assert peaks(0.0, 0.0) == pytest.approx(8.0 / (3.0 * np.e), rel=1e-15)
    # peaks(1, 0) = 0 - 10 (1/5 - 1) e^-1 - e^-4 / 3 = 8 e^-1 - e^-4 / 3
    assert peaks(1.0, 0.0) == pytest.approx(8.0 / np.e - np.exp(-4.0) / 3.0, rel=1e-15)
    # peaks(0, -1) = 3 - 10 e^-1 - e^-2 / 3
    assert peaks(0.0, -1.0) == pytest.approx(3.0 - 10.0 / np.e - np.exp(-2.0) / 3.0, rel=1e-15)
    # the global maximum and minimum (MATLAB's documented extrema)
    assert peaks(-0.0093, 1.5814) == pytest.approx(8.1062, abs=1e-4)
    assert peaks(0.2283, -1.6255) == pytest.approx(-6.5511, abs=1e-4)
    assert peaks(np.zeros((2, 3)), 0.0).shape == (2, 3)


def test_peaks_grid_layout():
    coords, values = peaks_grid(4, 3.0)
    g = np.linspace(-3.0, 3.0, 4)
    assert coords.shape == (16, 2) and coords.dtype == np.float64 and values.shape == (16,)
    np.testing.assert_array_equal(coords[:4, 0], g)               # x fastest
    np.testing.assert_array_equal(coords[::4, 1], g)
    np.testing.assert_array_equal(values, peaks(coords[:, 0], coords[:, 1]))


def test_level_set_labels_edges_and_maximum():
    v = np.array([0.0, 0.19, 0.2, 0.5, 0.99, 1.0])       # edges 0.2, 0.4, 0.6, 0.8; (e_k, e_k+1]
    np.testing.assert_array_equal(level_set_labels(v, 5), [0, 0, 0, 2, 4, 4])
    assert level_set_labels(v, 5).dtype == np.int64
    np.testing.assert_array_equal(level_set_labels([-1.0, 3.0], 2, bounds=(0.0, 1.0)), [0, 1])


def test_peaks_grid_is_matlab_linspace():
    coords, _ = peaks_grid()
    g = coords[:256, 0]
    assert g[0] == -3.0 and g[-1] == 3.0
    np.testing.assert_array_equal(g, -3.0 + np.arange(256) * 6.0 / 255.0)
    np.testing.assert_allclose(g, np.linspace(-3.0, 3.0, 256), rtol=0, atol=1e-14)


def test_column_major_order():
    order = column_major(3)
    coords, _ = peaks_grid(3)
    # MATLAB's xx(:), yy(:): y varies fastest
    np.testing.assert_array_equal(coords[order, 1], np.tile([-3.0, 0.0, 3.0], 3))
    np.testing.assert_array_equal(coords[order, 0], np.repeat([-3.0, 0.0, 3.0], 3))


def test_matlab_default_generator():
    # MATLAB: rng('default'); rand(1, 3) -> 0.8147 0.9058 0.1270
    np.testing.assert_allclose(np.random.RandomState(MATLAB_DEFAULT_SEED).random_sample(3),
                               [0.8147, 0.9058, 0.1270], atol=1e-4)


# --------------------------------------------------------------------------------------------
# The shared peaks.npz is reproduced exactly
# --------------------------------------------------------------------------------------------

def fifteen_digits(X):
    """``X`` as the paper's text files wrote it: 15 significant digits."""
    return np.array([float(f"{x:.15g}") for x in np.ravel(X)]).reshape(np.shape(X))


@pytest.fixture(scope="module")
def paper_peaks():
    return peaks_dataset()


def test_peaks_generator_reproduces_shared_file(shared_data, paper_peaks):
    """peaks_dataset() is peaks.npz: the same points in the same order, the same labels."""
    with np.load(shared_file(shared_data, "peaks.npz")) as f:
        files = {k: f[k] for k in f.files}
    coords, values = peaks_grid()
    labels = level_set_labels(values)
    rows = {"train": matlab_draw(labels, 1000), "test": matlab_draw(labels, 40)}
    for split in ("train", "test"):
        X64, X32, y = files[f"X_{split}_float64"], files[f"X_{split}"], files[f"y_{split}"]
        np.testing.assert_array_equal(fifteen_digits(coords[rows[split]]), X64)   # bitwise
        np.testing.assert_array_equal(getattr(paper_peaks, f"X_{split}"), X32)    # bitwise
        np.testing.assert_array_equal(getattr(paper_peaks, f"y_{split}"), y)
        # and every point has the generator's label at its grid point (independent of the draw)
        np.testing.assert_array_equal(labels[grid_rows(X64)], y)
    assert paper_peaks.class_names == tuple(files["class_names"].tolist())


# --------------------------------------------------------------------------------------------
# peaks_dataset and load("peaks")
# --------------------------------------------------------------------------------------------

def test_peaks_dataset_paper_sampling(paper_peaks):
    ds = paper_peaks
    assert ds.kind == "static" and not ds.is_sequence and ds.name == "peaks"
    assert ds.X_train.shape == (5000, 2) and ds.X_train.dtype == np.float32
    assert ds.X_test.shape == (200, 2) and ds.y_test.dtype == np.int64
    assert np.bincount(ds.y_train).tolist() == [1000] * 5
    assert np.bincount(ds.y_test).tolist() == [40] * 5
    assert ds.len_train is None and ds.num_channels == 2
    # the paper's flaws, documented: repeats, and validation class 0 = the first training points
    assert len(np.unique(ds.X_train, axis=0)) == 4361
    np.testing.assert_array_equal(ds.X_test[:40], ds.X_train[:40])
    train = set(grid_rows(ds.X_train).tolist())
    assert sum(r in train for r in grid_rows(ds.X_test).tolist()) == 72
    validate(ds)


def test_peaks_dataset_disjoint_sampling():
    ds = peaks_dataset(sampling="disjoint", seed=3)
    coords, values = peaks_grid()
    labels = level_set_labels(values)
    for X, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        np.testing.assert_array_equal(coords[grid_rows(X)].astype(np.float32), X)
        np.testing.assert_array_equal(labels[grid_rows(X)], y)
    assert np.bincount(ds.y_train).tolist() == [1000] * 5
    train = set(grid_rows(ds.X_train).tolist())
    assert len(train) == 5000 and not train & set(grid_rows(ds.X_test).tolist())
    again = peaks_dataset(20, 4, sampling="disjoint", seed=1)
    np.testing.assert_array_equal(again.X_train,
                                  peaks_dataset(20, 4, sampling="disjoint", seed=1).X_train)
    assert not np.array_equal(again.X_train,
                              peaks_dataset(20, 4, sampling="disjoint", seed=2).X_train)


def test_peaks_dataset_bad_arguments():
    with pytest.raises(DataError, match="level set 4 has 1798 .* ask for fewer"):
        peaks_dataset(1800, 40, sampling="disjoint")
    peaks_dataset(1800, 40)                                  # with replacement: fine
    with pytest.raises(DataError, match="num_classes must be an integer >= 2"):
        peaks_dataset(num_classes=1)
    with pytest.raises(ConfigError, match="sampling must be one of 'paper', 'disjoint'"):
        peaks_dataset(sampling="random")


def test_load_peaks_by_name(paper_peaks):
    ds = load("peaks", seed=7)                               # the paper's data whatever the seed
    assert ds.kind == "static"
    np.testing.assert_array_equal(ds.X_train, paper_peaks.X_train)
    assert load("peaks", num_classes=3).num_classes == 3
    with pytest.raises(DataError, match="static.*drop --seq-len"):
        load("peaks", seq_len=10)
    with pytest.raises(DataError, match="peaks data set has 5 classes but the model has 3"):
        load("peaks", model_classes=3)


# --------------------------------------------------------------------------------------------
# 2-D .npz data, validation, standardisation
# --------------------------------------------------------------------------------------------

def test_load_static_npz(tmp_path):
    raw = static_dataset()
    ds = load(save_npz(tmp_path / "s.npz", raw))
    assert ds.kind == "static" and ds.X_train.dtype == np.float32 and ds.X_train.flags.c_contiguous
    assert ds.num_channels == 3 and ds.num_classes == 3 and ds.len_train is None
    with pytest.raises(DataError, match="static.*--model odenet"):
        ds.seq_len


def test_static_standardizer_per_feature_on_train_only():
    ds = validate(static_dataset())
    std = Standardizer.fit(ds.X_train)
    X = ds.X_train.astype(np.float64)
    np.testing.assert_allclose(std.mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std.std, X.std(axis=0), rtol=1e-12)
    Z = std.transform(ds.X_train)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(Z.std(axis=0), 1.0, rtol=1e-5)
    Zt = std.transform(ds.X_test)                  # test: the training statistics, not its own
    np.testing.assert_allclose(Zt, (ds.X_test - std.mean) / std.std, rtol=1e-5)
    assert not np.allclose(Zt.mean(axis=0), 0.0, atol=1e-3)


@pytest.mark.parametrize("change, match", [
    (dict(X_test=np.zeros((5, 2))), r"X_train has 3 features but X_test has 2"),
    (dict(X_test=np.zeros((5, 4, 3))), r"X_train is static \(N, F\).*X_test is sequences"),
    (dict(X_train=np.zeros((8, 0)), X_test=np.zeros((5, 0))), "0 features"),
    (dict(X_train=np.zeros((0, 3)), y_train=np.zeros(0, int)), "the train set is empty"),
    (dict(y_train=np.arange(7) % 3), "7 labels but X has 8 samples"),
    (dict(y_test=np.array([0, 1, 2, 3, 0])), r"label values in \[0, 3\] but num_classes is 3"),
    (dict(y_train=np.arange(8)[:, None] % 3), "labels must be 1-D"),
    (dict(X_train=np.array([["a"] * 3] * 8)), "real numbers"),
])
def test_static_validate_errors(change, match):
    with pytest.raises(DataError, match=match):
        validate(static_dataset()._replace(**change))


def test_static_nan_named(tmp_path):
    raw = static_dataset()
    X = raw.X_train.copy()
    X[3, 1] = np.nan
    with pytest.raises(DataError, match="X_train contains 1 NaN or inf.*first in sample 3"):
        load(save_npz(tmp_path / "nan.npz", raw._replace(X_train=X)))


def test_static_lengths_rejected(tmp_path):
    raw = static_dataset()
    path = save_npz(tmp_path / "len.npz", raw, len_train=np.ones(8, int), len_test=np.ones(5, int))
    with pytest.raises(DataError, match="static .* has sequence lengths len_train.*remove len_train"):
        load(path)
    with pytest.raises(DataError, match="static.*--seq-len 4.*drop --seq-len"):
        load(save_npz(tmp_path / "s.npz", raw), seq_len=4)


# --------------------------------------------------------------------------------------------
# check_data_kind
# --------------------------------------------------------------------------------------------

def test_check_data_kind(paper_peaks):
    seq = datasets.make_oscillations(n_train=4, n_test=4, seq_len=8)
    assert check_data_kind(paper_peaks, "odenet") is paper_peaks
    assert check_data_kind(seq, "gru") is seq
    with pytest.raises(DataError, match=r"'peaks' is static.*shape \(5000, 2\).*--model odenet"):
        check_data_kind(paper_peaks, "gru")
    with pytest.raises(DataError, match=r"holds sequences.*--model gru"):
        check_data_kind(seq, "odenet")
    with pytest.raises(ConfigError, match="model must be one of 'gru', 'odenet'"):
        check_data_kind(seq, "lstm")


# --------------------------------------------------------------------------------------------
# Indian Pines
# --------------------------------------------------------------------------------------------

def test_load_shared_indian_pines(shared_data):
    ds = load(shared_file(shared_data, "indian_pines.npz"))
    assert ds.kind == "static"
    assert ds.X_train.shape == (4000, 200) and ds.X_test.shape == (2000, 200)
    assert ds.num_classes == 16 and ds.class_names[0] == "Alfalfa"
    assert set(np.unique(ds.y_train)) == set(range(16))
    std = Standardizer.fit(ds.X_train)
    assert std.mean.shape == (200,) and np.all(std.std > 0)
    Z, Zt = std.transform(ds.X_train), std.transform(ds.X_test)
    assert np.all(np.isfinite(Z)) and np.all(np.isfinite(Zt))
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(Z.std(axis=0, dtype=np.float64), 1.0, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# The GRU's command line refuses static data with the fix
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["train", "--data", "peaks", "--epochs", "1"],
                                  ["plan", "--data", "peaks"]])
def test_gru_commands_refuse_static_data(argv, capsys):
    from mgritnn.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'peaks' is static" in err and "--model odenet" in err
