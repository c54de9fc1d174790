"""The convolutional ODENet (issue 26, item 2): its numba kernels against slow NumPy twins (direct
loops over the pixels), finite differences of every parameter in float64, MGRIT over the layers
(one level bitwise serial, tight tolerance equal to backpropagation), nested iteration and the
penalties on convolutional layers, checkpoints, the data's image shape and bad input. The
rank-count invariance under mpiexec: ``tests/mpi/conv_case.py`` (at the end)."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mgritnn
from mgritnn import datasets
from mgritnn.cells.conv_odenet import (ConvODENetCell, conv2d, conv2d_input_vjp,
                                       conv2d_weight_vjp)
from mgritnn.errors import ConfigError, DataError
from mgritnn.odenet import ODENet, interpolate_layers
from mgritnn.solvers import MGRITConfig
from mgritnn.train import RunSpec, TrainConfig, Trainer
from mgritnn.train.config import ODENetSpec

from mpi_util import find_mpiexec, run_mpi


# -- slow twins: direct loops over every output pixel ------------------------------------------

def naive_conv(K, b, u):
    """u (B, cin, H, W), K (cout, cin, 3, 3), b (cout,): the "same" 3 x 3 convolution, zero
    padding, one output at a time."""
    B, cin, H, W = u.shape
    out = np.zeros((B, K.shape[0], H, W))
    for n in range(B):
        for o in range(K.shape[0]):
            for i in range(H):
                for j in range(W):
                    acc = b[o]
                    for c in range(cin):
                        for p in range(3):
                            for q in range(3):
                                ii, jj = i + p - 1, j + q - 1
                                if 0 <= ii < H and 0 <= jj < W:
                                    acc += K[o, c, p, q] * u[n, c, ii, jj]
                    out[n, o, i, j] = acc
    return out


def naive_conv_vjp(K, u, s):
    """The cotangents of u, K and b for the output cotangent s, by scattering each output's."""
    B, cin, H, W = u.shape
    du, dK, db = np.zeros_like(u), np.zeros_like(K), np.zeros(K.shape[0])
    for n in range(B):
        for o in range(K.shape[0]):
            for i in range(H):
                for j in range(W):
                    db[o] += s[n, o, i, j]
                    for c in range(cin):
                        for p in range(3):
                            for q in range(3):
                                ii, jj = i + p - 1, j + q - 1
                                if 0 <= ii < H and 0 <= jj < W:
                                    du[n, c, ii, jj] += K[o, c, p, q] * s[n, o, i, j]
                                    dK[o, c, p, q] += u[n, c, ii, jj] * s[n, o, i, j]
    return du, dK, db


def rows(K, b):
    """(cout, cin, 3, 3) and (cout,) as the kernels' rows (cout, 9 cin + 1)."""
    return np.concatenate([K.reshape(K.shape[0], -1), b[:, None]], axis=1)


def naive_net(net, X, y):
    """The conv ODENet's loss (no regularization) by the twins: opening, layers, pooling,
    softmax cross-entropy."""
    act = net._act
    p = net.params
    u = act(naive_conv(p["opening.weight"], p["opening.bias"], X.reshape((-1,) + net.image_shape)))[0]
    c = net.channels
    for k in range(net.depth):
        L = p["layers"][k]
        K, b = L[:, :-1].reshape(c, c, 3, 3), L[:, -1]
        u = u + net.dt * act(naive_conv(K, b, u))[0]
    z = u.mean(axis=(2, 3)) @ p["classifier.weight"].T + p["classifier.bias"]
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))


shapes = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 5),
                   st.integers(1, 5), st.integers(0, 2 ** 31))


