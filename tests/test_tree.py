"""mgritnn.tree: the one tree walker (ndarray leaves in tuples, lists, NamedTuples and dicts)."""
from typing import NamedTuple

import numpy as np
import pytest

from mgritnn import optim
from mgritnn.tree import is_namedtuple, tree_leaves, tree_map


class Pair(NamedTuple):
    a: np.ndarray
    b: object


def test_tree_map_keeps_the_structure_and_none():
    tree = {"x": Pair(np.ones(2), None), "y": [np.arange(3.0), (np.zeros(1),)]}
    out = tree_map(lambda v: v * 2, tree)
    assert isinstance(out["x"], Pair) and out["x"].b is None
    assert isinstance(out["y"], list) and isinstance(out["y"][1], tuple)
    np.testing.assert_array_equal(out["y"][0], [0, 2, 4])
    assert [a.tolist() for a in tree_leaves(tree)] == [[1, 1], [0, 1, 2], [0]]
    assert tree_leaves(None) == [] and is_namedtuple(Pair(1, 2)) and not is_namedtuple((1, 2))


def test_tree_map_with_several_trees_and_their_structure_checked():
    a = (np.ones(2), {"k": np.ones(1)})
    b = (np.full(2, 3.0), {"k": np.full(1, 4.0)})
    out = tree_map(lambda x, y: x + y, a, b)
    np.testing.assert_array_equal(out[0], [4, 4])
    np.testing.assert_array_equal(out[1]["k"], [5])
    with pytest.raises(ValueError, match="different structure: keys"):
        tree_map(lambda x, y: x, {"k": np.ones(1)}, {"j": np.ones(1)})
    with pytest.raises(ValueError, match="different structure: a tuple of 2"):
        tree_map(lambda x, y: x, a, (np.ones(2),))
    with pytest.raises(TypeError, match="got a leaf of type float"):
        tree_map(lambda x: x, (np.ones(1), 1.5))


def test_optim_uses_the_one_tree_walker():
    assert optim.tree_map is tree_map and optim.tree_leaves is tree_leaves
