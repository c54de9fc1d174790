"""Hypothesis strategies: problem shapes and bounded parameters/inputs."""
import numpy as np
from hypothesis import strategies as st

CELLS = ("classic", "implicit")
#: With MGRIT's matched coarse cells (tests of the kernels against the NumPy twins).
ALL_CELLS = CELLS + ("matched-classic", "matched-implicit")


@st.composite
def problems(draw, max_T=16, max_B=4, max_H=8, max_L=3, max_I=5, dtype=np.float64, cells=CELLS):
    """A small random GRU problem: dict with cell, shapes, params (PyTorch names), X (B, T, I), y."""
    T = draw(st.integers(1, max_T))
    B = draw(st.integers(1, max_B))
    H = draw(st.integers(1, max_H))
    L = draw(st.integers(1, max_L))
    I = draw(st.integers(1, max_I))
    C = draw(st.integers(2, 4))
    cell = draw(st.sampled_from(cells))
    scale = draw(st.floats(0.1, 1.5))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    dt = 1.0 if cell == "classic" else draw(st.sampled_from([0.5, 1.0, 4.0]))
    rng = np.random.default_rng(seed)
    from mgritnn.model import param_shapes
    params = {name: (scale * rng.uniform(-1, 1, shape)).astype(dtype)
              for name, shape in param_shapes(I, H, C, L)}
    X = rng.normal(size=(B, T, I)).astype(dtype)
    y = rng.integers(0, C, size=B)
    return dict(cell=cell, T=T, B=B, H=H, L=L, I=I, C=C, params=params, X=X, y=y, dt=dt, seed=seed)