@given(shapes)
def test_kernels_equal_the_twins(shape):
    K_, B, cin, H, W, seed = shape
    cout = (seed % 3) + 1
    rng = np.random.default_rng(seed)
    K = rng.normal(size=(K_, cout, cin, 3, 3))
    b = rng.normal(size=(K_, cout))
    u = rng.normal(size=(K_, B, cin, H, W))
    s = rng.normal(size=(K_, B, cout, H, W))
    w = np.stack([rows(K[k], b[k]) for k in range(K_)])
    out, du, dw = conv2d(w, u), conv2d_input_vjp(w, s), conv2d_weight_vjp(s, u)
    assert out.shape == s.shape and du.shape == u.shape and dw.shape == w.shape
    for k in range(K_):
        np.testing.assert_allclose(out[k], naive_conv(K[k], b[k], u[k]), rtol=1e-12, atol=1e-12)
        du_, dK_, db_ = naive_conv_vjp(K[k], u[k], s[k])
        np.testing.assert_allclose(du[k], du_, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dw[k], rows(dK_, db_), rtol=1e-12, atol=1e-12)


def test_kernels_in_float32_and_dtype_errors():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(1, 2, 19)).astype(np.float32)
    u = rng.normal(size=(1, 3, 2, 4, 4)).astype(np.float32)
    out = conv2d(w, u)
    assert out.dtype == np.float32
    ref = naive_conv(w[0, :, :-1].reshape(2, 2, 3, 3).astype(np.float64), w[0, :, -1], u[0])
    np.testing.assert_allclose(out[0], ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="one dtype"):
        conv2d(w.astype(np.float64), u)
    with pytest.raises(ValueError, match="9 cin"):
        conv2d(w[:, :, :-2], u)


def test_cell_step_and_vjp_against_the_twin_and_zero_steps():
    rng = np.random.default_rng(3)
    c, H, W, B = 2, 3, 4, 5
    cell = ConvODENetCell(c, H, W, "tanh")
    x = rng.normal(size=(2, c, 9 * c + 1))
    u = rng.normal(size=(2, B, c * H * W))
    dt = np.array([0.3, 0.0])
    new, cache = cell.step(cell.weights(np.float64), x, u, dt, cache=True)
    a = naive_conv(x[0, :, :-1].reshape(c, c, 3, 3), x[0, :, -1], u[0].reshape(B, c, H, W))
    np.testing.assert_allclose(new[0], u[0] + 0.3 * np.tanh(a).reshape(B, -1), rtol=1e-12)
    assert np.array_equal(new[1], u[1])                # a zero step is the identity, bitwise
    lam_next = rng.normal(size=u.shape)
    lam, dx = cell.step_vjp(cell.weights(np.float64), x, u, dt, lam_next, cache=cache)
    assert np.array_equal(lam[1], lam_next[1]) and not dx[1].any()
    s = (0.3 * (1 - np.tanh(a) ** 2) * lam_next[0].reshape(B, c, H, W))
    du, dK, db = naive_conv_vjp(x[0, :, :-1].reshape(c, c, 3, 3), u[0].reshape(B, c, H, W), s)
    np.testing.assert_allclose(lam[0], lam_next[0] + du.reshape(B, -1), rtol=1e-12)
    np.testing.assert_allclose(dx[0], rows(dK, db), rtol=1e-12, atol=1e-14)
    with pytest.raises(ConfigError, match="convolutional ODENet step"):
        cell.step(cell.weights(np.float64), x[:, :, :-1], u, 0.1)


# -- the network ------------------------------------------------------------------------------

def small_net(seed=0, act="tanh", depth=4, c=2, shape=(2, 3, 4), classes=3, **kw):
    kw.setdefault("tikhonov", 1e-3)
    kw.setdefault("ddt_penalty", 1e-2)
    return ODENet(int(np.prod(shape)), None, classes, depth, activation=act, layer="conv",
                  channels=c, image_shape=shape, seed=seed, layer_init="independent", **kw)


def test_loss_equals_the_twins_network():
    net = small_net(tikhonov=0, ddt_penalty=0, act="smoothrelu")
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(6, 24)), np.arange(6) % 3
    loss, _, info = net.loss_and_grad_flat(X, y)
    assert abs(loss - naive_net(net, X, y)) < 1e-12
    assert info["regularization"] == 0


@given(st.integers(1, 3), st.integers(1, 2), st.integers(2, 4), st.integers(2, 4),
       st.integers(1, 5), st.sampled_from(["tanh", "smoothrelu"]), st.integers(0, 1000))
