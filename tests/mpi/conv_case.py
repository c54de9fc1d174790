"""The convolutional ODENet on P ranks (``tests/test_conv_odenet.py``): layer-parallel MGRIT
gives, on every rank, the loss and logits of one process bitwise, its gradient to round-off (the
ranks' parts summed in another order) and its residual histories and iteration counts; a tight
solve equals serial backpropagation (1e-9). The one-process reference is computed on every rank
(a solver without a communicator). Prints ``ok`` once per rank; any failure raises (``-m mpi4py``
ends all ranks)."""
import numpy as np
from mpi4py import MPI

from mgritnn.odenet import ODENet
from mgritnn.solvers import MGRITConfig, make_solver

comm = MPI.COMM_WORLD
net = ODENet(16, None, 3, 21, activation="tanh", layer="conv", channels=2, image_shape=(1, 4, 4),
             layer_init="independent", tikhonov=1e-3, ddt_penalty=1e-2, seed=3)
rng = np.random.default_rng(0)
X, y = rng.normal(size=(6, 16)), rng.integers(0, 3, 6)
_, ser, _ = net.loss_and_grad_flat(X, y)
for conf in (MGRITConfig(levels=3, cf=2, max_iter=2, adjoint_max_iter=2),
             MGRITConfig(levels=3, cf=2, max_iter=40, adjoint_max_iter=40, atol_l2=1e-14)):
    one = net.loss_and_grad_flat(X, y, make_solver(conf), strict=False)
    got = net.loss_and_grad_flat(X, y, make_solver(conf, comm), strict=False)
    assert got[0] == one[0], (got[0], one[0])
    assert np.array_equal(got[2]["logits"], one[2]["logits"])
    np.testing.assert_allclose(got[1], one[1], rtol=0, atol=1e-12 * np.abs(one[1]).max())
    for part in ("forward", "adjoint"):
        a, b = got[2][part], one[2][part]
        assert a.iterations == b.iterations and a.status == b.status, part
        np.testing.assert_allclose(a.history, b.history, rtol=1e-10, atol=1e-15)
    if conf.max_iter == 2:
        assert np.abs(one[1] - ser).max() > 1e-9         # inexact: the comparison means something
    else:
        assert one[2]["forward"].status == 0
        np.testing.assert_allclose(got[1], ser, rtol=0, atol=1e-9 * np.abs(ser).max())
print("ok", flush=True)
