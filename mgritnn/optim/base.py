"""Gradient transformations in the shape of optax: the protocol, composition and the state's
checkpoint form.

A gradient transformation is a pair of pure functions

* ``init(params) -> state``: the initial state (a NamedTuple) for parameters ``params``;
* ``update(updates, state, params=None) -> (updates, state)``: transform the incoming updates
  (the gradient, for the first transformation of a chain) and return the new state.

Neither modifies its arguments: :func:`apply_updates` adds the final updates to the parameters.
Parameters, gradients and updates are trees: a float32 or float64 ndarray (the model's flat
buffer, as the trainer uses them), or a tuple, list, NamedTuple or dict of such trees. All
arithmetic is done leaf by leaf in the leaves' dtype (hyper-parameters are Python floats, so a
float32 tree stays float32).

Unlike optax, a chain keeps no state for its stateless members: its state is that of its one
stateful member (so ``adam(...)``, ``chain(clip_by_global_norm(1.0), adam(...))`` and
``chain(add_decayed_weights(1e-4), adam(...))`` all have a
:class:`~mgritnn.optim.ScaleByAdamState`),
a tuple of the stateful members' states when there are several, and :class:`EmptyState` when
there are none. The checkpoint form (:func:`state_to_arrays`) follows: the fields of one state
are stored under their names (``step``, ``m``, ``v``), as mgritnn 0.1's ``Adam`` and ``SGD``
stored theirs.

Memory: an update allocates its outputs and nothing is modified in place, so an old state stays
valid (e.g. for a checkpoint written while training goes on). Per step and per parameter-sized
leaf, ``adam`` allocates the new ``m`` and ``v`` (with NumPy's temporaries of their formulas)
and one buffer that becomes the updates (plus one array for ``add_decayed_weights`` with a nonzero decay, and
one for ``clip_by_global_norm`` when it clips); ``sgd`` the new momentum buffer and the scaled
updates. ``apply_updates(..., inplace=True)`` allocates nothing.
"""

from typing import Callable, NamedTuple

import numpy as np

from mgritnn.errors import CheckpointError
from mgritnn.options import check_real
from mgritnn.tree import is_namedtuple, tree_leaves, tree_map  # noqa: F401 (re-exported)


# ----------------------------------------------------------------------------------------------
# the protocol
# ----------------------------------------------------------------------------------------------
class EmptyState(NamedTuple):
    """The state of a stateless transformation (no fields)."""


class GradientTransformation(NamedTuple):
    """A gradient transformation: ``init`` and ``update`` (see the module's docstring).

    Attributes
    ----------
    init : callable ``init(params) -> state``
    update : callable ``update(updates, state, params=None) -> (updates, state)``
    stateless : bool, default False
        True when ``init`` returns :class:`EmptyState` for any parameters (such members keep no
        state in a :func:`chain`).
    """

    init: Callable
    update: Callable
    stateless: bool = False


def _stateless(update):
    """A stateless :class:`GradientTransformation` around ``update``."""
    return GradientTransformation(lambda params: EmptyState(), update, stateless=True)


# ----------------------------------------------------------------------------------------------
# trees
# ----------------------------------------------------------------------------------------------
_is_namedtuple = is_namedtuple          # the old private name


def _check_params(params):
    """Raise TypeError unless every leaf of ``params`` is a float32/float64 ndarray."""
    for p in tree_leaves(params):
        if p.dtype not in (np.float32, np.float64):
            raise TypeError(f"params must be float32 or float64 numpy arrays, got dtype {p.dtype}")


def _check_leaf(g, ref):
    """Raise TypeError/ValueError unless the update leaf ``g`` has the dtype and shape of the
    parameter (or state buffer) leaf ``ref``."""
    if not isinstance(g, np.ndarray):
        raise TypeError(f"grads must be numpy arrays, got {type(g).__name__}")
    if g.dtype != ref.dtype:
        raise TypeError(f"grads have dtype {g.dtype} but params have dtype {ref.dtype}")
    if g.shape != ref.shape:
        raise ValueError(f"grads have shape {g.shape} but params have shape {ref.shape}")


def _check_grads(grads, ref):
    """:func:`_check_leaf` on every leaf pair of the trees ``grads`` and ``ref``."""
    tree_map(_check_leaf, grads, ref)