def test_finite_differences_of_every_parameter(c, cin, H, W, depth, act, seed):
    """Central differences along a random direction of each parameter array (and of each
    layer's kernels and biases apart) equal the gradient's projection, float64."""
    net = small_net(seed, act, depth, c, (cin, H, W))
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(4, cin * H * W)), rng.integers(0, 3, 4)
    _, grad, _ = net.loss_and_grad_flat(X, y)
    g = net.unflatten(grad)
    base = net.flat.copy()
    parts = [(name, np.ones(v.shape, bool)) for name, v in net.params.items() if name != "layers"]
    for k in range(depth):
        for col in ("kernels", "bias"):
            m = np.zeros(net.params["layers"].shape, bool)
            if col == "bias":
                m[k, :, -1] = True
            else:
                m[k, :, :-1] = True
            parts.append(("layers", m))
    for name, mask in parts:
        d = np.zeros_like(net.flat)
        dv = net.unflatten(d)[name]
        dv[mask] = rng.normal(size=int(mask.sum()))
        eps = 1e-6
        net.flat[:] = base + eps * d
        lp = net.loss_and_grad_flat(X, y)[0]
        net.flat[:] = base - eps * d
        lm = net.loss_and_grad_flat(X, y)[0]
        net.flat[:] = base
        fd, an = (lp - lm) / (2 * eps), float(np.sum(g[name] * dv))
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (name, fd, an)


def test_mgrit_one_level_is_serial_bitwise_and_tight_equals_backprop():
    net = small_net(depth=16, c=3, shape=(1, 4, 4), act="tanh")
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(7, 16)), rng.integers(0, 3, 7)
    loss, grad, info = net.loss_and_grad_flat(X, y)
    l1, g1, i1 = net.loss_and_grad_flat(X, y, MGRITConfig(levels=1))
    assert l1 == loss and np.array_equal(g1, grad)
    assert np.array_equal(i1["logits"], info["logits"])
    loose = MGRITConfig(levels=3, cf=2, max_iter=1, adjoint_max_iter=1)
    ll, gl, _ = net.loss_and_grad_flat(X, y, loose, strict=False)
    assert np.abs(gl - grad).max() > 1e-9            # not converged: the next check means something
    tight = MGRITConfig(levels=3, cf=2, max_iter=40, adjoint_max_iter=40, atol_l2=1e-14)
    lt, gt, it = net.loss_and_grad_flat(X, y, tight)
    assert it["forward"].status == 0 and it["adjoint"].status == 0
    assert abs(lt - loss) <= 1e-12 * abs(loss)
    np.testing.assert_allclose(gt, grad, rtol=0, atol=1e-9 * np.abs(grad).max())


def test_nested_refinement_and_penalties_act_on_conv_layers():
    net = small_net(depth=3, c=2)
    fine = net.refined(2, "linear")
    assert fine.depth == 6 and fine.layer == "conv" and fine.channels == 2
    np.testing.assert_array_equal(fine.params["layers"],
                                  interpolate_layers(net.params["layers"], 2, "linear"))
    np.testing.assert_array_equal(fine.params["opening.weight"], net.params["opening.weight"])
    g = np.zeros_like(net.flat)
    reg = net.regularization(g)
    L = net.params["layers"]
    want = (net.tikhonov / 2 * float(np.sum(net.flat ** 2))
            + net.ddt_penalty / 2 * float(np.sum(((L[1:] - L[:-1]) / net.dt) ** 2)))
    assert abs(reg - want) <= 1e-12 * want
    gl = net.unflatten(g)["layers"]
    D = net.ddt_penalty * (L[1:] - L[:-1]) / net.dt ** 2
    ref = net.tikhonov * L.copy()
    ref[1:] += D
    ref[:-1] -= D
    np.testing.assert_allclose(gl, ref, rtol=1e-12)


def test_images_4d_equal_flat_rows():
    net = small_net()
    X = np.random.default_rng(0).normal(size=(3, 2, 3, 4))
    np.testing.assert_array_equal(net.forward(X), net.forward(X.reshape(3, -1)))
    with pytest.raises(DataError, match="images of shape"):
        net.forward(X.reshape(3, 2, 4, 3))


