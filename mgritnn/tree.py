"""Trees of arrays: the one walker of nested containers in mgritnn.

A tree is an ndarray (a leaf), ``None`` (an empty place, kept as it is), or a tuple, list,
NamedTuple or dict of trees. The optimizers' parameters, gradients and states, the solvers'
caches and cotangents and the trainer's optimizer states are trees.
"""
import numpy as np

__all__ = ["is_namedtuple", "tree_leaves", "tree_map"]


def is_namedtuple(x):
    """Whether ``x`` is a NamedTuple (a tuple with ``_fields``)."""
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _check_same(tree, r):
    """Raise ValueError unless ``r`` has the container type and size of ``tree`` (one level)."""
    if isinstance(tree, dict):
        if not isinstance(r, dict) or set(r) != set(tree):
            raise ValueError(f"trees of different structure: keys {sorted(tree)} and "
                             f"{sorted(r) if isinstance(r, dict) else type(r).__name__}")
    elif not isinstance(r, (tuple, list)) or len(r) != len(tree):
        raise ValueError(f"trees of different structure: a {type(tree).__name__} of "
                         f"{len(tree)} and a {type(r).__name__}")


def tree_map(fn, tree, *rest):
    """Apply ``fn`` to the leaves of ``tree`` (and the matching leaves of ``rest``).

    Parameters
    ----------
    fn : callable ``fn(leaf, *other_leaves) -> ndarray``
    tree : ndarray, None, or tuple, list, NamedTuple or dict of trees
    *rest : trees of the same structure as ``tree``

    Returns
    -------
    tree
        Of the structure of ``tree`` (the same container types, ``None`` where ``tree`` has
        ``None``), leaves ``fn``'s results.

    Raises
    ------
    TypeError
        For a leaf that is not an ndarray.
    ValueError
        If the trees of ``rest`` have another structure.
    """
    if isinstance(tree, np.ndarray):
        return fn(tree, *rest)
    if tree is None:
        return None
    if isinstance(tree, dict):
        for r in rest:
            _check_same(tree, r)
        return type(tree)((k, tree_map(fn, v, *(r[k] for r in rest))) for k, v in tree.items())
    if isinstance(tree, (tuple, list)):
        for r in rest:
            _check_same(tree, r)
        mapped = [tree_map(fn, *xs) for xs in zip(tree, *rest)]
        return type(tree)(*mapped) if is_namedtuple(tree) else type(tree)(mapped)
    raise TypeError(f"parameters, gradients and updates are numpy arrays or tuples, lists or dicts "
                    f"of them; got a leaf of type {type(tree).__name__}")


def tree_leaves(tree):
    """The ndarray leaves of ``tree`` in :func:`tree_map`'s order (a list; ``None`` has none)."""
    leaves = []
    tree_map(leaves.append, tree)
    return leaves
