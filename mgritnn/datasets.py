"""Classification data sets: the generated tasks, file loaders, validation, scaling.

Every data set is a :class:`Dataset` with ``int64`` 0-based labels and ``float32`` inputs of one of
two kinds (:data:`DATA_KINDS`, :attr:`Dataset.kind`):

* ``"sequence"``: ``X`` of shape ``(N, T, C)`` (samples, time steps, channels), for the recurrent
  models (GRU);
* ``"static"``: ``X`` of shape ``(N, F)`` (samples, features), no time axis, for the layer-parallel
  residual networks (ODENet). :func:`check_data_kind` tells a model the data is not for it.

Sources:

* ``"default"``: :func:`make_oscillations`, a seeded synthetic sequence task generated in memory
  (the project ships no data files);
* ``"peaks"``: :func:`peaks_dataset`, the static Peaks problem (level sets of MATLAB's ``peaks``,
  :mod:`mgritnn.peaks`) generated in memory;
* a ``.npz`` archive with ``X_train``, ``y_train``, ``X_test``, ``y_test`` (:func:`load_npz`), 3-D
  (sequence) or 2-D (static, e.g. ``indian_pines.npz``);
* a directory in the standard UCI HAR layout (:func:`load_uci_har_dir`).

:func:`load` dispatches on the source and always ends with :func:`validate`, which turns every
user-caused data problem into a :class:`~mgritnn.errors.DataError` that names the problem and the
fix. The class set comes from the data's ``class_names``, else from ``num_classes``
(``--num-classes``), else from the labels (:func:`resolve_classes`, which also says what is an
error and what is a :class:`DataWarning`: gaps, 1-based labels, classes without training samples).

Variable-length sequences: an ``.npz`` archive may carry the true lengths ``len_train`` (N,) and
``len_test`` (M,) of sequences that are zero-padded at the end to a common ``T`` (both or neither).
:func:`validate` checks them (integers in ``1 .. T``, every step beyond a length all zeros);
:func:`load` applies a policy: ``lengths="use"`` (default) keeps them, ``"ignore"`` drops them with
a :class:`DataWarning`; ``pad="end"`` (default) keeps the file's layout, ``"front"`` right-aligns
every sequence (:func:`pad_front`). :class:`Standardizer` fits on the real steps only and keeps the
padding at exactly 0. The generated default set and UCI HAR have no lengths (``None``): every
sequence is ``T`` steps long. The solvers do not use the lengths yet. Static data has no time
steps, so it has no lengths (a :class:`~mgritnn.errors.DataError` if a file or ``seq_len`` gives
them); :class:`Standardizer` standardises it per feature.
"""

import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mgritnn.errors import ConfigError, DataError, MgritnnWarning
from mgritnn.io import open_npz, read_member
from mgritnn.options import check_choice
from mgritnn.peaks import (PEAKS_GRID, PEAKS_LEVELS, PEAKS_LIM, level_set_labels, matlab_draw,
                           peaks_grid)

__all__ = [
    "check_source",
    "DATA_KINDS",
    "MODEL_DATA_KINDS",
    "check_data_kind",
    "DataWarning",
    "GENERATED_SOURCES",
    "PEAKS_SAMPLING",
    "Dataset",
    "Standardizer",
    "UCI_HAR_CHANNELS",
    "UCI_HAR_CLASS_NAMES",
    "fix_length",
    "load",
    "load_npz",
    "LENGTHS_POLICIES",
    "PAD_POLICIES",
    "load_uci_har_dir",
    "make_oscillations",
    "oscillation_frequencies",
    "pad_front",
    "peaks_dataset",
    "real_steps",
    "resolve_classes",
    "validate",
]

#: The nine ``Inertial Signals`` channels of UCI HAR, in the order of ``uci_har.npz``.
UCI_HAR_CHANNELS = (
    "body_acc_x", "body_acc_y", "body_acc_z",
    "body_gyro_x", "body_gyro_y", "body_gyro_z",
    "total_acc_x", "total_acc_y", "total_acc_z",
)
#: UCI HAR activity names; class ``k`` is the standard label ``k + 1``.
UCI_HAR_CLASS_NAMES = (
    "WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING",
)
_UCI_HAR_DIRNAME = "UCI HAR Dataset"
_NPZ_KEYS = ("X_train", "y_train", "X_test", "y_test")
_LENGTH_KEYS = ("len_train", "len_test")
#: The choices of :func:`load`'s ``lengths`` (``--lengths``): keep the true lengths of the data,
#: or drop them (the padding then counts as data). The first is the default.
LENGTHS_POLICIES = ("use", "ignore")
#: The choices of :func:`load`'s ``pad`` (``--pad``): where the zero padding of a shorter sequence
#: lies, after its real steps (the layout of the files) or before them. The first is the default.
PAD_POLICIES = ("end", "front")
#: The kinds of data set (:attr:`Dataset.kind`): sequences ``(N, T, C)`` or static features
#: ``(N, F)``.
DATA_KINDS = ("sequence", "static")
#: The kind of data each model trains on (:func:`check_data_kind`).
MODEL_DATA_KINDS = {"gru": "sequence", "odenet": "static"}
#: The choices of :func:`peaks_dataset`'s ``sampling``: the paper's points, or disjoint seeded ones.
PEAKS_SAMPLING = ("paper", "disjoint")