def chain(*transforms):
    """Compose gradient transformations: the updates pass through ``transforms`` in order.

    Parameters
    ----------
    *transforms : GradientTransformation

    Returns
    -------
    GradientTransformation
        Its state is that of the one stateful member, a tuple of the stateful members' states
        (in order) when there are several, or :class:`EmptyState` when there are none.

    Raises
    ------
    TypeError
        For an argument that is not a :class:`GradientTransformation` (e.g. ``adam`` instead of
        ``adam(1e-3)``).

    Examples
    --------
    ``chain(clip_by_global_norm(1.0), add_decayed_weights(1e-4), adam(1e-3))`` clips the gradient,
    adds the L2 term (coupled, as ``torch.optim.Adam(weight_decay=1e-4)``) and scales by Adam;
    ``chain(scale_by_adam(), add_decayed_weights(1e-2), scale_by_learning_rate(1e-3))`` is AdamW.
    """
    for t in transforms:
        if not isinstance(t, GradientTransformation):
            raise TypeError(f"chain() takes gradient transformations (e.g. adam(1e-3)), got "
                            f"{type(t).__name__} {t!r}")
    stateful = [not t.stateless for t in transforms]
    n = sum(stateful)

    def init(params):
        states = tuple(t.init(params) for t, s in zip(transforms, stateful) if s)
        return EmptyState() if n == 0 else states[0] if n == 1 else states

    def update(updates, state, params=None):
        states = iter(() if n == 0 else (state,) if n == 1 else state)
        new = []
        for t, s in zip(transforms, stateful):
            if s:
                updates, st = t.update(updates, next(states), params)
                new.append(st)
            else:
                updates, _ = t.update(updates, EmptyState(), params)
        return updates, (EmptyState() if n == 0 else new[0] if n == 1 else tuple(new))

    return GradientTransformation(init, update, stateless=n == 0)


def scale(step_size):
    """Multiply the updates by ``step_size`` (stateless).

    Parameters
    ----------
    step_size : float
        Finite; a Python float, so the updates keep their dtype.

    Returns
    -------
    GradientTransformation
    """
    s = check_real("step_size", step_size)
    return _stateless(lambda updates, state, params=None: (tree_map(lambda u: u * s, updates),
                                                           state))


def scale_by_learning_rate(learning_rate):
    """``scale(-learning_rate)``: the descent step of a learning rate ``> 0`` (stateless)."""
    return scale(-check_real("lr", learning_rate, low=0, low_open=True))


def add_decayed_weights(weight_decay=0.0):
    """Add ``weight_decay * params`` to the updates (stateless; needs ``params``).

    Parameters
    ----------
    weight_decay : float, default 0.0
        ``>= 0``; 0 passes the updates through unchanged (and needs no ``params``).

    Returns
    -------
    GradientTransformation

    Notes
    -----
    Where it stands in a :func:`chain` decides what it is. Before the scaling by Adam (or by the
    momentum of SGD) it adds the gradient of the L2 penalty :math:`\\tfrac{\\lambda}{2}\\lVert p
    \\rVert^2`, :math:`g \\leftarrow g + \\lambda p` (``torch.optim.Adam``/``SGD`` with
    ``weight_decay``, and mgritnn's ``adam``/``sgd`` with ``weight_decay``). After the scaling
    and before the learning rate it is decoupled weight decay (AdamW, Loshchilov & Hutter 2019).
    The sum is computed as ``u + (weight_decay * p)`` in the dtype of the leaves.
    """
    wd = check_real("weight_decay", weight_decay, low=0)

    def add(u, p):
        _check_leaf(u, p)
        return u + wd * p

    def update(updates, state, params=None):
        if not wd:
            return updates, state
        if params is None:
            raise ValueError("add_decayed_weights needs the params: call update(grads, state, "
                             "params)")
        return tree_map(add, updates, params), state

    return _stateless(update)


def apply_updates(params, updates, inplace=False):
    """Add the ``updates`` of a transformation to ``params``.

    Parameters
    ----------
    params : tree of ndarray, float32 or float64
    updates : tree of ndarray
        The structure, shapes and dtypes of ``params``.
    inplace : bool, default False
        Add into the arrays of ``params`` (e.g. the model's flat buffer, whose named views then
        see the new values) instead of returning new arrays.

    Returns
    -------
    tree of ndarray
        ``params + updates`` leaf by leaf (with ``inplace``, the arrays of ``params``).

    Raises
    ------
    TypeError, ValueError
        If a leaf of ``updates`` has another dtype or shape than its parameter (no silent cast:
        float64 updates would round differently into float32 parameters).
    """
    def add(p, u):
        _check_leaf(u, p)
        if inplace:
            p += u
            return p
        return p + u
    return tree_map(add, params, updates)


