"""Training checkpoints: save (atomic ``.npz``, finite states only, free space checked, stale
temporaries removed), resume (bit for bit), and the solvers' warm-start states of every rank.

A checkpoint holds the parameters under PyTorch's names, the optimizer state (under ``optim/``),
the shuffling RNG's state, the epoch, the history, the standardization, the configuration and
the level of nested iteration, so that ``resume=True`` continues a run to the bit-for-bit same
result as the uninterrupted run (the kernels are deterministic and independent of the thread
count). A write that fails (or a run killed during it) leaves the previous checkpoint as it was.
"""
import json
import os
import warnings

import numpy as np

from .. import datasets
from ..errors import CheckpointError, DivergenceError, MgritnnError, MgritnnWarning
from ..io import (META_KEY, atomic_savez, check_free_space, open_npz, prepare_output, read_member,
                  read_npz, remove_stale_temps, temp_prefix)
from ..model import model_from_meta
from ..optim import state_from_arrays, state_to_arrays
from ..solvers import SolverState
from .config import TrainConfig

__all__ = ["Checkpointer", "all_finite", "gather_warm_arrays", "last_good", "load_checkpoint",
           "restore_warm_arrays", "save_checkpoint", "settings_diff"]

#: Fields of TrainConfig that may change on resume without changing the run: the number of epochs
#: (extending a run is the point of resuming), where the outputs go, and the thread count (the
#: kernels are independent of it).
_RESUME_FREE = ("epochs", "checkpoint", "resume", "resume_or_start", "overwrite", "log", "threads",
                "rescue")


#: Fields of nested iteration's schedule, which a resumed run must share with its checkpoint (the
#: checkpoint's level indexes its list of levels).
_SCHEDULE = ("nested_levels", "nested_cf")


def all_finite(*arrays):
    """Whether every entry of every array is finite."""
    return all(np.all(np.isfinite(a)) for a in arrays)


def last_good(cfg, done):
    """Where the last good state of a run that failed in epoch ``done + 1`` is (for messages)."""
    if not cfg.checkpoint:
        return "nothing was saved (add --checkpoint to keep every finished epoch)"
    if done == 0:
        return "no checkpoint was written"
    return (f"the checkpoint {cfg.checkpoint!r} keeps epoch {done} as it was: continue from it "
            "with --resume")


def _checkpoint_arrays(model, optim_arrays, standardizer):
    """The arrays of a checkpoint: the parameters, ``optim/<key>`` for every entry of
    ``optim_arrays`` (:func:`~mgritnn.optim.state_to_arrays` of the optimizer state), the
    standardizer's mean and std."""
    arrays = dict(model.params)
    arrays.update({f"optim/{k}": v for k, v in optim_arrays.items()})
    arrays["standardizer/mean"] = standardizer.mean
    arrays["standardizer/std"] = standardizer.std
    return arrays