def test_checkpoint_round_trip(tmp_path):
    net = small_net(seed=5)
    net.save(tmp_path / "m.npz")
    back = mgritnn.load(tmp_path / "m.npz")
    assert back.config == net.config and back.layer == "conv" and back.image_shape == (2, 3, 4)
    np.testing.assert_array_equal(back.flat, net.flat)
    X = np.random.default_rng(0).normal(size=(3, 24))
    np.testing.assert_array_equal(back.forward(X), net.forward(X))
    json.dumps(net.config)


def test_a_dense_config_has_no_conv_fields_and_old_configs_load_dense():
    dense = ODENet(3, 5, 2, 4)
    assert not {"layer", "channels", "image_shape"} & set(dense.config)
    assert ODENet(**dense.config).layer == "dense"


@pytest.mark.parametrize("kw, match", [
    (dict(channels=2, image_shape=None), "image_shape"),
    (dict(channels=2, image_shape=(1, 3)), "image_shape"),
    (dict(channels=2, image_shape=(1, 5, 5)), "25 pixel values"),
    (dict(channels=0, image_shape=(1, 4, 6)), "channels"),
    (dict(channels=2, image_shape=(1, 4, 6), opening="copy"), "opening"),
    (dict(channels=2, image_shape=(1, 4, 6), width=5), "width"),
])
def test_bad_conv_options(kw, match):
    kw = dict(dict(width=None), **kw)
    with pytest.raises(ConfigError, match=match):
        ODENet(24, kw.pop("width"), 3, 2, layer="conv", **kw)


def test_conv_options_without_conv_layers():
    with pytest.raises(ConfigError, match="layer='conv'"):
        ODENet(24, 4, 3, 2, channels=3)


# -- data and the trainer ---------------------------------------------------------------------

def _image_npz(path, four_d=False, shape=(1, 3, 3), entry=True):
    rng = np.random.default_rng(0)
    F = int(np.prod(shape))
    Xtr, Xte = rng.normal(size=(20, F)).astype(np.float32), rng.normal(size=(8, F)).astype(np.float32)
    if four_d:
        Xtr, Xte = Xtr.reshape((20,) + shape), Xte.reshape((8,) + shape)
    arrays = dict(X_train=Xtr, y_train=np.arange(20) % 2, X_test=Xte, y_test=np.arange(8) % 2)
    if entry:
        arrays["image_shape"] = np.array(shape)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("four_d, entry", [(False, True), (True, False), (True, True)])
def test_load_gives_the_image_shape(tmp_path, four_d, entry):
    ds = datasets.load(str(_image_npz(tmp_path / "d.npz", four_d, entry=entry)))
    assert ds.image_shape == (1, 3, 3) and ds.X_train.shape == (20, 9) and ds.kind == "static"


def test_bad_image_shapes_in_a_file(tmp_path):
    p = _image_npz(tmp_path / "a.npz")
    a = dict(np.load(p))
    np.savez(p, **dict(a, image_shape=np.array([2, 3, 3])))
    with pytest.raises(DataError, match="image_shape"):
        datasets.load(str(p))
    np.savez(p, **dict(a, image_shape=np.array([3, 3])))
    with pytest.raises(DataError, match="three integers"):
        datasets.load(str(p))


def _cfg(data, **model):
    return TrainConfig(model=ODENetSpec(**dict(dict(depth=4, layer="conv", channels=2), **model)),
                       run=RunSpec(epochs=1, data=str(data), batch_size=10))


def test_conv_on_data_without_an_image_shape_is_a_data_error():
    with pytest.raises(DataError, match="--layer conv needs images.*image_shape"):
        Trainer(_cfg("peaks"))