# ----------------------------------------------------------------------------------------------
# checkpoint form of a state
# ----------------------------------------------------------------------------------------------
def _flatten_state(state, path=()):
    """``[(key, leaf), ...]`` of a state: NamedTuple fields by name, tuple/list members by index,
    dict entries by key, joined by ``/``; leaves are ndarrays and integer counters."""
    if isinstance(state, np.ndarray) or (isinstance(state, (int, np.integer))
                                         and not isinstance(state, bool)):
        return [("/".join(path), state)]
    if _is_namedtuple(state):
        items = zip(state._fields, state)
    elif isinstance(state, dict):
        items = ((str(k), v) for k, v in state.items())
    elif isinstance(state, (tuple, list)):
        items = ((str(i), v) for i, v in enumerate(state))
    else:
        raise TypeError(f"an optimizer state holds arrays, integers and tuples or dicts of them, "
                        f"got {type(state).__name__}")
    return [kv for name, v in items for kv in _flatten_state(v, path + (name,))]


def _rebuild(template, leaves):
    """The structure of ``template`` with its leaves taken in order from the iterator ``leaves``."""
    if isinstance(template, (np.ndarray, int, np.integer)):
        return next(leaves)
    if isinstance(template, dict):
        return type(template)((k, _rebuild(v, leaves)) for k, v in template.items())
    members = [_rebuild(v, leaves) for v in template]
    return type(template)(*members) if _is_namedtuple(template) else type(template)(members)


def state_to_arrays(state):
    """Convert an optimizer state to plain arrays for a checkpoint.

    Parameters
    ----------
    state : NamedTuple, or tuple of NamedTuples
        A state returned by a transformation's ``init`` or ``update``.

    Returns
    -------
    dict of str to ndarray
        One entry per leaf: a field's name (``"step"``, ``"m"``, ``"v"``; ``"momentum_buffer"``),
        prefixed by ``"<i>/"`` for the i-th state of a chain with several stateful members and
        followed by ``"/<key>"`` for parameters that are a tree. Counters are 0-d int64 arrays,
        buffers are copies with the dtype and shape of the parameters.
    """
    return {key: np.array(v, dtype=np.int64) if not isinstance(v, np.ndarray) else
            np.array(v, copy=True) for key, v in _flatten_state(state)}


def state_from_arrays(opt, arrays, params=None):
    """Rebuild the state of ``opt`` from :func:`state_to_arrays` output (bitwise).

    Parameters
    ----------
    opt : GradientTransformation
        The transformation the state belongs to; its ``init`` gives the state's structure.
    arrays : mapping of str to ndarray
        Exactly the keys that :func:`state_to_arrays` writes for this transformation (also those
        of a checkpoint written by mgritnn 0.1's ``Adam`` and ``SGD``).
    params : tree of ndarray, optional
        The parameters the state will be used with; the buffers must match their shapes and
        dtype. Needed when the parameters are a tree; without it the first floating-point array
        of ``arrays`` stands for one flat parameter buffer.

    Returns
    -------
    state
        Of the type ``opt.init`` returns.

    Raises
    ------
    CheckpointError
        (a ``ValueError``) for missing or extra keys, a bad counter, or buffers with a wrong
        shape or dtype.
    """
    if params is None:
        floats = [a for a in map(np.asarray, arrays.values()) if a.dtype.kind == "f"]
        params = floats[0] if floats else np.zeros(0)
        if params.dtype not in (np.float32, np.float64):
            raise CheckpointError(f"the optimizer state's buffers must be float32 or float64, "
                                  f"got {params.dtype}")
    template = opt.init(params)
    flat = _flatten_state(template)
    expected = [k for k, _ in flat]
    if set(arrays) != set(expected):
        raise CheckpointError(f"the optimizer state needs the keys {sorted(expected)}, got "
                              f"{sorted(arrays)}")
    leaves = []
    for key, ref in flat:
        a = np.asarray(arrays[key])
        if not isinstance(ref, np.ndarray):
            if a.shape != () or a.dtype.kind not in "iu" or a < 0:
                raise CheckpointError(f"state {key!r} must be a 0-d non-negative integer, "
                                      f"got {a!r}")
            leaves.append(int(a))
        elif a.shape != ref.shape or a.dtype != ref.dtype:
            raise CheckpointError(f"state buffer {key!r} has shape {a.shape} and dtype {a.dtype}; "
                                  f"expected shape {ref.shape} and dtype {ref.dtype}")
        else:
            leaves.append(np.array(a, copy=True))
    return _rebuild(template, iter(leaves))