def _fmt(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def settings_diff(cfg, saved):
    """``["lr 0.003 -> 0.01", ...]``: the settings of ``cfg`` that differ from the saved config
    ``saved`` (a dict from a checkpoint; fields it lacks and :data:`_RESUME_FREE` are not
    compared)."""
    now = json.loads(json.dumps(cfg.settings()))       # tuples -> lists, as saved
    return [f"{k} {_fmt(saved[k])} -> {_fmt(v)}" for k, v in now.items()
            if k not in _RESUME_FREE and k in saved and saved[k] != v]


def model_diff(saved, now):
    """``["depth 8 -> 16", ...]``: the fields of two model configs (dicts) that differ (a field
    only one has reads as None in the other)."""
    saved, now = dict(saved or {}), dict(now or {})
    return [f"{k} {_fmt(saved.get(k))} -> {_fmt(now.get(k))}"
            for k in sorted(set(saved) | set(now), key=str) if saved.get(k) != now.get(k)]


def _settings_note(cfg, meta):
    """``"; the settings that differ: ..."`` (:func:`settings_diff` against the checkpoint's
    config), or empty."""
    diff = settings_diff(cfg, TrainConfig.upgrade_settings(meta.get("train") or {}))
    return f"; the settings that differ: {', '.join(diff)}" if diff else ""


def gather_warm_arrays(solver, ranks):
    """Every rank's warm-start states of ``solver`` (collective over the world).

    Returns
    -------
    dict
        On rank 0: ``"warm/r{rank}/{name}" -> array`` for every rank's
        :class:`~mgritnn.solvers.SolverState` as arrays (``solver.state.to_arrays()``; empty for
        solvers without memory);
        on the other ranks: empty.
    """
    parts = ranks.world.gather(solver.state.to_arrays(), root=0)
    if not ranks.root:
        return {}
    return {f"warm/r{r}/{k}": v for r, part in enumerate(parts) for k, v in part.items()}


def restore_warm_arrays(solver, arrays, meta, ranks, path):
    """Give each rank its own saved warm-start states (see :func:`gather_warm_arrays`), when the
    checkpoint was written by as many ranks; otherwise they start cold, with a warning."""
    mine = f"warm/r{ranks.rank}/"
    if not any(k.startswith("warm/") for k in arrays):
        return
    saved = meta.get("warm_ranks")
    if saved != ranks.size:
        if ranks.root:
            warnings.warn(f"checkpoint {path!r} holds the warm-start states of {saved} ranks, this "
                          f"run has {ranks.size}: they start cold, so the run cannot continue the "
                          "checkpoint's bit for bit (resume on as many ranks to keep them)",
                          MgritnnWarning, stacklevel=4)
        return
    solver.load_state(SolverState.from_arrays(
        {k[len(mine):]: v for k, v in arrays.items() if k.startswith(mine)}, f"checkpoint {path!r}"))


def _contents(cfg, epoch, model, optim_arrays, standardizer, rng, history, ds, warm, ranks, extra,
              kept):
    """The arrays and metadata of a checkpoint whose optimizer state is ``optim_arrays`` (see
    :func:`save_checkpoint`), checked to be finite; ``kept()`` says where the last good state is
    (for the DivergenceError)."""
    rec = history[-1] if history else {}
    losses = [rec.get("loss", 0.0), rec.get("test_loss", 0.0)]
    arrays = _checkpoint_arrays(model, optim_arrays, standardizer)
    if not all_finite(model.flat, np.asarray(losses, np.float64), *optim_arrays.values()):
        raise DivergenceError(
            f"training diverged in epoch {epoch}: the parameters, optimizer state or loss are "
            f"NaN/inf, so this epoch is not saved: lower --lr or use --clip; {kept()}")
    meta = dict(kind="train", model=model.config, train=cfg.settings(), epoch=epoch,
                rng=rng.bit_generator.state, history=history, num_classes=ds.num_classes,
                class_names=list(ds.class_names), warm_ranks=int(ranks), **(extra or {}))
    if model.model_type != "gru":          # a GRU's checkpoint keeps mgritnn 0.1's keys
        meta["model_type"] = model.model_type
    arrays.update(warm or {})
    return arrays, meta


def _write(cfg, epoch, model, optim_arrays, standardizer, rng, history, ds, warm, ranks, extra):
    """Check and write a checkpoint whose optimizer state is ``optim_arrays`` (see
    :func:`save_checkpoint`)."""
    arrays, meta = _contents(cfg, epoch, model, optim_arrays, standardizer, rng, history, ds, warm,
                             ranks, extra, lambda: last_good(cfg, epoch - 1))
    atomic_savez(cfg.checkpoint, arrays, meta, what="the checkpoint (--checkpoint)")


#: The file a run without ``--checkpoint`` that fails keeps its last finished epoch in (in the
#: working directory; ``-2``, ``-3``, ... before the suffix where it exists).
RESCUE_FILE = "mgritnn-rescue.npz"


def _free_name(name):
    """``name``, or the first of ``stem-2.npz``, ``stem-3.npz``, ... that does not exist."""
    stem, k = name[:-len(".npz")], 2
    while os.path.exists(name):
        name, k = f"{stem}-{k}.npz", k + 1
    return name


def save_checkpoint(cfg, epoch, model, opt_state, standardizer, rng, history, ds, warm=None,
                    ranks=1, extra=None):
    """Write the training checkpoint of ``cfg`` after ``epoch`` epochs (rank 0 only), atomically.

    Everything a bit-for-bit resume needs (parameters, optimizer state, shuffling RNG state,
    epoch, history, standardizer, config, and the solvers' warm-start states of every rank,
    ``warm`` from :func:`gather_warm_arrays`, written by ``ranks`` ranks).

    Parameters
    ----------
    cfg : TrainConfig
    epoch : int
        Epochs done.
    model : GRUClassifier or ODENet
    opt_state : optimizer state
        The state of the run's gradient transformation (e.g. a ``ScaleByAdamState``); stored by
        :func:`~mgritnn.optim.state_to_arrays` under ``optim/``.
    standardizer : datasets.Standardizer
    rng : numpy.random.Generator
        The shuffling generator (its state is saved).
    history : list of dict
        The epoch records so far (the last is this epoch's).
    ds : the data set (its classes are saved)
    warm : dict, optional
        Warm-start states (:func:`gather_warm_arrays`).
    ranks : int
        Number of ranks of the run (the warm-start states fit a run of as many).
    extra : dict, optional
        More metadata (JSON-able): the level of nested iteration (``nested_stage``, the index
        into :meth:`TrainConfig.nested_stages`, and ``stage_start``, its first epoch).

    Raises
    ------
    DivergenceError
        If the parameters, optimizer state or the epoch's losses are NaN/inf: nothing is written,
        the previous checkpoint stays.
    OutputError
        If the file cannot be written (the previous checkpoint stays).
    """
    _write(cfg, epoch, model, state_to_arrays(opt_state), standardizer, rng, history, ds, warm,
           ranks, extra)


def load_checkpoint(path):
    """Model, standardizer and metadata of a training checkpoint (or a model file: no standardizer)."""
    arrays, meta = read_npz(path)
    model = model_from_meta(meta, path)
    model.set_params(arrays)
    std = None
    if "standardizer/mean" in arrays:
        std = datasets.Standardizer(arrays["standardizer/mean"], arrays["standardizer/std"])
    return model, std, meta


def _read_cut(path, cut):
    """:func:`~mgritnn.io.read_npz` of ``path`` with the metadata read first and every array
    passed through ``cut(meta)`` (when that is not None) as soon as it is read."""
    if not os.path.isfile(path):
        return read_npz(path)                   # its CheckpointError
    fix = ("give the file that mgritnn train --checkpoint or GRUClassifier.save wrote (it is not "
           "a readable .npz checkpoint)")
    with open_npz(path, CheckpointError, "the checkpoint", fix) as z:
        meta = (json.loads(str(read_member(z, META_KEY, path, CheckpointError, fix)))
                if META_KEY in z.files else None)
        f = cut(meta) if meta else None
        arrays = {}
        for k in z.files:
            if k != META_KEY:
                a = read_member(z, k, path, CheckpointError, fix)
                arrays[k] = a if f is None else f(k, a)
    return arrays, meta


def block_cut(meta, local_steps):
    """The function ``(key, array) -> array`` that keeps a block's part of a checkpoint's array
    (for :meth:`Checkpointer.read`): ``layers`` (N, ...) -> its rows [lo, hi), and a 1-D array
    laid out like the whole network's flat parameters (P,) (an optimizer's moment) -> the block
    layout (P_block,) (:meth:`~mgritnn.odenet.ODENet.local_flat`); other arrays as they are.
    ``local_steps(N)`` gives (lo, hi) for the checkpoint's depth N. None when ``meta`` is not an
    ODENet's training checkpoint or the layers do not split (then the arrays are read whole)."""
    from ..odenet import odenet_shapes
    meta = meta or {}
    conf = meta.get("model") or {}
    if meta.get("kind") != "train" or meta.get("model_type") != "odenet":
        return None
    try:
        shapes = odenet_shapes(conf["num_features"], conf["width"], conf["num_classes"],
                               conf["depth"], conf.get("opening", "dense"),
                               conf.get("layer", "dense"), conf.get("channels"),
                               tuple(conf["image_shape"]) if conf.get("image_shape") else None)
        lo, hi = local_steps(int(conf["depth"]))
    except (KeyError, TypeError, ValueError, MgritnnError):
        return None
    names = [n for n, _ in shapes]
    sizes = [int(np.prod(s)) for _, s in shapes]
    start, full = sum(sizes[:names.index("layers")]), sum(sizes)
    layer_shape = tuple(dict(shapes)["layers"])
    depth, row = layer_shape[0], int(np.prod(layer_shape[1:]))

    def keep(key, a):
        if key == "layers" and a.shape == layer_shape:
            return a[lo:hi].copy()
        if key.startswith("optim/") and a.shape == (full,):
            return np.concatenate([a[:start], a[start + lo * row:start + hi * row],
                                   a[start + depth * row:]])
        return a
    return keep


class Checkpointer:
    """The checkpoint of a run (``cfg.checkpoint``): the one place that writes it, reads it back
    and moves the solver's warm-start states in and out of it.

    Constructing it prepares the output (rank 0: directory created, a probe file written beside
    it, temporary files of killed writes removed).

    Parameters
    ----------
    cfg : TrainConfig
    ranks : _Ranks
    out : callable
        Receives the human-readable lines (rank 0).
    """

    def __init__(self, cfg, ranks, out):
        self.cfg, self.ranks, self.out = cfg, ranks, out
        if cfg.checkpoint and ranks.root:
            prepare_output(cfg.checkpoint, "--checkpoint")
            removed = remove_stale_temps(cfg.checkpoint)
            if removed:
                out(f"removed {len(removed)} temporary file(s) {temp_prefix(cfg.checkpoint)}*.npz "
                    "left by an interrupted checkpoint write")

    @property
    def enabled(self):
        """Whether the run writes a checkpoint."""
        return bool(self.cfg.checkpoint)

    #: Without a checkpoint: (epoch, arrays, meta) of the last finished epoch, held in memory by
    #: rank 0 (:meth:`keep`), and the file it was written to after a failure (:meth:`last_good`).
    _kept = None
    _rescued = None

    def keep(self, epoch, model, optim_arrays, standardizer, rng, history, ds, extra):
        """Without a checkpoint: hold a copy of what a checkpoint after ``epoch`` epochs would
        hold (rank 0; not the solvers' warm starts), for :meth:`last_good` to write should the
        run fail. DivergenceError (nothing kept) if it is not finite."""
        if not self.ranks.root:
            return
        arrays, meta = _contents(self.cfg, epoch, model, optim_arrays, standardizer, rng,
                                 history, ds, None, self.ranks.size, extra,
                                 lambda: self.last_good(epoch - 1))
        self._kept = (epoch, {k: np.array(v, copy=True) for k, v in arrays.items()},
                      json.loads(json.dumps(meta)))

    def last_good(self, done):
        """Where the last good state of a run that failed in epoch ``done + 1`` is (for its
        message). With a checkpoint: that file (:func:`last_good`). Without: rank 0 writes the
        state :meth:`keep` holds to :data:`RESCUE_FILE` in the working directory (atomically; a
        free name), once, and names it."""
        if self.enabled:
            return last_good(self.cfg, done)
        advice = "add --checkpoint to keep every finished epoch"
        if self._rescued:
            return self._rescued
        if not self.ranks.root or self._kept is None:
            return f"nothing was saved: no epoch had finished ({advice})"
        epoch, arrays, meta = self._kept
        path = _free_name(RESCUE_FILE)
        try:
            atomic_savez(path, arrays, meta, what="the rescue file")
        except (OSError, MgritnnError) as e:
            return f"nothing was saved: the last good state could not be written ({e}); {advice}"
        self._rescued = (f"the last good state (after epoch {epoch}) was saved to {path!r}: "
                         f"continue with --checkpoint {path} --resume")
        return self._rescued

    def check_space(self, model, opt_state, standardizer):
        """Raise OutputError (rank 0) unless the disk has room for the checkpoint after
        ``cfg.epochs`` epochs (an overestimate: the arrays, their archive headers, and the
        metadata, JSON stored as 4-byte characters, one history record per epoch)."""
        if not (self.enabled and self.ranks.root):
            return
        arrays = _checkpoint_arrays(model, state_to_arrays(opt_state), standardizer)
        size = (sum(np.asarray(a).nbytes for a in arrays.values()) + 1024 * (len(arrays) + 1)
                + 32 * 1024 + 4 * 1024 * self.cfg.epochs)
        if getattr(model, "is_block", False):   # the file holds the whole network's rows
            like = sum(1 for a in arrays.values() if np.shape(a) == model.flat.shape)
            size += (model.full_size - model.flat.size) * model.flat.itemsize * (1 + like)
        check_free_space(self.cfg.checkpoint, "--checkpoint", size)

    def save(self, epoch, model, optim_arrays, solver, standardizer, rng, history, ds, extra):
        """Write the checkpoint after ``epoch`` epochs (collective: every rank's warm-start
        states of ``solver`` are gathered, rank 0 writes; see :func:`save_checkpoint`, whose
        optimizer state is here already ``optim_arrays``). Without a checkpoint, :meth:`keep`
        its contents instead."""
        if not self.enabled:
            return self.keep(epoch, model, optim_arrays, standardizer, rng, history, ds, extra)
        warm = gather_warm_arrays(solver, self.ranks)
        if self.ranks.root:
            _write(self.cfg, epoch, model, optim_arrays, standardizer, rng, history, ds, warm,
                   self.ranks.size, extra)

    def read(self, cut=None):
        """The checkpoint's arrays and metadata, checked to be a training checkpoint of this
        run's kind of model.

        Parameters
        ----------
        cut : callable or None
            ``cut(meta)`` (the checkpoint's metadata, read first) returns None or a function
            ``(key, array) -> array`` applied to every array as soon as it is read, so that a
            rank that stores a block of the layers never holds more than one of the whole
            network's arrays at a time (:func:`block_cut`).

        Returns
        -------
        arrays : dict of str to ndarray
        meta : dict

        Raises
        ------
        CheckpointError
            If the file is not a training checkpoint or holds another kind of model.
        """
        cfg = self.cfg
        arrays, meta = read_npz(cfg.checkpoint) if cut is None else _read_cut(cfg.checkpoint, cut)
        if not meta or meta.get("kind") != "train":
            raise CheckpointError(f"{cfg.checkpoint!r} is not an mgritnn training checkpoint: "
                                  "name the checkpoint written by 'mgritnn train --checkpoint'")
        if meta.get("model_type", "gru") != cfg.model:
            raise CheckpointError(f"checkpoint {cfg.checkpoint!r} holds a "
                                  f"{meta.get('model_type', 'gru')} model, this run trains "
                                  f"--model {cfg.model}: use the checkpoint's model, or start a "
                                  "new checkpoint")
        self.check_schedule(meta)
        return arrays, meta

    def check_schedule(self, meta):
        """Raise CheckpointError when the checkpoint's nested iteration (:data:`_SCHEDULE`: its
        levels and their depths) differs from this run's: its level would be read against
        another list of levels. Names the differing fields and the checkpoint's flags."""
        saved = TrainConfig.upgrade_settings(meta.get("train") or {})
        now = self.cfg.settings()
        diff = [f"{k} {_fmt(saved[k])} -> {_fmt(now[k])}" for k in _SCHEDULE
                if k in saved and saved[k] != now[k]]
        if diff:
            flags = " ".join(f"--{k.replace('_', '-')} {_fmt(saved[k])}" for k in _SCHEDULE
                             if k in saved)
            raise CheckpointError(
                f"checkpoint {self.cfg.checkpoint!r} was written with another nested iteration: "
                f"{', '.join(diff)} (checkpoint -> this run): resume with the checkpoint's "
                f"{flags} (raise --epochs to train more at the finest depth), or start a new "
                "checkpoint")

    def resume(self, arrays, meta, model, opt, opt_state, rng, solver, layers, nested=False):
        """Continue the checkpoint ``(arrays, meta)`` (from :meth:`read`): load ``model``'s
        parameters, the optimizer state, the shuffling state of ``rng`` and ``solver``'s
        warm-start states (:func:`restore_warm_arrays`), in place where they are objects.

        Settings that differ from the checkpoint's config (except :data:`_RESUME_FREE`) are
        named in one :class:`MgritnnWarning` (rank 0). With another optimizer (or L-BFGS,
        ``opt`` None) the state ``opt_state`` stays fresh (also in the warning): the run then
        cannot equal an uninterrupted one. Checkpoints of mgritnn 0.1 load as they are.

        ``model`` is built at the checkpoint's level of nested iteration; ``layers``
        (:class:`OwnedLayers`) zeroes the optimizer state's rows of the layers this rank does
        not own; ``nested``: the run has several levels (its epochs are not compared with
        ``cfg.epochs``).

        Returns
        -------
        opt_state, epoch, history : the loaded (or fresh) state, the epochs done, their records

        Raises
        ------
        CheckpointError
            If the checkpoint was made for another model shape, or holds the state of another
            optimizer chain under the same name.
        """
        cfg = self.cfg
        self.check_model(model, meta)
        saved = TrainConfig.upgrade_settings(meta.get("train") or {})
        diff = settings_diff(cfg, saved)
        model.set_params(arrays)
        old_opt = saved.get("optimizer", cfg.optimizer)
        if old_opt == cfg.optimizer and opt is not None:
            state = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
            layers.mask(model, state)
            opt_state = state_from_arrays(opt, state, model.flat)
        else:
            diff = [d + (f" (the {old_opt} state is dropped and {cfg.optimizer} starts afresh, so "
                         "the run cannot equal an uninterrupted one bit for bit)")
                    if d.startswith("optimizer ") else d for d in diff]
        if diff and self.ranks.root:
            warnings.warn("resuming with settings that differ from the checkpoint: "
                          + ", ".join(diff) + " (resume with the checkpoint's settings to continue "
                          "its run exactly)", MgritnnWarning, stacklevel=5)
        rng.bit_generator.state = meta["rng"]
        restore_warm_arrays(solver, arrays, meta, self.ranks, cfg.checkpoint)
        epoch, history = int(meta["epoch"]), list(meta.get("history", []))
        self.out(f"resumed from {cfg.checkpoint} after epoch {epoch}")
        if epoch >= cfg.epochs and not nested:
            self.out(f"nothing to train: the checkpoint has {epoch} epochs, --epochs is "
                     f"{cfg.epochs}; raise --epochs to train more")
        return opt_state, epoch, history

    def check_model(self, model, meta):
        """Raise CheckpointError unless the checkpoint was made for ``model``'s shape."""
        if meta["model"] != model.config:
            raise CheckpointError(
                f"checkpoint {self.cfg.checkpoint!r} was made for the model of another shape: "
                f"{', '.join(model_diff(meta['model'], model.config))} (checkpoint -> this run)"
                + _settings_note(self.cfg, meta)
                + ": resume with the checkpoint's settings (and data), or start a new checkpoint")