def test_train_checkpoint_resume(tmp_path):
    """Two epochs in one run, and one epoch, a checkpoint and a resumed second: the same bits."""
    data = _image_npz(tmp_path / "d.npz")
    ck = tmp_path / "ck.npz"
    spec = _cfg(data, dtype="float64").model_spec
    full = Trainer(TrainConfig(model=spec, run=RunSpec(epochs=2, data=str(data), batch_size=10)))
    full.fit()
    Trainer(TrainConfig(model=spec, run=RunSpec(epochs=1, data=str(data), batch_size=10,
                                                checkpoint=str(ck)))).fit()
    resumed = Trainer(TrainConfig(model=spec, run=RunSpec(
        epochs=2, data=str(data), batch_size=10, checkpoint=str(ck), resume=True)))
    resumed.fit()
    np.testing.assert_array_equal(resumed.model.flat, full.model.flat)
    m = mgritnn.load(str(ck))
    assert m.layer == "conv" and m.image_shape == (1, 3, 3)
    np.testing.assert_array_equal(m.flat, full.model.flat)


def test_cli_trains_digits(shared_data, tmp_path):
    from mgritnn.cli import main
    rc = main(["train", "--model", "odenet", "--layer", "conv", "--channels", "2", "--depth", "2",
               "--epochs", "1", "--max-batches", "2", "--data", str(shared_data / "digits.npz"),
               "--log", str(tmp_path / "log.jsonl")])
    assert rc in (0, None)
    assert (tmp_path / "log.jsonl").read_text().count("epoch") >= 1


@pytest.mark.parametrize("flags, msg", [
    (["--channels", "4"], "--channels is an option of --layer conv"),
    (["--layer", "conv", "--width", "4"], "--width is an option of --layer dense"),
    (["--layer", "conv", "--opening", "copy"], "--opening is an option of --layer dense"),
])
def test_cli_options_that_do_not_apply(flags, msg, capsys):
    from mgritnn.cli import main
    rc = main(["train", "--model", "odenet", "--data", "peaks"] + flags)
    assert rc == 2 and msg in capsys.readouterr().err


# -- MPI: the rank count does not change the results -----------------------------------------

@pytest.mark.skipif(find_mpiexec() is None, reason="no mpiexec next to sys.executable nor on "
                    "PATH: install the 'mpich' wheel (a dependency of mgritnn)")
@pytest.mark.parametrize("P", [2, 3, 4])
def test_ranks_equal_one_process(P, tmp_path):
    """``tests/mpi/conv_case.py`` on P ranks: the loss and logits bitwise, the gradient to
    round-off (its sums over the ranks), the residual histories, as one process; the tight solve
    equal to serial backpropagation (1e-9). The script asserts on every rank."""
    res = run_mpi(P, "conv_case.py", timeout=300, check=True)
    assert res.stdout.count("ok") == P


def test_images_are_standardized_per_channel():
    """Image data: one mean and std per image channel over the samples and its pixels (not per
    pixel, which would blow up rarely lit pixels), repeated over the pixels."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 2 * 3 * 4)) * np.repeat([1.0, 5.0], 12) + np.repeat([0.0, 3.0], 12)
    X[:, 0] = 0.0
    st_ = datasets.Standardizer.fit(X, image_shape=(2, 3, 4))
    for c in range(2):
        part = X[:, 12 * c:12 * (c + 1)]
        np.testing.assert_allclose(st_.mean[12 * c:12 * (c + 1)], part.mean(), rtol=1e-12)
        np.testing.assert_allclose(st_.std[12 * c:12 * (c + 1)], part.std(), rtol=1e-12)
    with pytest.raises(DataError, match="images of shape"):
        datasets.Standardizer.fit(X, image_shape=(1, 3, 4))


def test_the_memory_check_counts_the_conv_state():
    """One rank's conv states are channels x H x W per sample and layer: a run whose states
    cannot fit is refused up front (with width 8, the dense default, it would pass)."""
    from mgritnn.train.models import ODENetAdapter
    X = np.zeros((4, 64 * 64), np.float32)
    ds = datasets.Dataset(X, np.arange(4) % 2, X, np.arange(4) % 2, 2, "big", ("a", "b"),
                          image_shape=(1, 64, 64))
    cfg = TrainConfig(model=ODENetSpec(depth=512, layer="conv", channels=256))
    with pytest.raises(ConfigError, match="memory|GiB|fit"):
        ODENetAdapter.check_memory(cfg, ds, 4096, 1)
    ODENetAdapter.check_memory(TrainConfig(model=ODENetSpec(depth=512)), ds, 4096, 1)
