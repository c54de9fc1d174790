"""What the trainer does differently per kind of model: one small adapter per ``--model``
(building the model, its memory check, the time axes its solver must fit, the options of its
gradient, its epoch record's fields, whether its ranks can own their layers' updates)."""
import numpy as np

from ..cells import NewtonConfig, NewtonGRUCell
from ..errors import ConfigError, DataError
from ..memory import check_memory, check_training_memory, odenet_memory_estimate
from ..model import GRUClassifier
from ..odenet import ODENet, odenet_shapes

__all__ = ["ADAPTERS", "GRUAdapter", "ODENetAdapter", "adapter_for", "build_model"]


def _make_cell(cfg):
    """The cell of ``cfg``: its name, or a Newton cell with ``cfg.newton_options``."""
    if not cfg.newton_options:
        return cfg.cell
    if cfg.cell != "implicit-newton":
        raise ConfigError(f"Newton options {sorted(cfg.newton_options)} need --cell implicit-newton, "
                          f"not {cfg.cell!r}")
    try:
        return NewtonGRUCell(NewtonConfig(**cfg.newton_options))
    except TypeError as e:
        raise ConfigError(f"bad Newton option: {e}") from None


class GRUAdapter:
    """The trainer's view of a :class:`GRUClassifier`: the time axis is the sequence; the
    gradient keeps an exploding adjoint's scale apart (``scaled``)."""

    #: Options of :meth:`GRUClassifier.loss_and_grad_flat` in training.
    grad_options = {"scaled": True}

    @staticmethod
    def build(cfg, num_features, num_classes, depth=None, image_shape=None):
        """The untrained model of ``cfg`` with ``num_features`` inputs per step (``image_shape``
        unused)."""
        return GRUClassifier(num_features, cfg.hidden, num_classes, num_layers=cfg.layers,
                             cell=_make_cell(cfg), dtype=cfg.dtype, seed=cfg.seed, dt=cfg.dt)

    @staticmethod
    def check_memory(cfg, ds, batch, time_ranks):
        """Raise when one rank's model, optimizer and share of a batch of ``batch`` samples do
        not fit in memory."""
        check_training_memory(ds.num_channels, cfg.hidden, ds.num_classes, cfg.layers,
                              cfg.dtype, -(-batch // cfg.data_parallel),
                              -(-ds.seq_len // time_ranks),
                              "sgd" if cfg.optimizer == "lbfgs" else cfg.optimizer)

    @staticmethod
    def time_axes(schedule, seq_len):
        """The lengths of the time axes the solver must fit (the sequence's)."""
        return [seq_len]

    @staticmethod
    def record_fields(model, schedule):
        """The model's fields of an epoch record (none)."""
        return {}

    @staticmethod
    def splits_layers(solver):
        """Whether the ranks of ``solver`` can own the model's layers (never: a GRU's time axis
        is the sequence, its layers are on every rank)."""
        return False


class ODENetAdapter:
    """The trainer's view of an :class:`~mgritnn.odenet.ODENet`: the time axis is the depth
    (every level of nested iteration's); its ranks can own their layers' updates."""

    grad_options = {}

    @staticmethod
    def build(cfg, num_features, num_classes, depth=None, image_shape=None):
        """The untrained network of ``cfg`` of ``depth`` layers (default ``cfg.depth``; nested
        iteration's coarse levels are shallower) on ``num_features`` features; with
        ``--layer conv``, on images of ``image_shape`` (C, H, W) (the data's,
        :attr:`~mgritnn.datasets.Dataset.image_shape`; a DataError without one)."""
        conv = {}
        if cfg.layer == "conv":
            if image_shape is None:
                raise DataError("--layer conv needs images, but the data has no image shape: "
                                "give a .npz with X (N, C, H, W), or X (N, F) and an "
                                "'image_shape' entry [C, H, W] (e.g. digits.npz), or use "
                                "--layer dense")
            conv = dict(layer="conv", channels=cfg.channels, image_shape=image_shape)
        return ODENet(num_features, None if conv else cfg.width, num_classes,
                      depth or cfg.depth, activation=cfg.activation, final_time=cfg.final_time,
                      opening=cfg.opening, tikhonov=cfg.tikhonov, ddt_penalty=cfg.ddt_penalty,
                      dtype=cfg.dtype, seed=cfg.seed, layer_init=cfg.layer_init,
                      layer_init_scale=cfg.layer_init_scale, **conv)

    @staticmethod
    def check_memory(cfg, ds, batch, time_ranks):
        """Raise when one rank's network (its parameters: all of them, or with the layers split
        over ``time_ranks`` > 1 and Adam or SGD without weight decay the shared ones and its
        block of layers), optimizer and share of a batch of ``batch`` samples (its
        ``depth / time_ranks`` layers' states) do not fit in memory."""
        conv = cfg.layer == "conv" and ds.image_shape is not None
        shapes = odenet_shapes(ds.num_channels, cfg.width, ds.num_classes, cfg.depth, cfg.opening,
                               *(("conv", cfg.channels, ds.image_shape) if conv else ()))
        P = sum(int(np.prod(s)) for _, s in shapes)
        stored = P
        if time_ranks > 1 and cfg.optimizer != "lbfgs" and not cfg.weight_decay:
            (_, layers), = [(n, s) for n, s in shapes if n == "layers"]
            row = int(np.prod(layers[1:]))
            stored = P - (layers[0] - -(-layers[0] // time_ranks)) * row
        width = cfg.channels * int(np.prod(ds.image_shape[1:])) if conv else cfg.width
        check_memory(odenet_memory_estimate(
            P, width, cfg.dtype, -(-batch // cfg.data_parallel), -(-cfg.depth // time_ranks),
            "sgd" if cfg.optimizer == "lbfgs" else cfg.optimizer, stored=stored))

    @staticmethod
    def time_axes(schedule, seq_len):
        """The depths of every level of nested iteration."""
        return [d for d, _ in schedule.stages]

    @staticmethod
    def record_fields(model, schedule):
        """``depth``, and ``level`` (0 = the finest network, K = the coarsest of nested
        iteration)."""
        return dict(depth=model.depth, level=schedule.level)

    @staticmethod
    def splits_layers(solver):
        """Whether ``solver`` splits the layers over several ranks (then each owns a block)."""
        return ODENet.splits_layers(solver)


#: The adapter of each ``TrainConfig.model``.
ADAPTERS = {"gru": GRUAdapter, "odenet": ODENetAdapter}


def adapter_for(cfg):
    """The adapter of ``cfg.model``."""
    return ADAPTERS[cfg.model]


def build_model(cfg, num_features, num_classes, depth=None, image_shape=None):
    """The untrained model of ``cfg`` (the one factory of the trainer, its warm-up and resume):
    a :class:`GRUClassifier` (``cfg.model == "gru"``) with ``num_features`` inputs per step, or
    an :class:`~mgritnn.odenet.ODENet` of ``depth`` layers (default ``cfg.depth``; nested
    iteration's coarse levels are shallower) on ``num_features`` features (``image_shape``:
    the data's, for ``--layer conv``)."""
    return adapter_for(cfg).build(cfg, num_features, num_classes, depth, image_shape)