class Dataset(NamedTuple):
    """A classification data set with a train and a test split, of sequences or static features.

    Attributes
    ----------
    X_train : np.ndarray, shape (N, T, C) or (N, F), float32
        Training sequences (samples, time steps, channels), or static feature vectors (samples,
        features); :attr:`kind` tells which.
    y_train : np.ndarray, shape (N,), int64
        0-based training labels in ``0 .. num_classes - 1``.
    X_test : np.ndarray, shape (M, T, C) or (M, F), float32
        Test data of the same kind and the same ``T`` and ``C`` (or ``F``) as the training set.
    y_test : np.ndarray, shape (M,), int64
        0-based test labels.
    num_classes : int
        Number of classes.
    name : str
        Short human-readable name of the source (``"oscillations"``, a file name, ...).
    class_names : tuple of str, length num_classes
        ``class_names[k]`` names class ``k``.
    len_train : np.ndarray, shape (N,), int64, or None
        True length of each training sequence, in ``1 .. T``; the other ``T - len_train[i]``
        steps of sequence ``i`` are zero padding (where: see ``pad``). None: every sequence has
        all ``T`` steps.
    len_test : np.ndarray, shape (M,), int64, or None
        The same for the test sequences; None exactly when ``len_train`` is None. Always None
        for static data.
    pad : {"end", "front"}
        Where the padding lies: after the real steps (``"end"``: steps ``len .. T - 1``) or
        before them (``"front"``: steps ``0 .. T - len - 1``). Irrelevant without lengths.
    image_shape : tuple of 3 ints or None
        Static data only: the samples are images (C, H, W), each row of X one image flattened
        in C order (F = C H W); what a convolutional ODENet (``--layer conv``) needs. None:
        plain feature vectors.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    class_names: tuple
    len_train: np.ndarray = None
    len_test: np.ndarray = None
    pad: str = "end"
    image_shape: tuple = None

    @property
    def kind(self) -> str:
        """``"sequence"`` for 3-D ``X_train`` (N, T, C), ``"static"`` for 2-D (N, F)."""
        return DATA_KINDS[1] if np.ndim(self.X_train) == 2 else DATA_KINDS[0]

    @property
    def is_sequence(self) -> bool:
        """True for sequence data (N, T, C), False for static data (N, F)."""
        return self.kind == DATA_KINDS[0]

    @property
    def seq_len(self) -> int:
        """Number of time steps ``T`` (``X_train.shape[1]``) of sequence data.

        Raises
        ------
        DataError
            For static data, which has no time steps (the message says to use an ODENet).
        """
        if not self.is_sequence:
            raise DataError(_kind_message(self, "a sequence model (the GRU)", "sequence"))
        return self.X_train.shape[1]

    @property
    def num_channels(self) -> int:
        """Number of inputs per step ``C`` of sequence data, or of features ``F`` of static data
        (``X_train.shape[-1]``)."""
        return self.X_train.shape[-1]


def _kind_message(ds, model, wanted, fix=None):
    """The DataError message for data ``ds`` of the wrong kind for ``model`` (which wants
    ``wanted`` data): the problem and the fix (``fix``; default: train the other model, or give
    data of the wanted kind)."""
    shape = np.shape(ds.X_train)
    if wanted == "sequence":
        return (f"data set {ds.name!r} is static (X_train has shape {shape} = (samples, "
                f"features), no time axis), but {model} needs sequences (N, T, C): "
                + (fix or "train it with --model odenet, or give sequence data (--data)"))
    return (f"data set {ds.name!r} holds sequences (X_train has shape {shape} = (samples, time "
            f"steps, channels)), but {model} needs static feature vectors (N, F): "
            + (fix or "train it with --model gru, or give static data (--data peaks, or a .npz "
               "with 2-D X_train/X_test)"))


def check_data_kind(ds, model, who=None, fix=None):
    """Check that a model can train on a data set's kind, before any work.

    Parameters
    ----------
    ds : Dataset
        The data (see :attr:`Dataset.kind`).
    model : str
        A key of :data:`MODEL_DATA_KINDS`: ``"gru"`` (sequences) or ``"odenet"`` (static).
    who, fix : str, optional
        What needs the data and the fix, in the message (default: ``--model <model>``; train
        the other model or give other data).

    Returns
    -------
    Dataset
        ``ds`` unchanged.

    Raises
    ------
    DataError
        If the kinds differ: static data for a GRU (the message says ``--model odenet``), or
        sequences for an ODENet (``--model gru``).
    ConfigError
        If ``model`` is not a key of :data:`MODEL_DATA_KINDS`.
    """
    check_choice("model", model, tuple(MODEL_DATA_KINDS))
    wanted = MODEL_DATA_KINDS[model]
    if ds.kind != wanted:
        raise DataError(_kind_message(ds, who or f"--model {model}", wanted, fix))
    return ds


# --------------------------------------------------------------------------------------------
# The embedded default data set
# --------------------------------------------------------------------------------------------

def oscillation_frequencies(num_classes):
    """Class frequencies of :func:`make_oscillations`, in cycles per time step.

    Geometrically spaced from 1/32 to 1/8 (periods 32 down to 8 steps): neighbouring classes differ
    by the ratio ``4 ** (1 / (num_classes - 1))`` (1.59 for 4 classes), so telling them apart
    needs several periods of signal.

    Parameters
    ----------
    num_classes : int
        Number of classes, >= 2.

    Returns
    -------
    np.ndarray, shape (num_classes,), float64
        Increasing frequencies.
    """
    return np.geomspace(1.0 / 32.0, 1.0 / 8.0, num_classes)


def _oscillation_split(rng, n, seq_len, freqs, mix, noise):
    """Draw ``n`` balanced samples; returns (X float32 (n, seq_len, C), y int64 (n,))."""
    y = rng.permutation(np.arange(n) % len(freqs))
    f = freqs[y] * (1.0 + rng.uniform(-0.03, 0.03, n))       # +-3 % jitter
    amplitude = rng.uniform(0.75, 1.25, n)
    phase = rng.uniform(0.0, 2.0 * np.pi, n)
    t = np.arange(seq_len, dtype=np.float64)
    source = amplitude[:, None] * np.sin(2.0 * np.pi * f[:, None] * t + phase[:, None])
    X = source[:, :, None] * mix                              # (n, seq_len, C)
    X += noise * rng.standard_normal(X.shape)
    return X.astype(np.float32), y.astype(np.int64)


def make_oscillations(n_train=2000, n_test=500, seq_len=128, num_classes=4, channels=3,
                      noise=0.5, seed=0) -> Dataset:
    """Generate the default task: classify noisy multi-channel oscillations by their frequency.

    Each sample is one sinusoid ``a sin(2 pi f t + phi)`` of its class frequency ``f`` (see
    :func:`oscillation_frequencies`; +-3 % per-sample jitter) with a random phase ``phi`` and a
    random amplitude ``a`` in [0.75, 1.25]. It is mixed into the channels with a random sign per
    channel (one mix for the whole data set, drawn from ``seed``) and i.i.d. Gaussian noise of
    standard deviation ``noise`` is added to every value. So:

    * a single time step carries no class information (random phase);
    * a single channel has 1/C of the signal-to-noise ratio of the signed sum of all channels,
      which a model has to learn;
    * the class is found by integrating over many time steps (periods 8 to 32 steps).

    Frequencies are in cycles per time step, so the task means the same for any ``seq_len``.
    Classes are balanced (counts differ by at most one). The test set is drawn after the training
    set from the same generator, so the training set does not depend on ``n_test``.

    Generation costs O(n T C); 2000 x 128 x 3 takes a few tens of milliseconds.

    Parameters
    ----------
    n_train, n_test : int
        Number of training / test samples, >= 1.
    seq_len : int
        Time steps per sequence ``T``, >= 1.
    num_classes : int
        Number of frequency classes, >= 2.
    channels : int
        Number of channels ``C``, >= 1.
    noise : float
        Standard deviation of the additive Gaussian noise, >= 0.
    seed : int
        Seed of ``np.random.default_rng``; the same seed gives the same data.

    Returns
    -------
    Dataset
        ``X_train`` (n_train, seq_len, channels) float32, ``y_train`` (n_train,) int64,
        ``X_test`` (n_test, seq_len, channels) float32, ``y_test`` (n_test,) int64,
        ``class_names`` like ``"f0=0.031"``.

    Raises
    ------
    DataError
        If a size is out of range or ``noise`` is negative.

    Notes
    -----
    Measured with a NumPy reference GRU (1 layer, hidden 32, linear head on the last state,
    standardised inputs, Adam lr 1e-2, batch 100, no clipping) on seeds 0-7 at the defaults: test
    accuracy after 3 epochs 0.66-0.99, mean 0.92 (7 of 8 runs >= 0.90; chance 0.25). A periodogram
    nearest-centroid classifier scores ~1.0, a single time step ~chance.
    """
    for what, value, low in (("n_train", n_train, 1), ("n_test", n_test, 1),
                             ("seq_len", seq_len, 1), ("num_classes", num_classes, 2),
                             ("channels", channels, 1)):
        if int(value) != value or value < low:
            raise DataError(f"make_oscillations: {what} must be an integer >= {low}, got {value!r}")
    if not noise >= 0:
        raise DataError(f"make_oscillations: noise must be >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    freqs = oscillation_frequencies(int(num_classes))
    mix = rng.choice([-1.0, 1.0], int(channels))
    X_train, y_train = _oscillation_split(rng, int(n_train), int(seq_len), freqs, mix, noise)
    X_test, y_test = _oscillation_split(rng, int(n_test), int(seq_len), freqs, mix, noise)
    class_names = tuple(f"f{k}={f:.3f}" for k, f in enumerate(freqs))
    return Dataset(X_train, y_train, X_test, y_test, int(num_classes), "oscillations", class_names)


def peaks_dataset(n_train_per_class=1000, n_test_per_class=40, num_classes=PEAKS_LEVELS,
                  grid=PEAKS_GRID, sampling="paper", seed=0) -> Dataset:
    """Generate the static Peaks problem: classify grid points of [-3, 3]^2 by level set.

    The points are those of :func:`mgritnn.peaks.peaks_grid` (``grid x grid`` points, spacing
    ``6 / (grid - 1)``); a point's class is its level set of MATLAB's ``peaks`` among
    ``num_classes`` equal-width bins between the grid's minimum and maximum
    (:func:`mgritnn.peaks.level_set_labels`). Which points form the splits (:data:`PEAKS_SAMPLING`):

    * ``"paper"`` (default): the layer-parallel paper's rule (:func:`mgritnn.peaks.matlab_draw`):
      per class, uniform draws *with replacement* by MATLAB's default generator, restarted for
      each split. With the defaults this is exactly ``shared/data/peaks.npz``: the same 5000
      training and 200 validation points, in the file's order, with its labels. It inherits the
      paper's flaws: 639 training points are repeats, and all 40 validation points of class 0
      are the first 40 training points of class 0 (72 of the 200 are training points). ``seed``
      is not used.
    * ``"disjoint"``: per class, drawn from ``seed`` without replacement, the test points
      disjoint from the training points (an honest validation set; not the paper's points).

    Both splits are sorted by class, like the file (shuffle before use; the trainer does).

    Parameters
    ----------
    n_train_per_class, n_test_per_class : int
        Training / test points per class, >= 1; with ``"disjoint"`` their sum may not exceed the
        grid points of the smallest class (1798 for the defaults).
    num_classes : int
        Number of level sets, >= 2.
    grid : int
        Grid points per axis, >= 2.
    sampling : {"paper", "disjoint"}
        The rule that picks the points, see above.
    seed : int
        Seed of ``np.random.default_rng`` for ``"disjoint"``.

    Returns
    -------
    Dataset
        Static (``kind == "static"``): ``X_train`` (num_classes * n_train_per_class, 2) float32
        points (x, y), ``y_train`` int64, ``X_test`` (num_classes * n_test_per_class, 2) float32,
        ``y_test`` int64, ``class_names`` ``level_set_1 ..`` (as in ``peaks.npz``), name
        ``"peaks"``, no lengths.

    Raises
    ------
    DataError
        If a size is out of range, a class has no grid points, or (``"disjoint"``) a class has
        too few grid points for the requested counts.
    ConfigError
        If ``sampling`` is not one of :data:`PEAKS_SAMPLING`.
    """
    check_choice("sampling", sampling, PEAKS_SAMPLING)
    for what, value, low in (("n_train_per_class", n_train_per_class, 1),
                             ("n_test_per_class", n_test_per_class, 1),
                             ("num_classes", num_classes, 2), ("grid", grid, 2)):
        if isinstance(value, (bool, np.bool_)) or int(value) != value or value < low:
            raise DataError(f"peaks_dataset: {what} must be an integer >= {low}, got {value!r}")
    n_train, n_test, C, grid = int(n_train_per_class), int(n_test_per_class), int(num_classes), \
        int(grid)
    coords, values = peaks_grid(grid, PEAKS_LIM)
    labels = level_set_labels(values, C)
    counts = np.bincount(labels, minlength=C)
    need = n_train + n_test if sampling == "disjoint" else 1
    if counts.min() < need:
        k = int(np.argmin(counts))
        raise DataError(f"peaks_dataset: level set {k} has {counts[k]} of the {grid}x{grid} grid "
                        f"points but {need} are needed ({n_train} + {n_test} per class without "
                        f"repeats): ask for fewer per class, or a finer grid"
                        if sampling == "disjoint" else
                        f"peaks_dataset: level set {k} has no points on the {grid}x{grid} grid: "
                        f"use a finer grid or fewer classes")
    if sampling == "paper":
        train, test = matlab_draw(labels, n_train, C, grid), matlab_draw(labels, n_test, C, grid)
    else:
        rng = np.random.default_rng(seed)
        chosen = [rng.permutation(np.flatnonzero(labels == k))[:need] for k in range(C)]
        train = np.concatenate([c[:n_train] for c in chosen])
        test = np.concatenate([c[n_train:] for c in chosen])
    class_names = tuple(f"level_set_{k + 1}" for k in range(C))
    return Dataset(coords[train].astype(np.float32), labels[train], coords[test].astype(np.float32),
                   labels[test], C, "peaks", class_names)


# --------------------------------------------------------------------------------------------
# File loaders
# --------------------------------------------------------------------------------------------

class DataWarning(MgritnnWarning):
    """A data set that can be used but probably not as intended: a declared class (``class_names``
    or ``num_classes``) without training samples. The command line shows it as one line
    ``mgritnn: warning: ...`` on stderr."""


def _warn(message):
    warnings.warn(message, DataWarning, stacklevel=3)


def _missing_ranges(present, stop):
    """The integers of ``0 .. stop - 1`` absent from the sorted unique ``present``, as inclusive
    ranges ``[(a, b), ...]``; costs O(len(present)), however large ``stop`` is."""
    ranges, expect = [], 0
    for v in (int(x) for x in present):
        if v >= stop:
            break
        if v > expect:
            ranges.append((expect, v - 1))
        expect = max(expect, v + 1)
    if expect < stop:
        ranges.append((expect, stop - 1))
    return ranges


def _count(ranges):
    return sum(b - a + 1 for a, b in ranges)


def _describe(ranges, class_names=None, limit=6):
    """``"3"``, ``"2 ('b'), 5"`` or ``"3..99"`` for the classes in ``ranges`` (the first few)."""
    parts = []
    for a, b in ranges[:limit]:
        if a == b:
            name = (f" ({class_names[a]!r})" if class_names is not None and
                    class_names[a] != str(a) else "")
            parts.append(f"{a}{name}")
        else:
            parts.append(f"{a}..{b}")
    more = f" and {len(ranges) - limit} more range(s)" if len(ranges) > limit else ""
    return ", ".join(parts) + more


def _class_word(ranges):
    return "class" if _count(ranges) == 1 else "classes"


def _it(ranges):
    return "it" if _count(ranges) == 1 else "them"


def _s(ranges):
    return "s" if _count(ranges) == 1 else ""


def _positive_count(value, what, least):
    """``value`` as an int >= ``least``, else a ConfigError naming ``what``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < least:
        raise ConfigError(f"{what} must be an integer >= {least} (a classifier needs at least two "
                          f"classes), got {value!r}")
    return int(value)


def _one_based_hint(lo, hi, num_classes):
    if lo >= 1 and hi == num_classes:
        return f" (the labels run 1..{hi}, so they look 1-based: subtract 1 from them)"
    return ""


def resolve_classes(y_train, y_test, class_names=None, num_classes=None, model_classes=None,
                    name="the data set"):
    """Decide the class set of a data set and check its labels against it.

    The class set comes from the first of:

    1. ``class_names`` stored with the data (declared): ``len(class_names)`` classes;
    2. ``num_classes`` (the ``--num-classes`` option; declared);
    3. ``model_classes``, the number of outputs of the model the data is evaluated with
       (``mgritnn eval``/``predict``; declared);
    4. the labels (inferred): ``max(y_train, y_test) + 1`` classes.

    What is an error (:class:`~mgritnn.errors.DataError`, or ``ConfigError`` for a bad option)
    and what is a warning (:class:`DataWarning`):

    * error: a negative label; a label ``>= C`` with a declared class set (the message names where
      ``C`` came from, class_names or ``--num-classes`` or the model, and says "subtract 1" when
      the labels look 1-based, i.e. they run 1..C); fewer than 2 classes; ``num_classes`` that
      contradicts the stored ``class_names``; ``class_names`` with more classes than the model
      (with ``model_classes``);
    * error, inferred class set only: labels 1..K without a 0 (1-based: "subtract 1, or pass
      --num-classes"); a class in ``0 .. max`` that no label uses (a gap, named: remap the
      labels, or declare the classes); a class that appears in ``y_test`` but not in ``y_train``
      (the model cannot learn it);
    * warning, declared class set only (not with ``model_classes``): a declared class without
      training samples (a declared class may be rare or absent from one file on purpose, so the
      run goes on; the warning names the classes and how many test samples of them there are).

    Parameters
    ----------
    y_train, y_test : np.ndarray, shape (N,) and (M,), integer
        Labels, already checked to be 1-D integers (:func:`validate` does that).
    class_names : sequence of str or None
        Names stored with the data.
    num_classes : int or None
        The number of classes the user declared (``--num-classes``), >= 2.
    model_classes : int or None
        The number of classes of the model the data is for (evaluation); labels must lie in
        ``0 .. model_classes - 1`` and ``class_names`` may have at most that many entries.
    name : str
        The data set in messages (e.g. the file's path, quoted).

    Returns
    -------
    num_classes : int
    class_names : tuple of str, length num_classes
        The given names, or ``"0"``, ``"1"``, ... without them.

    Raises
    ------
    DataError, ConfigError
        As listed above; every message names the problem and the fix.
    """
    y_train = np.asarray(y_train, dtype=np.int64).ravel()
    y_test = np.asarray(y_test, dtype=np.int64).ravel()
    if num_classes is not None:
        num_classes = _positive_count(num_classes, "--num-classes", 2)
    if model_classes is not None:
        model_classes = _positive_count(model_classes, "the model's number of classes", 2)
    splits = [(w, y) for w, y in (("y_train", y_train), ("y_test", y_test)) if y.size]
    for what, y in splits:
        if int(y.min()) < 0:
            raise DataError(f"{name}: {what} has the negative label {int(y.min())}; labels must be "
                            f"0-based class indices 0 .. num_classes - 1 (remap them, e.g. with "
                            f"np.unique(y, return_inverse=True))")

    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        C = len(class_names)
        if num_classes is not None and num_classes != C:
            raise ConfigError(f"--num-classes {num_classes} contradicts the {C} class_names stored "
                              f"in {name}: drop --num-classes (the stored class_names fix the "
                              f"classes), or store {num_classes} class_names")
        if model_classes is not None and C > model_classes:
            raise DataError(f"{name} has {C} classes (its class_names) but the model has "
                            f"{model_classes}: evaluate on data of the model's {model_classes} "
                            f"classes, or train a model on this data")
        if C < 2:
            raise DataError(f"{name} stores {C} class_names; a classifier needs at least 2 "
                            f"classes: store one name per class")
        origin = "class_names"
    elif num_classes is not None:
        C, origin = num_classes, "--num-classes"
    elif model_classes is not None:
        C, origin = model_classes, "model"
    else:
        C = None
    declared = C is not None

    if declared:
        lo = min(int(y.min()) for _, y in splits) if splits else 0
        hi_all = max(int(y.max()) for _, y in splits) if splits else 0
        one_based = lo >= 1 and hi_all == C
        for what, y in splits:
            hi = int(y.max())
            if hi < C:
                continue
            labels = f"{name}: {what} has labels in [{int(y.min())}, {hi}]"
            subtract = f"the labels look 1-based (1..{C}): subtract 1 from them"
            if origin == "class_names":
                fix = (subtract if one_based else f"store one class name per class ({hi + 1} or "
                       f"more) in class_names, or remap the labels to 0..{C - 1}")
                raise DataError(f"{labels} but class_names has only {C} entries (classes "
                                f"0..{C - 1}): {fix}")
            if origin == "--num-classes":
                fix = (f"{subtract}, or pass --num-classes {hi + 1}" if one_based else
                       f"pass --num-classes {hi + 1} (or more), or remap the labels to 0..{C - 1}")
                raise DataError(f"{labels} but --num-classes is {C} (classes 0..{C - 1}): {fix}")
            fix = (subtract if one_based else f"evaluate on data labelled with the model's "
                   f"classes 0..{C - 1}, or train a model on this data")
            raise DataError(f"{labels} ({hi + 1} classes) but the model has {C} classes: {fix}")
        if class_names is None:
            class_names = tuple(str(k) for k in range(C))
        if model_classes is None:
            absent = _missing_ranges(np.unique(y_train), C)
            if absent:
                n_test = int(np.count_nonzero(~np.isin(y_test, y_train)))
                test_note = (f"; {n_test} test sample(s) belong to {_it(absent)} and will be "
                             f"misclassified" if n_test else "")
                k = _count(absent)
                have = "has" if k == 1 else "have"
                _warn(f"{name}: {k} of the {C} classes (from {origin}) {have} no training "
                      f"samples: {_class_word(absent)} "
                      f"{_describe(absent, class_names)}; the model cannot learn {_it(absent)}"
                      f"{test_note} (add training samples, or leave {_it(absent)} out of the "
                      f"class set)")
        return C, class_names

    # inferred from the labels
    present = np.unique(np.concatenate([y_train, y_test]))
    if present.size == 0:
        return 0, ()                          # empty splits: validate() explains
    C = int(present[-1]) + 1
    if C < 2:
        raise DataError(f"{name}: every label is 0, so there is only one class; a classifier "
                        f"needs at least 2: check the labels (or declare the class set with "
                        f"--num-classes or class_names)")
    gaps = _missing_ranges(present, C)
    if gaps and gaps[0][0] == 0 and int(present[0]) == 1:
        raise DataError(f"{name}: the labels run from 1 to {C - 1} and no label is 0, so they "
                        f"look 1-based: subtract 1 from y_train and y_test (0-based labels 0.."
                        f"{C - 2}), or pass --num-classes {C} if class 0 exists but has no samples")
    if gaps:
        raise DataError(f"{name}: {_class_word(gaps)} {_describe(gaps)} never "
                        f"appear{_s(gaps)} in the labels, but the class count is inferred from "
                        f"the largest label {C - 1} as {C}: remap the labels to 0..K-1 (e.g. "
                        f"with np.unique(y, return_inverse=True)), or pass --num-classes {C} (or "
                        f"store class_names) to keep classes without samples")
    test_only = _missing_ranges(np.unique(y_train), C)
    if test_only:
        n_test = int(np.count_nonzero(~np.isin(y_test, y_train)))
        raise DataError(f"{name}: {_class_word(test_only)} {_describe(test_only)} "
                        f"appear{_s(test_only)} in y_test ({n_test} sample(s)) but never in "
                        f"y_train, so the model cannot learn {_it(test_only)}: move samples of "
                        f"{_it(test_only)} into the training split, or pass --num-classes {C} "
                        f"(or store class_names) to train anyway")
    return C, tuple(str(k) for k in range(C))


_MAKE_NPZ = f"np.savez(path, {', '.join(k + '=...' for k in _NPZ_KEYS)})"


def _open_npz(path):
    """The data archive ``path`` opened without pickle (see :func:`mgritnn.io.open_npz`)."""
    return open_npz(path, DataError, "the data file", f"make it with {_MAKE_NPZ}")


def _read_member(archive, key, path):
    return read_member(archive, key, path, DataError, f"write it again with {_MAKE_NPZ}")


def load_npz(path, num_classes=None, model_classes=None) -> Dataset:
    """Load a sequence or static data set from a NumPy ``.npz`` archive.

    The archive holds ``X_train`` (N, T, C), ``y_train`` (N,), ``X_test`` (M, T, C), ``y_test``
    (M,) with 0-based integer labels, and optionally ``class_names`` (a 1-D string array) and the
    true lengths ``len_train`` (N,) and ``len_test`` (M,) of sequences zero-padded at the end (both
    or neither); other keys (``subject_train``, ...) are ignored. With 2-D ``X_train`` (N, F) and
    ``X_test`` (M, F) it is a static data set (:attr:`Dataset.kind` ``"static"``), which may not
    have lengths. Images: ``X_train``/``X_test`` (N, C, H, W), flattened to (N, C H W), or
    (N, F) with an entry ``image_shape`` = [C, H, W] (F = C H W), give a static data set with
    :attr:`Dataset.image_shape` (``digits.npz``), what ``--layer conv`` needs. This is the
    layout of the files in ``shared/data`` (e.g. ``uci_har.npz``,
    ``japanese_vowels.npz``; static: ``peaks.npz``, ``indian_pines.npz``, whose raw band counts
    :class:`Standardizer` normalises per band). Opened without pickle: a
    file that is not a zip archive, a damaged archive and object arrays are refused with a
    :class:`~mgritnn.errors.DataError` (never by advising to allow pickle, which can run code).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    num_classes : int or None
        The number of classes (``--num-classes``); see :func:`resolve_classes`.
    model_classes : int or None
        The number of classes of the model the data is evaluated with; see
        :func:`resolve_classes`.

    Returns
    -------
    Dataset
        Validated (see :func:`validate`): X float32 (N, T, C) or (N, F), y int64 (N,). The
        class set is
        resolved by :func:`resolve_classes`: ``class_names`` of the archive, else
        ``num_classes``, else ``model_classes``, else ``max(y_train, y_test) + 1`` from the
        labels (class names are then ``"0"``, ``"1"``, ...). ``name`` is the file name without
        extension. ``len_train``/``len_test`` are int64 (N,)/(M,), or None when the file has
        none; ``pad`` is ``"end"``.

    Raises
    ------
    DataError
        If the file is missing, not an .npz archive or damaged, lacks a required key, or holds
        unusable data (e.g. ``X`` neither 3-D nor 2-D, a 3-D and a 2-D split, labels that do
        not fit the class set, only one of ``len_train``/``len_test``, lengths with 2-D data, or
        lengths that contradict the padding; see :func:`validate`).
    ConfigError
        If ``num_classes`` is not an integer >= 2 or contradicts the stored ``class_names``.

    Warns
    -----
    DataWarning
        If a declared class has no training samples.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data file {str(path)!r} is a directory, not a .npz file: name the .npz "
                        "archive (a file)")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found; expected a .npz archive with "
                        f"{', '.join(_NPZ_KEYS)}")
    with _open_npz(path) as archive:
        missing = [k for k in _NPZ_KEYS if k not in archive.files]
        if missing:
            raise DataError(f"{str(path)!r} lacks {', '.join(missing)}; a sequence data set needs "
                            f"the arrays {', '.join(_NPZ_KEYS)} (found: "
                            f"{', '.join(archive.files) or 'none'})")
        arrays = {k: _read_member(archive, k, path)
                  for k in _NPZ_KEYS + _LENGTH_KEYS if k in archive.files}
        names = (_read_member(archive, "class_names", path) if "class_names" in archive.files
                 else None)
        shape = (_read_member(archive, "image_shape", path) if "image_shape" in archive.files
                 else None)
    if names is not None:
        names = np.asarray(names)
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{str(path)!r}: class_names must be a 1-D string array, got "
                            f"dtype {names.dtype} shape {names.shape}")
        names = tuple(names.astype(str).tolist())
    X_train, X_test, shape = _flat_images(arrays["X_train"], arrays["X_test"], shape, path)
    raw = Dataset(X_train, arrays["y_train"], X_test, arrays["y_test"],
                  0, path.stem, (), arrays.get("len_train"), arrays.get("len_test"),
                  image_shape=shape)
    return _with_classes(raw, names, num_classes, model_classes, repr(str(path)))


def _flat_images(X_train, X_test, shape, path):
    """Images of an archive as static rows: 4-D ``X`` (N, C, H, W) flattened to (N, C H W),
    and the image shape (C, H, W) from them or from the archive's ``image_shape`` entry
    (``shape``, checked against the arrays); ``(X_train, X_test, image_shape or None)``."""
    where = repr(str(path))
    if shape is not None:
        shape = np.asarray(shape)
        if shape.shape != (3,) or shape.dtype.kind not in "iu" or np.any(shape < 1):
            raise DataError(f"{where}: image_shape must be three integers >= 1 (C, H, W), got "
                            f"{shape.tolist()!r}: write it again as np.array([C, H, W])")
        shape = tuple(int(v) for v in shape)
    for split, X in (("train", X_train), ("test", X_test)):
        if np.ndim(X) == 4:
            if shape is not None and tuple(np.shape(X)[1:]) != shape:
                raise DataError(f"{where}: X_{split} holds images of shape {np.shape(X)[1:]} "
                                f"but image_shape is {shape}: make them agree")
            shape = tuple(np.shape(X)[1:])
    if shape is None:
        return X_train, X_test, None
    out = []
    for split, X in (("train", X_train), ("test", X_test)):
        if np.ndim(X) == 4:
            X = np.reshape(X, (np.shape(X)[0], -1))
        if np.ndim(X) != 2 or np.shape(X)[1] != int(np.prod(shape)):
            raise DataError(f"{where}: image_shape {shape} needs X_{split} of shape (N, "
                            f"{int(np.prod(shape))}) or (N, {', '.join(map(str, shape))}), got "
                            f"{np.shape(X)}: fix image_shape or the arrays")
        out.append(X)
    return out[0], out[1], shape


def _with_classes(raw, class_names, num_classes, model_classes, name):
    """Check the arrays of ``raw``, resolve its class set (:func:`resolve_classes`), validate."""
    X_train, y_train, X_test, y_test, len_train, len_test = _checked_arrays(raw, name)
    C, names = resolve_classes(y_train, y_test, class_names, num_classes, model_classes, name)
    return validate(raw._replace(X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
                                 num_classes=C, class_names=names, len_train=len_train,
                                 len_test=len_test))


def _uci_har_files(split):
    """Paths (relative to the ``UCI HAR Dataset`` dir) of one split: (signal files, label file)."""
    signals = [Path(split, "Inertial Signals", f"{ch}_{split}.txt") for ch in UCI_HAR_CHANNELS]
    return signals, Path(split, f"y_{split}.txt")


def _read_uci_har_txt(file, ndmin):
    """Read one whitespace-separated UCI HAR text file as float64."""
    try:
        return np.loadtxt(file, dtype=np.float64, ndmin=ndmin)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {str(file)!r} as whitespace-separated numbers: "
                        f"{exc}") from exc


def _read_uci_har_split(root, split):
    """Read one split; returns (X float32 (N, T, 9), y float64 (N,) 0-based)."""
    signal_files, label_file = _uci_har_files(split)
    y = _read_uci_har_txt(root / label_file, ndmin=1) - 1.0
    signals = [_read_uci_har_txt(root / f, ndmin=2) for f in signal_files]
    for f, s in zip(signal_files, signals):
        if s.shape != signals[0].shape:
            raise DataError(f"{str(root / f)!r} has shape {s.shape} but "
                            f"{str(root / signal_files[0])!r} has {signals[0].shape}; all nine "
                            f"Inertial Signals files of a split need the same rows x time steps")
    if signals[0].shape[0] != y.shape[0]:
        raise DataError(f"{str(root / label_file)!r} has {y.shape[0]} labels but the "
                        f"Inertial Signals files have {signals[0].shape[0]} rows; they must match")
    return np.stack(signals, axis=-1).astype(np.float32), y


def load_uci_har_dir(path, num_classes=None, model_classes=None) -> Dataset:
    """Load the raw inertial signals of UCI HAR from the standard directory layout.

    Reads ``{split}/Inertial Signals/{channel}_{split}.txt`` for the nine channels of
    :data:`UCI_HAR_CHANNELS` (each file: N rows of T whitespace-separated floats, T = 128 in the
    original) and ``{split}/y_{split}.txt`` (labels 1..6, made 0-based) for split in train, test.

    Parameters
    ----------
    path : str or os.PathLike
        The ``UCI HAR Dataset`` directory, or a directory that contains ``UCI HAR Dataset/``.
    num_classes, model_classes : int or None
        As for :func:`resolve_classes`; the six :data:`UCI_HAR_CLASS_NAMES` fix the class set, so
        ``num_classes`` other than 6 is an error, and so is a model of fewer than 6 classes.

    Returns
    -------
    Dataset
        Validated: ``X_train`` (N, T, 9) float32 in the channel order of :data:`UCI_HAR_CHANNELS`
        (the order of ``uci_har.npz``), ``y_train`` (N,) int64, ``X_test`` (M, T, 9), ``y_test``
        (M,), ``num_classes`` 6, ``class_names`` :data:`UCI_HAR_CLASS_NAMES`, name ``"uci_har"``.

    Raises
    ------
    DataError
        If ``path`` is not a directory, files are missing (all missing ones are listed), a file
        cannot be parsed, or the files do not fit together.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is not a directory; expected the {_UCI_HAR_DIRNAME!r} "
                        f"directory (or its parent)")
    if (root / _UCI_HAR_DIRNAME).is_dir():
        root = root / _UCI_HAR_DIRNAME
    required = []
    for split in ("train", "test"):
        signal_files, label_file = _uci_har_files(split)
        required += signal_files + [label_file]
    missing = [str(f) for f in required if not (root / f).is_file()]
    if missing:
        raise DataError(f"{str(root)!r} is not a complete UCI HAR directory; missing "
                        f"{len(missing)} file(s): {', '.join(missing)}")
    X_train, y_train = _read_uci_har_split(root, "train")
    X_test, y_test = _read_uci_har_split(root, "test")
    raw = Dataset(X_train, y_train, X_test, y_test, 0, "uci_har", ())
    return _with_classes(raw, UCI_HAR_CLASS_NAMES, num_classes, model_classes, repr(str(root)))


