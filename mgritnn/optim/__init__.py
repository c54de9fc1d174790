"""Optimizers as composable gradient transformations (the shape of optax).

``init(params) -> state`` and ``update(grads, state, params) -> (updates, state)``; the updates
are added to the parameters by :func:`apply_updates`. :func:`adam` and :func:`sgd` are chains of
the building blocks, :func:`make_optimizer` builds them by name. See :mod:`mgritnn.optim.base`.

Their hyper-parameters are checked by :func:`check_learning_rate`, :func:`check_weight_decay`,
:func:`check_momentum` and :func:`check_max_norm`, made of the validators every config uses
(:mod:`mgritnn.options`); ``TrainConfig``'s optimizer settings use the same functions.

Examples
--------
>>> opt = chain(clip_by_global_norm(1.0), add_decayed_weights(1e-4), adam(1e-3))
>>> state = opt.init(params)
>>> updates, state = opt.update(grads, state, params)
>>> params = apply_updates(params, updates)
"""

from mgritnn.optim.adam import (ScaleByAdamState, adam, check_learning_rate, check_weight_decay,
                                scale_by_adam)
from mgritnn.optim.base import (EmptyState, GradientTransformation, add_decayed_weights,
                                apply_updates, chain, scale, scale_by_learning_rate,
                                state_from_arrays, state_to_arrays, tree_leaves, tree_map)
from mgritnn.optim.clip import check_max_norm, clip_by_global_norm, global_norm
from mgritnn.optim.sgd import OPTIMIZERS, TraceState, check_momentum, make_optimizer, sgd, trace

__all__ = [
    "GradientTransformation",
    "EmptyState",
    "ScaleByAdamState",
    "TraceState",
    "chain",
    "apply_updates",
    "adam",
    "sgd",
    "scale_by_adam",
    "trace",
    "scale",
    "scale_by_learning_rate",
    "add_decayed_weights",
    "clip_by_global_norm",
    "global_norm",
    "OPTIMIZERS",
    "make_optimizer",
    "state_to_arrays",
    "state_from_arrays",
    "tree_map",
    "tree_leaves",
    "check_learning_rate",
    "check_weight_decay",
    "check_momentum",
    "check_max_norm",
]
