"""The vectorizable sigmoid/tanh against NumPy in float64 (ulp-level accuracy over the whole range)."""
import numpy as np
import pytest

from mgritnn.cells import activations


def _ref(name, x):
    x = x.astype(np.float64)
    if name == "tanh":
        return np.tanh(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@pytest.mark.parametrize("dtype, lim, ulps", [(np.float32, 80.0, 2.0), (np.float64, 700.0, 24.0)])
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_accuracy_in_ulp(name, dtype, lim, ulps):
    x = np.concatenate([np.linspace(-lim, lim, 400_001), np.linspace(-1, 1, 200_001),
                        [0.0, -0.0, 1e-30, -1e-30, 1e-8]]).astype(dtype)
    got = activations.apply(name, x)
    assert got.dtype == dtype
    ref = _ref(name, x)
    rel = np.abs(got - ref) / np.maximum(np.abs(ref), np.finfo(dtype).tiny)
    assert rel.max() <= ulps * np.finfo(dtype).eps, (x[rel.argmax()], rel.max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturation_and_symmetry(dtype):
    x = np.array([-1e4, -100, 100, 1e4, np.finfo(dtype).max, -np.finfo(dtype).max], dtype)
    t = activations.apply("tanh", x)
    s = activations.apply("sigmoid", x)
    assert np.array_equal(t, np.sign(x).astype(dtype))
    assert np.all((s >= 0) & (s <= 1))
    assert np.array_equal(s[x > 0], np.ones(3, dtype))
    y = np.linspace(-5, 5, 1001).astype(dtype)
    assert np.array_equal(activations.apply("tanh", -y), -activations.apply("tanh", y))


def test_unknown_name():
    with pytest.raises(ValueError, match="sigmoid"):
        activations.apply("relu", np.zeros(3))