def check_source(source, flag="--data"):
    """Check a data source without reading it (the one check of every data path, before any
    work): a generated set's name, an existing ``.npz`` file, or a directory (UCI HAR).

    Returns
    -------
    {"generated", "npz", "dir"}

    Raises
    ------
    DataError
        For an empty source (an unset shell variable), a path that does not exist, a directory
        named like a ``.npz`` file, or a path that is neither a ``.npz`` file nor a directory.
    """
    if isinstance(source, str) and source in _GENERATED:
        return "generated"
    text = os.fspath(source)
    hint = "use 'default', 'peaks', a .npz archive or a UCI HAR directory"
    if not str(text).strip():
        raise DataError(f"{flag} is empty ({text!r}; an unset shell variable?): {hint}, or leave "
                        f"{flag} out for the default set")
    path = Path(text)
    if path.is_dir():
        if path.suffix.lower() == ".npz":
            raise DataError(f"{flag} {text!r} is a directory, not a .npz file: name the .npz "
                            "archive (a file), or a UCI HAR directory")
        return "dir"
    if not path.exists():
        raise DataError(f"{flag} {text!r} does not exist; check the path ({hint})")
    if path.suffix.lower() == ".npz":
        return "npz"
    raise DataError(f"{flag} {text!r} is neither a .npz file nor a directory; {hint}")


