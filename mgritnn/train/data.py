"""Data and batching of a training run: the data set, standardized on its real steps, and the
batches of an epoch (their order drawn from the run's shuffling generator)."""
import time
from typing import NamedTuple

import numpy as np

from .. import datasets
from ..errors import ConfigError

__all__ = ["Batch", "TrainData", "check_last_batch"]


class Batch(NamedTuple):
    """One training batch as :meth:`TrainData.batches` hands it out (this rank's share).

    Attributes
    ----------
    epoch, index : int
        0-based epoch and batch number.
    idx : ndarray, shape (b,), int
        The training-set rows of the whole batch (all data groups).
    part : ndarray, shape (b_g,), int
        The rows of this rank's data group (its share of ``idx``; the samples' keys for warm
        starts).
    X : ndarray, shape (b_g, T, I), the model's dtype
        The standardized inputs of ``part``.
    y : ndarray, shape (b_g,), int
        Their labels.
    lengths : ndarray, shape (b_g,), int64, or None
        Their true lengths (``1 .. T``; the padding lies where ``TrainConfig.pad`` says), or None
        when the data has no lengths (every sequence has all ``T`` steps).
    """

    epoch: int
    index: int
    idx: np.ndarray
    part: np.ndarray
    X: np.ndarray
    y: np.ndarray
    lengths: np.ndarray = None


def check_last_batch(n_train, cfg):
    """Every batch is split into ``cfg.data_parallel`` parts: raise ConfigError (with a batch size
    that works) when the last, short batch of an epoch has fewer rows than parts."""
    B, D = cfg.batch_size, cfg.data_parallel
    batches = -(-n_train // B)
    last = n_train - (batches - 1) * B
    if last < D and (cfg.max_batches is None or cfg.max_batches >= batches):
        if n_train < D:
            raise ConfigError(f"the training set has {n_train} samples, fewer than --data-parallel "
                              f"{D}: every data group needs a sample; use a --data-parallel of at "
                              f"most {n_train}")
        good = min((b for b in range(D, n_train + 1) if n_train % b == 0 or n_train % b >= D),
                   key=lambda b: (abs(b - B), b))
        raise ConfigError(f"the last batch of every epoch would have {last} sample(s) ({n_train} "
                          f"training samples, --batch-size {B}), fewer than --data-parallel {D}: "
                          f"every data group needs a sample; use --batch-size {good} (any size "
                          f"that leaves 0 or at least {D} samples for the last batch)")


class TrainData:
    """The data of a run: loaded with the config's length policy (``lengths``, ``pad``),
    checked, and standardized on the real steps.

    Parameters
    ----------
    cfg : TrainConfig
    ranks : _Ranks
        Gives this rank's data group and its share of a batch.
    full_batch : bool
        Every step takes the whole training set (L-BFGS): no short last batch to check.
    check_memory : callable ``check_memory(ds, batch)``, optional
        Raises when a run with batches of ``batch`` samples does not fit in memory.

    Attributes
    ----------
    ds : datasets.Dataset
    standardizer : datasets.Standardizer
        Fitted on the real steps of the training inputs.
    X_train, X_test : ndarray, shape (N, T, I) and (M, T, I), ``cfg.dtype``
        The standardized inputs (the padding stays 0).
    len_train, len_test : ndarray, shape (N,) and (M,), int64, or None
        The true lengths (None: the data has none, or ``lengths="ignore"``).
    n_batches : int
        Batches per epoch (at most ``cfg.max_batches``).
    """

    def __init__(self, cfg, ranks, full_batch=False, check_memory=None):
        self.cfg, self.ranks = cfg, ranks
        ds = self.ds = datasets.load(cfg.data, seq_len=cfg.seq_len, seed=cfg.seed,
                                     num_classes=cfg.num_classes, lengths=cfg.lengths,
                                     pad=cfg.pad)
        datasets.check_data_kind(ds, cfg.model)
        self.len_train, self.len_test = ds.len_train, ds.len_test
        if cfg.batch_size < cfg.data_parallel:
            raise ConfigError(f"batch size {cfg.batch_size} is smaller than --data-parallel "
                              f"{cfg.data_parallel}: every data group needs samples")
        if not full_batch:
            check_last_batch(len(ds.y_train), cfg)
        if check_memory is not None:
            check_memory(ds, len(ds.y_train) if full_batch else cfg.batch_size)
        self.standardizer = datasets.Standardizer.fit(ds.X_train, ds.len_train, ds.pad,
                                                      image_shape=ds.image_shape)
        dtype = np.dtype(cfg.dtype)
        self.X_train = self.standardizer.transform(ds.X_train, dtype, ds.len_train, ds.pad)
        self.X_test = self.standardizer.transform(ds.X_test, dtype, ds.len_test, ds.pad)
        self.n_batches = -(-len(self.X_train) // cfg.batch_size)
        if cfg.max_batches:
            self.n_batches = min(self.n_batches, cfg.max_batches)

    @property
    def pad(self):
        """Where the padding of variable-length sequences lies (``"end"`` or ``"front"``)."""
        return self.ds.pad

    def split(self, train):
        """``(X, y, lengths)`` of the training (``train``) or the test split."""
        if train:
            return self.X_train, self.ds.y_train, self.len_train
        return self.X_test, self.ds.y_test, self.len_test

    def batch(self, epoch, index, idx):
        """The :class:`Batch` of the training rows ``idx`` (this rank's group's share)."""
        part = self.ranks.share(idx)
        lengths = None if self.len_train is None else self.len_train[part]
        return Batch(epoch, index, idx, part, self.X_train[part], self.ds.y_train[part], lengths)

    def full_batch(self, epoch):
        """The whole training set as one :class:`Batch` (index 0)."""
        return self.batch(epoch, 0, np.arange(len(self.X_train)))

    def batches(self, epoch, rng, times=None):
        """The batches of ``epoch`` (0-based), shuffled by ``rng``.

        Parameters
        ----------
        epoch : int
        rng : numpy.random.Generator
            The run's shuffling generator: one permutation of the training rows is drawn when
            the first batch is asked for.
        times : dict, optional
            Its ``"data"`` entry accumulates the seconds spent making the batches.

        Yields
        ------
        Batch
            ``n_batches`` of them.
        """
        B = self.cfg.batch_size
        perm = rng.permutation(len(self.X_train))
        for b in range(self.n_batches):
            t0 = time.perf_counter()
            batch = self.batch(epoch, b, perm[b * B:(b + 1) * B])
            if times is not None:
                times["data"] += time.perf_counter() - t0
            yield batch