def load(source="default", seq_len=None, seed=0, num_classes=None, model_classes=None,
         lengths="use", pad="end") -> Dataset:
    """Load a data set by source name.

    Parameters
    ----------
    source : str or os.PathLike
        ``"default"`` for :func:`make_oscillations`; ``"peaks"`` for :func:`peaks_dataset`
        (static); a path ending in ``.npz`` for :func:`load_npz` (sequence or static); a
        directory for :func:`load_uci_har_dir`. The two names win over files of the same name
        (write ``./peaks`` for a file).
    seq_len : int or None
        Sequence length. For ``"default"`` the generated length (None: 128); for a file source,
        truncate or zero-pad both splits at the end to this length (None: keep the file's).
        Truncation clips the lengths to ``min(length, seq_len)``; padding leaves them. Must be
        None for static data (a :class:`~mgritnn.errors.DataError` otherwise).
    seed : int
        Seed of the generated default data set (ignored for ``"peaks"``, which is the paper's
        data, exactly ``shared/data/peaks.npz`` with 5 classes, and for files).
    num_classes : int or None
        The number of classes (``--num-classes``, >= 2). For ``"default"`` the number of
        generated classes (None: 4), for ``"peaks"`` the number of level sets (None: 5); for a
        file, the class set when the file stores no
        ``class_names`` (see :func:`resolve_classes`: it must agree with stored class_names,
        labels must lie below it, and a class without training samples is a warning).
    model_classes : int or None
        The number of classes of the model the data is evaluated with (``mgritnn eval`` and
        ``predict``): labels must lie below it and the data may not have more classes; no warning
        about classes without samples (see :func:`resolve_classes`).
    lengths : {"use", "ignore"}
        What to do with the true lengths of a file that has them (``len_train``/``len_test``):
        ``"use"`` (default) keeps them (the standardization then counts the real steps only);
        ``"ignore"`` drops them (``None``) with a :class:`DataWarning` (none when every length is
        ``T``, as after a truncation to the shortest): the padding then counts as data. Data
        without lengths is the same under both.
    pad : {"end", "front"}
        ``"end"`` (default): the file's layout, padding after the real steps. ``"front"``:
        every sequence right-aligned (:func:`pad_front`, after the ``seq_len`` truncation), its
        real steps last, so the last state follows the last real step even where the lengths
        are not used. Data without lengths (every sequence ``T`` steps) is the same under both.

    Returns
    -------
    Dataset
        Validated: X float32 C-contiguous (N, T, C) (``kind`` ``"sequence"``) or (N, F)
        (``"static"``), y int64 (N,), ``len_train``/``len_test`` int64 (N,)/(M,) or None (always
        None for static data), ``pad`` as given (irrelevant for static data).

    Raises
    ------
    DataError
        For an unknown source or any problem with the data (including labels that do not fit the
        class set, a class set with gaps, see :func:`resolve_classes`, lengths that do not fit
        the data, see :func:`validate`, and a ``seq_len`` for static data).
    ConfigError
        For a ``num_classes`` that is not an integer >= 2 or contradicts the data's class names,
        or a ``lengths`` or ``pad`` that is not one of its choices.

    Warns
    -----
    DataWarning
        If a declared class has no training samples, or ``lengths`` is ``"ignore"`` and the data
        has padding (a length below ``T``).
    """
    check_choice("lengths", lengths, LENGTHS_POLICIES)
    check_choice("pad", pad, PAD_POLICIES)
    if isinstance(source, str) and source in _GENERATED:
        default_classes, make = _GENERATED[source]
        classes = (default_classes if num_classes is None
                   else _positive_count(num_classes, "--num-classes", 2))
        if source == "peaks":
            _no_seq_len(seq_len, "the peaks data set")
            ds = make(num_classes=classes)
        else:
            ds = make(seq_len=128 if seq_len is None else seq_len, seed=seed, num_classes=classes)
        if model_classes is not None and ds.num_classes > model_classes:
            raise DataError(f"the {source} data set has {ds.num_classes} classes but the model "
                            f"has {model_classes}: evaluate on data of the model's "
                            f"{model_classes} classes (--data), or train a model on this data")
    else:
        path = Path(os.fspath(source))
        if check_source(source) == "npz":
            ds = load_npz(path, num_classes, model_classes)
        else:
            ds = load_uci_har_dir(path, num_classes, model_classes)
        if not ds.is_sequence:
            _no_seq_len(seq_len, repr(str(source)))
        elif seq_len is not None:
            ds = ds._replace(X_train=fix_length(ds.X_train, seq_len),
                             X_test=fix_length(ds.X_test, seq_len))
            if ds.len_train is not None:
                ds = ds._replace(len_train=np.minimum(ds.len_train, seq_len),
                                 len_test=np.minimum(ds.len_test, seq_len))
    if ds.len_train is not None:
        if pad == "front":
            ds = ds._replace(X_train=pad_front(ds.X_train, ds.len_train),
                             X_test=pad_front(ds.X_test, ds.len_test))
        if lengths == "ignore":
            padded = ds.seq_len - min(int(ds.len_train.min()), int(ds.len_test.min()))
            if padded:
                _warn(f"{str(source)!r} has sequence lengths (len_train, len_test), which are "
                      f"ignored (--lengths ignore): the zero padding (up to {padded} step(s)) "
                      + ("at the end of the shorter sequences counts as data, in the "
                         "standardization too, and the classifier reads the state after the "
                         "padding (--pad front puts the padding before the real steps)"
                         if pad == "end" else
                         "before the real steps of the shorter sequences (--pad front) counts as "
                         "data, in the standardization too, and the recurrence runs through it "
                         "first"))
            ds = ds._replace(len_train=None, len_test=None)
    return validate(ds._replace(pad=pad))


#: The data sets :func:`load` generates by name: name -> (default class count, generator).
_GENERATED = {"default": (4, make_oscillations), "peaks": (PEAKS_LEVELS, peaks_dataset)}
#: The names :func:`load` generates in memory instead of reading a file (``--data default``,
#: ``--data peaks``).
GENERATED_SOURCES = tuple(_GENERATED)


def _no_seq_len(seq_len, what):
    """Raise DataError if a sequence length is asked of the static data set ``what``."""
    if seq_len is not None:
        raise DataError(f"{what} is static (samples x features, no time steps), so a sequence "
                        f"length (--seq-len {seq_len}) makes no sense: drop --seq-len (and use "
                        f"--model odenet)")


# --------------------------------------------------------------------------------------------
# Shape helpers, validation, scaling
# --------------------------------------------------------------------------------------------

def _check_sequences(X, what):
    """Raise DataError unless ``X`` is a 3-D numeric (N, T, C) array; returns it as an ndarray."""
    X = np.asarray(X)
    if X.ndim != 3:
        hint = (" (a 2-D array is (samples, features), static data without time steps; a "
                "series of scalars needs X[:, :, None])" if X.ndim == 2 else "")
        raise DataError(f"{what} has shape {X.shape}: a sequence data set needs X of shape "
                        f"(N, T, C) = (samples, time steps, channels){hint}")
    return _check_real(X, what)


def _check_inputs(X, what):
    """Raise DataError unless ``X`` is a numeric (N, T, C) (sequence) or (N, F) (static) array;
    returns it as an ndarray."""
    X = np.asarray(X)
    if X.ndim not in (2, 3):
        hint = (" (a 1-D array of scalars needs X[:, None] as one feature per sample)"
                if X.ndim == 1 else "")
        raise DataError(f"{what} has shape {X.shape}: a data set needs X of shape (N, T, C) = "
                        f"(samples, time steps, channels) for sequences, or (N, F) = (samples, "
                        f"features) for static data{hint}")
    return _check_real(X, what)


def _check_real(X, what):
    """Raise DataError unless the array ``X`` (named ``what``) holds real numbers; returns it."""
    if X.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {X.dtype}; the inputs must be real numbers")
    return X


def fix_length(X, seq_len) -> np.ndarray:
    """Truncate or zero-pad sequences at the end to ``seq_len`` time steps.

    Parameters
    ----------
    X : np.ndarray, shape (N, T, C)
        Sequences (any real dtype; kept).
    seq_len : int
        Wanted number of time steps, >= 1.

    Returns
    -------
    np.ndarray, shape (N, seq_len, C), dtype of X, C-contiguous
        ``X[:, :seq_len]`` if ``T >= seq_len``, else ``X`` followed by zeros. Lengths of
        sequences padded at the end stay consistent as ``min(length, seq_len)`` (:func:`load`
        clips them so).

    Raises
    ------
    DataError
        If ``X`` is not 3-D or ``seq_len < 1``.
    """
    X = _check_sequences(X, "X")
    if int(seq_len) != seq_len or seq_len < 1:
        raise DataError(f"seq_len must be an integer >= 1, got {seq_len!r}; fix --seq-len")
    seq_len = int(seq_len)
    n, t, c = X.shape
    if t >= seq_len:
        return np.ascontiguousarray(X[:, :seq_len])
    out = np.zeros((n, seq_len, c), dtype=X.dtype)
    out[:, :t] = X
    return out


def real_steps(lengths, seq_len, pad="end") -> np.ndarray:
    """Which time steps of padded sequences are real (not padding).

    Parameters
    ----------
    lengths : array_like, shape (N,), integer
        True lengths, in ``0 .. seq_len``.
    seq_len : int
        Time steps ``T`` of the padded sequences.
    pad : {"end", "front"}
        Where the padding lies (see :attr:`Dataset.pad`).

    Returns
    -------
    np.ndarray, shape (N, seq_len), bool
        Row ``i`` is True at steps ``0 .. lengths[i] - 1`` (``"end"``) or
        ``seq_len - lengths[i] .. seq_len - 1`` (``"front"``).
    """
    check_choice("pad", pad, PAD_POLICIES)
    t = np.arange(int(seq_len))
    L = np.asarray(lengths, dtype=np.int64)[:, None]
    return t < L if pad == "end" else t >= int(seq_len) - L


def pad_front(X, lengths) -> np.ndarray:
    """Right-align sequences padded at the end: the real steps last, the zero padding before.

    Parameters
    ----------
    X : np.ndarray, shape (N, T, C)
        Sequences, each zero-padded after its ``lengths[i]`` real steps.
    lengths : array_like, shape (N,), integer
        True lengths, in ``1 .. T`` (as :func:`validate` checks them).

    Returns
    -------
    np.ndarray, shape (N, T, C), dtype of X, C-contiguous
        ``out[i, T - lengths[i]:] = X[i, :lengths[i]]`` and zeros before; the steps of ``X``
        beyond a length (padding) are not copied. The lengths stay the same.
    """
    X = np.asarray(X)
    out = np.zeros(X.shape, dtype=X.dtype)
    out[real_steps(lengths, X.shape[1], "front")] = X[real_steps(lengths, X.shape[1], "end")]
    return out


def _check_lengths(lengths, n, t, what, x_what):
    """Check one length vector (``what``) of the ``n`` sequences of ``t`` steps of ``x_what``:
    integers of shape (n,) in ``1 .. t``; returns it as int64 (n,)."""
    L = np.asarray(lengths)
    if L.ndim != 1 or L.shape[0] != n:
        raise DataError(f"{what} has shape {L.shape} but {x_what} has {n} sequences; give one "
                        f"length per sequence, shape ({n},)")
    integral = L.dtype.kind in "iu" or (
        L.dtype.kind == "f" and bool(np.all(np.isfinite(L))) and bool(np.all(L == np.round(L))))
    if not integral:
        values = " with non-integer values" if L.dtype.kind == "f" else ""
        raise DataError(f"{what} has dtype {L.dtype}{values}; each length must be an integer "
                        f"number of time steps 1 .. {t}")
    bad = np.flatnonzero((L < 1) | (L > t))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{what}[{i}] is {int(L[i])}, but a length must lie in 1 .. {t} (the time "
                        f"steps of {x_what}; {bad.size} length(s) do not): store each sequence's "
                        f"true number of steps")
    return L.astype(np.int64)


def _check_padding(X, lengths, pad, what, x_what):
    """Raise DataError unless every step of ``X`` (N, T, C) outside the real steps of ``lengths``
    (``what``) is zero, naming the first offending sample and step and how many samples break it."""
    bad = ~real_steps(lengths, X.shape[1], pad) & np.any(X != 0, axis=2)
    rows = np.flatnonzero(bad.any(axis=1))
    if rows.size:
        i = int(rows[0])
        step, L, T = int(np.argmax(bad[i])), int(lengths[i]), X.shape[1]
        where = (f"steps {L} .. {T - 1}" if pad == "end" else f"steps 0 .. {T - L - 1}, pad "
                 f"'front'")
        raise DataError(f"{x_what} sample {i} has a nonzero value at step {step}, but its "
                        f"{what} is {L}, so that step is padding ({where}), which must be all "
                        f"zeros ({rows.size} sample(s) break this): fix {what}, or remove "
                        f"len_train and len_test to use the sequences as stored")


def _check_labels(y, n, what):
    """Check one label vector's shape and values (integers); returns it as int64 (n,)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{what} has shape {y.shape}; labels must be 1-D (N,) class indices "
                        f"(for one-hot labels use y.argmax(axis=1))")
    if y.shape[0] != n:
        raise DataError(f"{what} has {y.shape[0]} labels but X has {n} samples; the number of "
                        f"labels must equal the number of sequences (length mismatch)")
    integral = y.dtype.kind in "iu" or (
        y.dtype.kind == "f" and bool(np.all(np.isfinite(y))) and bool(np.all(y == np.round(y))))
    if not integral:
        raise DataError(f"{what} has dtype {y.dtype} with non-integer values; each label must be "
                        f"an integer class index 0 .. num_classes - 1")
    if y.dtype.kind == "f" and y.size and np.max(np.abs(y)) >= 2.0 ** 62:
        raise DataError(f"{what} has labels as large as {np.max(np.abs(y)):.3g}; labels must be "
                        f"class indices 0 .. num_classes - 1")
    return y.astype(np.int64)


def _check_label_range(y, num_classes, what):
    """Raise DataError unless every label of ``y`` (int64) lies in 0 .. num_classes - 1."""
    if y.size == 0:
        return
    lo, hi = int(np.min(y)), int(np.max(y))
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{what} has label values in [{lo}, {hi}] but num_classes is "
                        f"{num_classes}; labels must be 0-based class indices 0 .. "
                        f"{num_classes - 1}{_one_based_hint(lo, hi, num_classes)}")


def _check_finite(X, what):
    """Raise DataError if ``X`` holds NaN or inf, with the count and the first bad sample."""
    finite = np.isfinite(X)
    if not finite.all():
        bad_samples = ~finite.reshape(X.shape[0], -1).all(axis=1)
        count = finite.size - np.count_nonzero(finite)
        raise DataError(f"{what} contains {count} NaN or inf value(s) (as float32), first in "
                        f"sample {int(np.argmax(bad_samples))}; remove or impute them (e.g. "
                        f"np.nan_to_num) before training")


def _checked_arrays(ds, name=None):
    """Every check of :func:`validate` except those of the class set; returns the canonical
    ``(X_train, y_train, X_test, y_test, len_train, len_test)``: X C-contiguous float32 (N, T, C),
    y int64 (N,), lengths int64 (N,) or None. ``name``: the data set in messages (default: its
    name, quoted)."""
    if (ds.len_train is None) != (ds.len_test is None):
        have, lack = ("len_train", "len_test") if ds.len_test is None else ("len_test", "len_train")
        raise DataError(f"{name or repr(ds.name)} has {have} but no {lack}: give the true lengths "
                        f"of both splits ({lack} with one length per sequence), or neither")
    if ds.pad not in PAD_POLICIES:
        raise DataError(f"data set {ds.name!r} has pad {ds.pad!r}; the padding lies at one of "
                        f"{', '.join(map(repr, PAD_POLICIES))}")
    out = {}
    for split, X, y in (("train", ds.X_train, ds.y_train), ("test", ds.X_test, ds.y_test)):
        X = _check_inputs(X, f"X_{split}")
        static = X.ndim == 2
        if X.shape[0] == 0:
            raise DataError(f"the {split} set is empty (X_{split} has shape {X.shape}); "
                            f"need at least one {split} sample")
        if X.shape[1] == 0:
            raise DataError(f"X_{split} has 0 features (shape {X.shape}); static data needs at "
                            f"least one feature per sample" if static else
                            f"X_{split} has seq_len 0 (shape {X.shape}); sequences need at least "
                            f"one time step (check --seq-len)")
        y = _check_labels(y, X.shape[0], f"y_{split}")
        with np.errstate(over="ignore", invalid="ignore"):
            X = np.ascontiguousarray(X, dtype=np.float32)
        _check_finite(X, f"X_{split}")
        L = getattr(ds, f"len_{split}")
        if L is not None and static:
            raise DataError(f"{name or repr(ds.name)} is static (X_{split} has shape {X.shape} = "
                            f"(samples, features)) but has sequence lengths len_{split}; static "
                            f"data has no time steps: remove len_train and len_test, or give "
                            f"sequences (N, T, C)")
        if L is not None:
            L = _check_lengths(L, X.shape[0], X.shape[1], f"len_{split}", f"X_{split}")
            _check_padding(X, L, ds.pad, f"len_{split}", f"X_{split}")
        out[split] = X, y, L
    (X_train, y_train, len_train), (X_test, y_test, len_test) = out["train"], out["test"]
    if X_train.ndim != X_test.ndim:
        kinds = {2: "static (N, F)", 3: "sequences (N, T, C)"}
        raise DataError(f"X_train is {kinds[X_train.ndim]} (shape {X_train.shape}) but X_test is "
                        f"{kinds[X_test.ndim]} (shape {X_test.shape}); both splits must be the "
                        f"same kind")
    if X_train.shape[-1] != X_test.shape[-1]:
        what = "features" if X_train.ndim == 2 else "channels"
        raise DataError(f"X_train has {X_train.shape[-1]} {what} but X_test has "
                        f"{X_test.shape[-1]}; both splits need the same {what}")
    if X_train.ndim == 3 and X_train.shape[1] != X_test.shape[1]:
        raise DataError(f"X_train has {X_train.shape[1]} time steps but X_test has "
                        f"{X_test.shape[1]} (length mismatch); use --seq-len to truncate/pad "
                        f"both to one length")
    return X_train, y_train, X_test, y_test, len_train, len_test


def validate(ds: Dataset) -> Dataset:
    """Check a data set and return it with canonical dtypes.

    It checks the labels against ``ds.num_classes`` as given; deciding the class set (and the
    errors and warnings about gaps, 1-based labels and classes without training samples) is
    :func:`resolve_classes`'s job, which the loaders call first.

    Parameters
    ----------
    ds : Dataset
        Any array-likes: X of shape (N, T, C) (sequences) or (N, F) (static; both splits the
        same kind) with real values, y of shape (N,) with integer (or integral float) labels,
        lengths of shape (N,) with integer (or integral float) values, or None (always None for
        static data).

    Returns
    -------
    Dataset
        The same data with ``X_*`` as C-contiguous float32 (N, T, C) or (N, F), ``y_*`` as int64
        (N,),
        ``len_*`` as int64 (N,) or None, ``num_classes`` as int and ``class_names`` as a tuple of
        str.

    Raises
    ------
    DataError
        If X is neither 3-D nor 2-D, or one split is 3-D and the other 2-D; a split is empty or
        has 0 time steps (0 features); y is not 1-D or its length differs from X's; labels are
        not integers or not in ``0 .. num_classes - 1``; X holds NaN/inf; train and test differ
        in channel (feature) count or length; static data has lengths; ``class_names`` does not have
        ``num_classes`` entries; one split has lengths and the other not; lengths are not
        integers of shape (N,) in ``1 .. T``; a step beyond a sequence's length (where ``pad``
        says) is not all zeros; ``pad`` is not one of :data:`PAD_POLICIES`. The message names the
        problem and the fix (for the padding: the first offending sample and step).
    """
    num_classes = int(ds.num_classes)
    X_train, y_train, X_test, y_test, len_train, len_test = _checked_arrays(ds)
    _check_label_range(y_train, num_classes, "y_train")
    _check_label_range(y_test, num_classes, "y_test")
    class_names = tuple(str(s) for s in ds.class_names)
    if len(class_names) != num_classes:
        raise DataError(f"data set {ds.name!r} has {len(class_names)} class_names but "
                        f"num_classes {num_classes}; give one name per class")
    image_shape = ds.image_shape
    if image_shape is not None:
        image_shape = tuple(int(v) for v in image_shape)
        if (len(image_shape) != 3 or min(image_shape) < 1 or X_train.ndim != 2
                or X_train.shape[1] != int(np.prod(image_shape))):
            raise DataError(f"data set {ds.name!r} has image_shape {image_shape} but X_train of "
                            f"shape {X_train.shape}: images need static rows of C H W values "
                            "(C, H, W >= 1)")
    return Dataset(X_train, y_train, X_test, y_test, num_classes, str(ds.name), class_names,
                   len_train, len_test, ds.pad, image_shape)


class Standardizer(NamedTuple):
    """Per-channel standardisation ``(X - mean) / std``, fitted on training data.

    For static data (N, F) the channels are the features: the statistics are per feature over the
    samples (for ``indian_pines.npz``: per band).

    Attributes
    ----------
    mean : np.ndarray, shape (C,), float64
        Per-channel mean over samples and time (the real steps only, when fitted with lengths).
    std : np.ndarray, shape (C,), float64
        Per-channel standard deviation over samples and time (likewise); 1.0 for a constant
        channel.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X, lengths=None, pad="end", image_shape=None) -> "Standardizer":
        """Fit per-channel mean and standard deviation.

        Parameters
        ----------
        X : np.ndarray, shape (N, T, C) or (N, F) (any shape with channels last without
            ``lengths``)
            Training sequences, or static training features.
        lengths : array_like, shape (N,), integer, or None
            True lengths (``1 .. T``) of sequences padded as ``pad`` says: the statistics are
            those of the real steps alone (the ``sum(lengths)`` rows ``X[i, t]`` that are not
            padding), so padding zeros do not count. None: every value of ``X`` counts (the
            statistics are bitwise those of a fit without the argument).
        pad : {"end", "front"}
            Where the padding lies (see :attr:`Dataset.pad`).
        image_shape : tuple (C_img, H, W) or None
            Static images (:attr:`Dataset.image_shape`; X (N, C_img H W)): the statistics are
            per image channel, over the samples and all its pixels, repeated over the channel's
            H W features (a pixel that is rarely lit is not blown up by a tiny std of its own,
            and a convolution sees one scale across the image).

        Returns
        -------
        Standardizer
            ``mean`` and ``std`` of shape (C,), float64. A constant channel (standard deviation
            zero up to rounding) gets std 1.0, so it is only centred, never divided by zero.

        Raises
        ------
        DataError
            If ``X`` has fewer than 2 dimensions or no values; with ``lengths``, if ``X`` is not
            3-D or the lengths are not integers of shape (N,) in ``1 .. T``.
        ConfigError
            If ``pad`` is not one of :data:`PAD_POLICIES`.
        """
        X = np.asarray(X)
        if X.ndim < 2 or X.size == 0:
            raise DataError(f"cannot fit a standardizer on X of shape {X.shape}; it needs "
                            f"sequences (N, T, C) or features (N, F) with at least one value "
                            f"per channel")
        if image_shape is not None:
            C_img = int(image_shape[0])
            if lengths is not None or X.ndim != 2 or X.shape[1] != int(np.prod(image_shape)):
                raise DataError(f"images of shape {tuple(image_shape)} need static X (N, "
                                f"{int(np.prod(image_shape))}) without lengths, got {X.shape}")
            per = X.reshape(X.shape[0], C_img, -1).transpose(1, 0, 2).reshape(C_img, -1)
            mean = per.mean(axis=1, dtype=np.float64)
            std = per.std(axis=1, dtype=np.float64)
            std[std <= 1e-10 * np.abs(mean)] = 1.0
            reps = X.shape[1] // C_img
            return cls(np.repeat(mean, reps), np.repeat(std, reps))
        if lengths is None:
            flat = X.reshape(-1, X.shape[-1])
        else:
            flat = X[_real_steps_of(X, lengths, pad)]          # (sum(lengths), C)
        mean = flat.mean(axis=0, dtype=np.float64)
        std = flat.std(axis=0, dtype=np.float64)
        std[std <= 1e-10 * np.abs(mean)] = 1.0
        return cls(mean, std)

    def transform(self, X, dtype=np.float32, lengths=None, pad="end") -> np.ndarray:
        """Standardise ``X`` with the fitted statistics.

        Parameters
        ----------
        X : np.ndarray, shape (..., C) ((N, T, C) with ``lengths``)
            Sequences with the fitted number of channels last.
        dtype : numpy dtype
            Output dtype (default float32).
        lengths : array_like, shape (N,), integer, or None
            True lengths (``1 .. T``): the padding steps (where ``pad`` says) are exactly 0 in
            the result. None: every step is standardised (bitwise as without the argument).
        pad : {"end", "front"}
            Where the padding lies (see :attr:`Dataset.pad`).

        Returns
        -------
        np.ndarray, shape of X, given dtype, C-contiguous
            ``(X - mean) / std``, with 0 at the padding steps.

        Raises
        ------
        DataError
            If the channel count of ``X`` differs from the fitted one; with ``lengths``, if ``X``
            is not 3-D or the lengths are not integers of shape (N,) in ``1 .. T``.
        ConfigError
            If ``pad`` is not one of :data:`PAD_POLICIES`.
        """
        X = np.asarray(X)
        if X.ndim == 0 or X.shape[-1] != self.mean.shape[0]:
            raise DataError(f"X has {X.shape[-1] if X.ndim else 0} channels (shape {X.shape}) "
                            f"but the standardizer was fitted on {self.mean.shape[0]} channels; "
                            f"fit it on data with the same channels")
        real = None if lengths is None else _real_steps_of(X, lengths, pad)
        Z = np.ascontiguousarray((X - self.mean) / self.std, dtype=dtype)   # a new array
        if real is not None:
            Z[~real] = 0
        return Z


def _real_steps_of(X, lengths, pad):
    """:func:`real_steps` of the sequences ``X`` (N, T, C) with the checked ``lengths``."""
    if X.ndim != 3:
        raise DataError(f"X has shape {X.shape}; with lengths it must be sequences (N, T, C)")
    return real_steps(_check_lengths(lengths, X.shape[0], X.shape[1], "lengths", "X"),
                      X.shape[1], pad)
