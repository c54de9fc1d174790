"""ODENet: a deep residual network whose layers are the time steps of the solvers (layer-parallel).

The network (Günther et al. 2020) for features y (B, F) and classes C:

* opening: :math:`u_0 = \\sigma(W_0 y + b_0)`, features to width w (``opening="dense"``), or
  ``"copy"``: the features copied into the first F of w entries, the rest 0 (w >= F);
* N residual layers :math:`u_{k+1} = u_k + \\Delta t\\, \\sigma(W_k u_k + b_k)`,
  :math:`\\Delta t = T/N` (T = ``final_time``), one forward-Euler step of
  :math:`u' = \\sigma(W(t) u + b(t))` each; every layer has its own W_k (w, w) and its own
  **vector** bias b_k (w,) (the authors used one scalar bias per layer; a vector costs w - 1 more
  parameters per layer and is what a dense layer usually has);
* classifier: logits :math:`z = W_c u_N + b_c` (C, w), softmax cross-entropy averaged over the
  batch (the head shared with :class:`~mgritnn.model.GRUClassifier`,
  :func:`~mgritnn.model.softmax_cross_entropy_head`);
* regularization: Tikhonov :math:`\\frac{\\gamma}{2} \\|\\theta\\|^2` over **all** parameters
  (opening, layers and classifier), plus the smoothness of the layers in t,
  :math:`\\frac{\\gamma_{ddt}}{2} \\sum_{k=1}^{N-1} \\|(\\theta_k - \\theta_{k-1})/\\Delta t\\|^2`
  (θ_k = [W_k | b_k]). Both are sums over the layers as written, not integrals: they grow with
  the depth N (Tikhonov like N, the smoothness term like N² for a fixed jump), so the loss of
  networks of different depths is comparable only without them.

Convolutional layers (``layer="conv"``, issue 26): on images (C_in, H, W) the state of a sample
is c x H x W (c = ``channels``, flattened to c H W); the opening is a 3 x 3 "same" convolution
from C_in to c channels followed by σ, the layers :math:`u_{k+1} = u_k + \\Delta t\\, \\sigma(K_k
* u_k + b_k)` are 3 x 3 convolutions from c to c channels with a bias per channel
(:class:`~mgritnn.cells.conv_odenet.ConvODENetCell`, layer k's weights the step input (c, 9 c + 1)),
and the classifier reads the state averaged over the pixels (C, c). Everything below (the
solvers, owned layers, the penalties on the layer rows, nested iteration) is the same.

The residual layers run on the solvers' step protocol through :class:`~mgritnn.cells.odenet.ODENetCell`:
the layer weights are the cell's step inputs (N, w, w + 1), the state is (B, w). The serial solver
is ordinary backpropagation; MGRIT (``MGRITConfig``) trains the layers in parallel: each rank gets
the weights of its own layers (``solver.local_steps(N)``) as its step inputs, and their gradients
come back from the adjoint as the input cotangents on that rank. The opening runs on every rank
(only the first rank's result enters the solve); its gradient comes from the adjoint at point 0
(``lam_first``) on the first rank; the classifier and the regularization of the shared
parameters are evaluated on the last rank.

Two ways to combine the ranks' gradients (``loss_and_grad_flat(..., owned=...)``):

* ``owned=False`` (default): ``solver.reduce`` sums the whole flat gradient (the rows other ranks
  do not own are zero there); every rank must hold all layers current (the regularization of
  all layers is evaluated on the last rank).
* ``owned=True`` (the trainer's with Adam/SGD): the ranks own their layers' updates. Each rank's
  layer rows hold its own layers' gradient, zeros elsewhere (no allreduce for them); only the
  opening's and classifier's gradient is summed (``solver.reduce(..., shared=...)``). Each rank
  evaluates its layers' regularization: Tikhonov row by row, and the smoothness term with the
  neighbouring ranks' boundary layers (one message each way through the solver's TimeComm); the
  2N per-layer terms are summed over the ranks in one small allreduce, so every rank reports the
  same value, the one-process bits. The owned rows, the shared parts, the loss and logits are
  bitwise those of ``owned=False``. The rows a rank does not own may be stale on it:
  :meth:`ODENet.sync_layers` (one ``Allgatherv`` of the owned blocks) makes them current before
  anything reads all layers (the trainer: evaluation, checkpoints, the end of training).

Layer-parallel memory: the trainer's ranks store only their layers. :meth:`ODENet.block` cuts
the network to a rank's **block model** (its ``flat`` holds the opening, the layers [lo, hi) and
the classifier; the gradient and the optimizer state are laid out alike), whose
``loss_and_grad_flat(..., owned=True)`` gives the bits above, whose serial :meth:`ODENet.forward`
is pipelined over the time ranks, and whose :meth:`ODENet.gathered` gives the whole network back
(checkpoints, nested iteration, the end of training). A model built by the constructor stores all
layers.

References
----------
S. Günther, L. Ruthotto, J. B. Schroder, E. C. Cyr, N. R. Gauger, "Layer-parallel training of deep
residual neural networks", SIAM J. Math. Data Sci. 2(1), 2020.
"""
import copy
import time

import numpy as np

from .cells.conv_odenet import ConvODENetCell, conv2d, conv2d_weight_vjp
from .cells.odenet import ACTIVATIONS, ODENetCell
from .config import resolve_dtype
from .errors import ConfigError, DataError
from .io import atomic_savez
from .model import MODEL_TYPES, FlatParamModel, _check_solve, as_model_array, check_keys, \
    check_labels, linear_head, \
    softmax_cross_entropy_head
from .options import check_choice, check_int, check_real
from .runtime import entry_point

OPENINGS = ("dense", "copy")
#: The kinds of residual layer: dense (W_k u + b_k on vectors) or 3 x 3 convolutions on images.
LAYER_KINDS = ("dense", "conv")
INTERPOLATIONS = ("constant", "linear")
LAYER_INITS = ("constant", "independent")


def odenet_shapes(num_features, width, num_classes, depth, opening="dense", layer="dense",
                  channels=None, image_shape=None):
    """Names and shapes of the parameters, in the flat buffer's order: ``opening.weight`` (w, F)
    and ``opening.bias`` (w,) (``"dense"`` only), ``layers`` (N, w, w + 1) (row k: [W_k | b_k]),
    ``classifier.weight`` (C, w), ``classifier.bias`` (C,).

    With ``layer="conv"`` (c = ``channels``, C_in = ``image_shape[0]``; ``num_features`` and
    ``width`` unused): ``opening.weight`` (c, C_in, 3, 3), ``opening.bias`` (c,), ``layers``
    (N, c, 9 c + 1) (row o of layer k: [K_k[o].ravel() | b_k[o]],
    :mod:`mgritnn.cells.conv_odenet`), ``classifier.weight`` (C, c), ``classifier.bias`` (C,)."""
    if layer == "conv":
        c = channels
        return [("opening.weight", (c, image_shape[0], 3, 3)), ("opening.bias", (c,)),
                ("layers", (depth, c, 9 * c + 1)), ("classifier.weight", (num_classes, c)),
                ("classifier.bias", (num_classes,))]
    w = width
    shapes = [("opening.weight", (w, num_features)), ("opening.bias", (w,))] \
        if opening == "dense" else []
    return shapes + [("layers", (depth, w, w + 1)), ("classifier.weight", (num_classes, w)),
                     ("classifier.bias", (num_classes,))]


def _check_layers(layers, what):
    a = np.asarray(layers)
    if a.ndim != 3 or a.shape[2] not in (a.shape[1] + 1, 9 * a.shape[1] + 1) or a.shape[0] < 1:
        raise ConfigError(f"{what} must have shape (N, w, w + 1) with N >= 1 (layer k: "
                          f"[W_k | b_k]), or (N, c, 9 c + 1) (convolutional layers), got "
                          f"{a.shape}")
    return a


def interpolate_layers(coarse, cf, kind="constant"):
    """The layers of a network cf times deeper from those of a coarse one (nested iteration).

    Fine layer i sits at t = i Δt_f, coarse layer j at t = j cf Δt_f.

    Parameters
    ----------
    coarse : ndarray, shape (Nc, w, w + 1), or (Nc, c, 9 c + 1) (convolutional layers)
    cf : int >= 1
    kind : {"constant", "linear"}
        ``"constant"``: fine layer i takes coarse layer ⌊i/cf⌋ (the papers' choice).
        ``"linear"``: for i = j cf + r, :math:`(1 - r/cf)\\,\\theta_j + (r/cf)\\,\\theta_{j+1}`;
        in the last coarse interval (j = Nc - 1) there is no θ_{Nc} to go to, so the last
        coarse layer is held constant there (no extrapolation).

    Returns
    -------
    ndarray, shape (Nc cf, w, w + 1), coarse's dtype
        Every cf-th layer is the coarse one exactly: ``inject_layers(result, cf) == coarse``.
    """
    coarse = _check_layers(coarse, "coarse layers")
    cf = check_int("cf", cf, least=1)
    check_choice("interpolation kind", kind, INTERPOLATIONS)
    Nc = coarse.shape[0]
    fine = np.repeat(coarse, cf, axis=0)
    if kind == "linear" and Nc > 1:
        r = (np.arange(1, cf, dtype=np.float64) / cf)[:, None, None]
        for j in range(Nc - 1):
            fine[j * cf + 1:(j + 1) * cf] = (1 - r) * coarse[j] + r * coarse[j + 1]
    fine[::cf] = coarse
    return fine


def inject_layers(fine, cf):
    """Every cf-th layer, ``fine[::cf]``: the coarse network's layers (Nc, w, w + 1) of a fine one."""
    fine = _check_layers(fine, "fine layers")
    return fine[::check_int("cf", cf, least=1)].copy()


class ODENet(FlatParamModel):
    """A residual network u_{k+1} = u_k + Δt σ(W_k u_k + b_k) with an opening layer and a softmax
    classifier, trained layer-parallel by the time solvers (module docstring).

    Parameters
    ----------
    num_features, width, num_classes, depth : int
        F, w, C and N (the number of residual layers).
    activation : {"tanh", "relu", "smoothrelu"}
        σ of the opening and the layers (SmoothReLU: C¹, quadratic on |x| < 0.1).
    final_time : float
        T > 0; the layers' step size is Δt = T / N.
    opening : {"dense", "copy"}
    tikhonov, ddt_penalty : float
        γ and γ_ddt of the regularization (defaults: the authors' for Peaks).
    dtype : {"float64", "float32"}
    seed : int
        Initialization as PyTorch's ``Linear``: every weight and bias uniform in
        :math:`\\pm 1/\\sqrt{\\text{fan-in}}`, fan-in F for the opening, w for the layers and
        the classifier.
    layer_init : {"constant", "independent"}
        ``"constant"`` (default): one draw [W | b] for all layers, θ(t) constant in t, so the
        smoothness penalty starts at 0 and networks of any depth discretize the same ODE;
        ``"independent"``: a draw per layer (PyTorch's habit; the smoothness penalty then
        starts near :math:`\\gamma_{ddt} N^3 (w + 1) / (3 T^2)` and dominates deep networks).
    layer_init_scale : float or None
        None (default): the residual layers' weights and biases drawn as above (PyTorch's
        bound :math:`1/\\sqrt{\\text{fan-in}}`); a number s >= 0: drawn uniform in ±s instead
        (0: all layers start at zero, θ = 0), as the layer-parallel papers' ``weights_init``
        factor (their Peaks runs start from 0.0 or 1e-6). The opening and the classifier keep
        PyTorch's bound. Only the initialization: not part of :attr:`config`.
    layer : {"dense", "conv"}
        ``"conv"``: convolutional layers on images (:mod:`mgritnn.cells.conv_odenet`):
        u_{k+1} = u_k + Δt σ(K_k * u_k + b_k), 3 x 3 "same" convolutions of ``channels``
        channels; the opening is a 3 x 3 convolution from the image's channels to c followed by
        σ (``opening="dense"``, the only one), and the classifier reads the state averaged over
        the pixels, :math:`z = W_c\\, \\mathrm{mean}_{ij} u_N[:, i, j] + b_c`, W_c (C, c). The
        state of a sample is its c x H x W image flattened (c H W = :attr:`width`); ``width``
        must be None (or c H W). Initialization as PyTorch's ``Conv2d``: fan-in 9 C_in for the
        opening, 9 c for the layers, c for the classifier.
    channels : int or None
        c of the convolutional layers (``layer="conv"`` only).
    image_shape : sequence of 3 ints or None
        (C_in, H, W) of the images (``layer="conv"`` only); ``num_features`` must be
        C_in H W. X is then (B, C_in H W) (an image flattened in C order) or (B, C_in, H, W).

    Attributes
    ----------
    flat : ndarray, shape (P,)
        All parameters; ``params`` holds named views into it (:func:`odenet_shapes`).
    params : dict of str -> ndarray
    dt : float
        Δt = T / N.
    cell : ODENetCell
    """

    #: The model's name in checkpoints (``meta["model_type"]``) and on the command line (--model).
    model_type = "odenet"

    def __init__(self, num_features, width, num_classes, depth, activation="tanh", final_time=1.0,
                 opening="dense", tikhonov=1e-7, ddt_penalty=1e-5, dtype="float64", seed=0,
                 layer_init="constant", layer="dense", channels=None, image_shape=None,
                 layer_init_scale=None):
        self.num_features = check_int("num_features", num_features, least=1)
        check_choice("layer", layer, LAYER_KINDS)
        self.layer = layer
        if layer == "conv":
            width = self._conv_setup(channels, image_shape, width, opening)
        elif channels is not None or image_shape is not None:
            raise ConfigError("channels and image_shape are options of the convolutional layers: "
                              "give layer='conv' (--layer conv), or leave them out")
        else:
            self.channels = self.image_shape = None
        self.width = check_int("width", width, least=1)
        self.num_classes = check_int("num_classes", num_classes, least=1)
        self.depth = check_int("depth", depth, least=1)
        check_choice("activation", activation, tuple(sorted(ACTIVATIONS)))
        self.activation = activation
        self.final_time = check_real("final_time", final_time, low=0, low_open=True)
        check_choice("opening", opening, OPENINGS)
        if opening == "copy" and self.width < self.num_features:
            raise ConfigError(f"opening 'copy' puts the {self.num_features} features into the "
                              f"state, but the width is {self.width}: use width >= "
                              f"{self.num_features}, or opening='dense'")
        self.opening = opening
        self.tikhonov = check_real("tikhonov", tikhonov, low=0)
        self.ddt_penalty = check_real("ddt_penalty", ddt_penalty, low=0)
        self.dtype = resolve_dtype(dtype)
        seed = check_int("seed", seed, least=0)
        check_choice("layer_init", layer_init, LAYER_INITS)
        self.layer_init = layer_init
        check_real("layer_init_scale", layer_init_scale, low=0, none=True)
        self.dt = self.final_time / self.depth
        self.cell = (ConvODENetCell(self.channels, *self.image_shape[1:], activation)
                     if layer == "conv" else ODENetCell(activation))
        self._act = self.cell._act
        self._shapes = odenet_shapes(self.num_features, self.width, self.num_classes, self.depth,
                                     opening, layer, self.channels, self.image_shape)
        self.flat = np.empty(sum(int(np.prod(s)) for _, s in self._shapes), self.dtype)
        self.params = self.unflatten(self.flat)
        self._solvers = []
        rng = np.random.default_rng(seed)
        for name, view in self.params.items():
            fan_in = self.num_features if name.startswith("opening") else self.width
            if layer == "conv":
                fan_in = dict(opening=9 * self.image_shape[0], layers=9 * self.channels,
                              classifier=self.channels)[name.split(".")[0]]
            bound = 1.0 / np.sqrt(fan_in)
            if name.startswith("layers") and layer_init_scale is not None:
                bound = layer_init_scale
            shape = view.shape[1:] if name == "layers" and layer_init == "constant" else view.shape
            view[...] = rng.uniform(-bound, bound, shape)

    def _conv_setup(self, channels, image_shape, width, opening):
        """Check and keep the convolutional layers' options; the state width c H W."""
        self.channels = check_int("channels", channels, least=1)
        shape = np.asarray(image_shape if image_shape is not None else (), dtype=object)
        if shape.shape != (3,) or not all(isinstance(v, (int, np.integer)) and v >= 1
                                          for v in shape):
            raise ConfigError(f"convolutional layers need image_shape (C_in, H, W), three "
                              f"integers >= 1, got {image_shape!r}: give the data's image shape "
                              "(an .npz with an 'image_shape' entry)")
        self.image_shape = tuple(int(v) for v in shape)
        if int(np.prod(self.image_shape)) != self.num_features:
            raise ConfigError(f"image_shape {self.image_shape} has {int(np.prod(self.image_shape))}"
                              f" pixel values, the data {self.num_features} features: give the "
                              "image shape of the data")
        if opening != "dense":
            raise ConfigError(f"opening {opening!r} is not available with convolutional layers "
                              "(their opening is a 3 x 3 convolution): use opening='dense'")
        state = self.channels * self.image_shape[1] * self.image_shape[2]
        if width is not None and width != state:
            raise ConfigError(f"width is the dense layers' option; the convolutional state is "
                              f"channels x H x W = {state}: leave width out (None)")
        return state

    @property
    def config(self):
        """The constructor arguments that fix the parameter shapes and the computation
        (JSON-able). A dense network's has no ``layer``, ``channels`` or ``image_shape`` (as
        before they existed: its checkpoints are those of earlier versions)."""
        conf = dict(num_features=self.num_features, width=self.width,
                    num_classes=self.num_classes, depth=self.depth, activation=self.activation,
                    final_time=self.final_time, opening=self.opening, tikhonov=self.tikhonov,
                    ddt_penalty=self.ddt_penalty, dtype=np.dtype(self.dtype).name,
                    layer_init=self.layer_init)
        if self.layer == "conv":
            conf.update(width=None, layer="conv", channels=self.channels,
                        image_shape=list(self.image_shape))
        return conf

    # -- nested iteration ----------------------------------------------------------------------

    def refined(self, cf=2, kind="constant"):
        """A network ``cf`` times deeper with the same final time: its layers interpolated from
        these (:func:`interpolate_layers`), opening and classifier copied, other options equal
        (all layers must be here: :meth:`gathered` a block model first)."""
        self._check_block("refined()")
        fine = ODENet(**dict(self.config, depth=self.depth * check_int("cf", cf, least=1)))
        for name, view in self.params.items():
            if name != "layers":
                fine.params[name][...] = view
        fine.params["layers"][...] = interpolate_layers(self.params["layers"], cf, kind)
        return fine

    # -- computation ---------------------------------------------------------------------------

    def _features(self, X):
        X = as_model_array(X, self.dtype)
        if self.layer == "conv" and X.ndim == 4:
            if X.shape[1:] != self.image_shape:
                raise DataError(f"X holds images of shape {X.shape[1:]}, the model expects "
                                f"{self.image_shape} (C_in, H, W): use images of that shape")
            X = X.reshape(X.shape[0], -1)
        if X.ndim != 2:
            raise DataError(f"X must have shape (batch, features), got an array of shape {X.shape}")
        if X.shape[1] != self.num_features:
            raise DataError(f"X has {X.shape[1]} features, the model expects {self.num_features}: "
                            f"use data with {self.num_features} features or build the model with "
                            f"num_features={X.shape[1]}")
        if X.shape[0] == 0:
            raise DataError("X is empty (no samples): need at least one")
        return np.ascontiguousarray(X)

    def _opening_rows(self):
        """The convolutional opening's weights as one layer row block (1, c, 9 C_in + 1)."""
        c = self.channels
        return np.concatenate([self.params["opening.weight"].reshape(c, -1),
                               self.params["opening.bias"][:, None]], axis=1)[None]

    def _images(self, Y):
        """Y (B, C_in H W) as (1, B, C_in, H, W) (a view)."""
        return Y.reshape((1, Y.shape[0]) + self.image_shape)

    def open(self, Y):
        """The opening layer: u_0 (B, w) and σ'(a_0) (B, w) (None for ``"copy"``)."""
        if self.layer == "conv":
            return self._act(conv2d(self._opening_rows(), self._images(Y))[0].reshape(
                Y.shape[0], self.width))
        if self.opening == "copy":
            u0 = np.zeros((Y.shape[0], self.width), self.dtype)
            u0[:, :self.num_features] = Y
            return u0, None
        return self._act(linear_head(Y, self.params["opening.weight"],
                                     self.params["opening.bias"]))

    def _solve(self, Y, solver, keep):
        """The residual layers from u_0 on this rank's layers; (u_0, σ'(a_0), u_N or None, state,
        stats, (lo, hi))."""
        conf = getattr(solver, "config", None)
        if getattr(conf, "initial_guess", None) == "warm":
            raise ConfigError("MGRIT's warm start (initial_guess='warm') is not supported for "
                              "the ODENet yet: use initial_guess='zero'")
        u0, d0 = self.open(Y)
        lo, hi = solver.local_steps(self.depth)
        if self.is_block and (lo, hi) != self.held_layers:
            raise ValueError(f"this block model stores the layers {self.held_layers}, the solver "
                             f"gives this rank the layers ({lo}, {hi}): use the solver over the "
                             "block's time ranks")
        o = self._row0
        h_last, state, stats = solver.forward(self.cell, self.cell.weights(self.dtype),
                                              self.params["layers"][lo - o:hi - o], u0, self.dt,
                                              keep=keep, T=self.depth)
        return u0, d0, h_last, state, stats, (lo, hi)

    @staticmethod
    def _no_lengths(lengths):
        if lengths is not None:
            raise DataError("an ODENet takes one feature vector per sample, not sequences: "
                            "lengths must be None (drop --lengths)")

    @entry_point
    def forward(self, X, solver="serial", strict=True, lengths=None, pad="end"):
        """Logits of a batch.

        Parameters
        ----------
        X : array_like, shape (B, F)
            Real numbers (float, int, or bool read as 0/1), finite in the model's dtype; anything
            else is a DataError before any solve (:func:`~mgritnn.model.as_model_array`).
        solver : str, solver config or solver
            ``"serial"`` (backpropagation) or MGRIT (``"mgrit"``, ``MGRITConfig(...)``).
        strict : bool
            Raise :class:`~mgritnn.errors.SolverError` for a diverged or non-finite solve.
        lengths, pad : must be None / ignored
            Accepted so that the trainer can call every model alike (a DataError otherwise).

        Returns
        -------
        ndarray, shape (B, C), the model's dtype (on every rank)
        """
        self._no_lengths(lengths)
        Y = self._features(X)
        solver = self._solver(solver)
        if self.is_block and not self._owns_layers(solver):
            return self.pipelined_logits([Y], solver, strict)[0]
        *_, h_last, _, stats, _ = self._solve(Y, solver, keep=False)
        _check_solve(stats, solver, "forward", strict)
        logits = None
        if solver.is_last:
            logits = linear_head(self._pool(h_last), self.params["classifier.weight"],
                                 self.params["classifier.bias"])
        return solver.reduce(np.zeros(0, self.dtype), 0.0, logits,
                             (Y.shape[0], self.num_classes))[2]

    def pipelined_logits(self, batches, solver="serial", strict=True):
        """A block model's logits of several batches by the serial sweep over its layers,
        pipelined over the time ranks and over the batches (collective over the time ranks,
        which must pass the same batches): for each batch the state u_lo comes from the
        previous rank and u_hi goes to the next, so that rank r sweeps batch k while rank r + 1
        sweeps batch k - 1; the last rank's logits are broadcast once at the end. Each batch's
        logits are the bits of the whole network's :meth:`forward` with ``"serial"``.

        Parameters
        ----------
        batches : list of array_like, each of shape (B_k, F)
            Read on the first time rank only (the others need their lengths).
        solver : str or solver
            A serial solver (``"serial"``).
        strict : bool
            Raise :class:`~mgritnn.errors.SolverError` for a non-finite sweep (on the rank
            whose sweep it was, after the broadcast).

        Returns
        -------
        list of ndarray, shape (B_k, C), the model's dtype (on every time rank)
        """
        self._check_block_only("pipelined_logits()")
        solver = self._solver(solver)
        tc, w = self._block_tc, self.cell.weights(self.dtype)
        sizes = [len(X) for X in batches]
        logits = np.empty((sum(sizes), self.num_classes), self.dtype)
        failed, i = [], 0
        for X, n in zip(batches, sizes):
            if tc.rank == 0:
                u, _ = self.open(self._features(X))
            else:
                u = np.empty((n, self.width), self.dtype)
            tc.recv_prev(u, "odenet-layers", index=2)
            h, _, stats = solver.forward(self.cell, w, self.params["layers"], u, self.dt,
                                         keep=False)
            failed.append(stats)
            tc.send_next(h, "odenet-layers", index=2)
            if tc.rank == tc.size - 1:
                logits[i:i + n] = linear_head(self._pool(h), self.params["classifier.weight"],
                                              self.params["classifier.bias"])
            i += n
        tc.bcast(logits, root=tc.size - 1)
        for stats in failed:
            _check_solve(stats, solver, "forward", strict)
        return np.split(logits, np.cumsum(sizes)[:-1])

    def _pool(self, h):
        """What the classifier reads of the last state h (B, w): h itself (dense), or its
        average over the pixels (B, c) (conv)."""
        if self.layer != "conv":
            return h
        return h.reshape(h.shape[0], self.channels, -1).mean(axis=2)

    def _pool_vjp(self, dp, out):
        """The cotangent of the last state from that of :meth:`_pool`'s result, into ``out``
        (B, w)."""
        if self.layer != "conv":
            out[...] = dp
            return
        HW = self.image_shape[1] * self.image_shape[2]
        out.reshape(out.shape[0], self.channels, HW)[...] = (dp / HW)[:, :, None]

    def predict(self, X, solver="serial", lengths=None, pad="end"):
        """Predicted classes, ndarray of shape (B,), int64."""
        return np.argmax(self.forward(X, solver, lengths=lengths, pad=pad), axis=1)

    # -- the layers' owners (ranks of a time-parallel solver) ---------------------------------

    @property
    def _layer_span(self):
        """(start, stop) of the layers in :attr:`flat`."""
        start = 0
        for name, shape in self._shapes:
            if name == "layers":
                break
            start += int(np.prod(shape))
        return start, start + self.params["layers"].size

    def shared_slices(self):
        """The slices of :attr:`flat` that every rank shares: the opening and the classifier
        (all but the layers)."""
        start, stop = self._layer_span
        return [slice(0, start), slice(stop, self.flat.size)]

    @staticmethod
    def _owns_layers(solver):
        """Whether ``solver`` splits the layers over several ranks (then each owns a block)."""
        tc = getattr(solver, "tc", None)
        return tc is not None and tc.size > 1

    @staticmethod
    def splits_layers(solver):
        """Whether ``solver`` splits the layers over several ranks (then each rank owns a block
        of them, ``solver.local_steps(depth)``)."""
        return ODENet._owns_layers(solver)

    # -- a block of the layers (layer-parallel memory) ------------------------------------------

    #: The first layer this model stores (0 unless it is a block model, :meth:`block`).
    _row0 = 0
    #: The time ranks' TimeComm of a block model (None: the model stores all layers).
    _block_tc = None

    @property
    def is_block(self):
        """Whether this model stores only a block of the layers (:meth:`block`)."""
        return self._block_tc is not None

    @property
    def held_layers(self):
        """(lo, hi): the layers whose weights this model stores, ``params["layers"][k - lo]``
        is layer k ((0, depth) unless a block model)."""
        return self._row0, self._row0 + self.params["layers"].shape[0]

    @property
    def full_size(self):
        """The number of parameters of the whole network (:attr:`flat`'s size unless a block
        model)."""
        row = int(np.prod(self.params["layers"].shape[1:]))
        return self.flat.size + (self.depth - self.params["layers"].shape[0]) * row

    def _with_layers(self, lo, hi, tc, alloc=True):
        """A shallow copy of this model that stores the layers [lo, hi) (its own :attr:`flat`,
        uninitialized with ``alloc``; ``tc``: its TimeComm, None for the whole network)."""
        m = copy.copy(self)
        m._row0, m._block_tc, m._solvers = lo, tc, []
        m._shapes = [(n, (hi - lo,) + tuple(s[1:]) if n == "layers" else s)
                     for n, s in self._shapes]
        if alloc:
            m.flat = np.empty(sum(int(np.prod(s)) for _, s in m._shapes), self.dtype)
            m.params = m.unflatten(m.flat)
        else:
            m.flat = m.params = None
        return m

    def block(self, solver):
        """This network as the block model of this rank of ``solver``: it stores the opening,
        the classifier and only the layers [lo, hi) = ``solver.local_steps(depth)`` (the
        memory of the weights, and of a gradient and optimizer state laid out like them,
        divides by the ranks).

        A block model's :attr:`flat` is [opening | layers lo..hi-1 | classifier] (shape
        (P_block,), the model's dtype), ``params["layers"]`` has shape (hi - lo, w, w + 1);
        :meth:`loss_and_grad_flat` needs ``owned=True`` and returns a gradient laid out like
        that :attr:`flat`; :meth:`forward` with ``"serial"`` is the exact serial forward
        pipelined over the time ranks (the same bits as the whole network's); :meth:`gathered`
        gives the whole network back. Without a solver that splits the layers: ``self``.

        Parameters
        ----------
        solver : solver
            The time solver (its ``tc`` and ``local_steps``).

        Returns
        -------
        ODENet
            A new model (the parameters copied; ``self`` is not changed) or ``self``.
        """
        if not self._owns_layers(solver):
            return self
        if self.is_block:
            raise ValueError("block(): this model is already a block of the layers")
        lo, hi = solver.local_steps(self.depth)
        m = self._with_layers(lo, hi, solver.tc)
        for name, v in self.params.items():
            m.params[name][...] = v[lo:hi] if name == "layers" else v
        return m

    def _gather_layer_rows(self, a, out, root):
        """Gather the layer rows (hi - lo, ...) ``a`` of every rank's block into ``out`` (depth,
        ...), C-contiguous (on ``root``; every rank with ``root`` None)."""
        tc = self._block_tc
        lo, hi = self.held_layers
        row = int(np.prod(a.shape[1:], dtype=np.int64))
        bounds = tc.allgather(np.array([lo, hi], np.int64))
        counts = (bounds[:, 1] - bounds[:, 0]) * row
        displs = bounds[:, 0] * row
        send = np.ascontiguousarray(a).reshape(-1)
        if root is None:
            tc.comm.Allgatherv(send, [out.reshape(-1), (counts, displs)])
        else:
            tc.comm.Gatherv(send, [out.reshape(-1), (counts, displs)] if out is not None
                            else None, root=root)

    def gathered(self, root=None):
        """The whole network from the ranks' blocks (collective over the time ranks of a block
        model; ``self`` for a model that stores all layers).

        Parameters
        ----------
        root : int or None
            None: every rank gets the whole network (one ``Allgatherv``); else only the time
            rank ``root`` does (one ``Gatherv``), the others get None.

        Returns
        -------
        ODENet or None
            A new model that stores all layers (``flat`` of shape (P,)), the block model's dtype.
        """
        if not self.is_block:
            return self
        here = root is None or self._block_tc.rank == root
        full = self._with_layers(0, self.depth, None, alloc=here)
        if here:
            for name, v in self.params.items():
                if name != "layers":
                    full.params[name][...] = v
        self._gather_layer_rows(self.params["layers"],
                                full.params["layers"] if here else None, root)
        return full if here else None

    def gather_flat(self, a, root=None):
        """An array laid out like a block model's :attr:`flat` (a gradient, an optimizer's
        moment; shape (P_block,)) as one laid out like the whole network's (P,) (collective;
        the shared parts are this rank's). ``root`` as in :meth:`gathered` (None on the other
        ranks). A model that stores all layers returns ``a``."""
        if not self.is_block:
            return a
        here = root is None or self._block_tc.rank == root
        start, stop = self._layer_span
        out = np.empty(self.full_size, a.dtype) if here else None
        if here:
            tail = a.size - stop
            out[:start] = a[:start]
            out[out.size - tail:] = a[stop:]
        shape = self.params["layers"].shape
        rows = out[start:start + self.depth * int(np.prod(shape[1:]))] if here else None
        self._gather_layer_rows(a[start:stop].reshape(shape),
                                rows.reshape((self.depth,) + shape[1:]) if here else None, root)
        return out

    def local_flat(self, a):
        """This block's part of ``a``, an array laid out like the whole network's :attr:`flat`
        (P,): a new array (P_block,) laid out like this model's (the shared parts and the rows
        of the layers [lo, hi)). An array of this model's size is returned as it is."""
        a = np.asarray(a)
        if a.shape == self.flat.shape:
            return a
        if a.shape != (self.full_size,):
            raise ValueError(f"local_flat: an array of shape {a.shape}, the network has "
                             f"{self.full_size} parameters")
        start, stop = self._layer_span
        lo, hi = self.held_layers
        row = (stop - start) // max(hi - lo, 1)
        tail = self.flat.size - stop
        return np.concatenate([a[:start], a[start + lo * row:start + hi * row],
                               a[a.size - tail:]])

    def set_params(self, params):
        """Copy parameters from a dict of named arrays (:meth:`FlatParamModel.set_params`); a
        block model takes the whole network's ``layers`` (depth, ...) and keeps its rows."""
        if self.is_block and np.shape(params.get("layers", ()))[:1] == (self.depth,):
            lo, hi = self.held_layers
            params = dict(params, layers=np.asarray(params["layers"])[lo:hi])
        super().set_params(params)

    def _check_block_only(self, what):
        if not self.is_block:
            raise ValueError(f"{what} is a block model's (ODENet.block)")

    def _check_block(self, what):
        if self.is_block:
            raise ValueError(f"{what} needs all layers; this model stores only the layers "
                             f"{self.held_layers}: use gathered() first")

    def layer_rows(self, a):
        """The layer rows of ``a``, an array laid out like :attr:`flat`: a view of shape
        (depth, ...) like ``params["layers"]`` ((hi - lo, ...) for a block model)."""
        start, stop = self._layer_span
        return a[start:stop].reshape(self.params["layers"].shape)

    def sync_layers(self, solver, *arrays):
        """Make every layer row current on every rank, from its owner (``solver.local_steps``),
        in place: one ``Allgatherv`` of the owned blocks per array (collective over the time
        ranks; nothing with one rank).

        Parameters
        ----------
        solver : solver
        *arrays : ndarray, shape like :attr:`flat`
            Default: :attr:`flat` (the parameters); also the optimizer's moment arrays (laid out
            like :attr:`flat`) before a checkpoint.
        """
        if not self._owns_layers(solver) or self.is_block:     # a block has no stale rows
            return
        lo, hi = solver.local_steps(self.depth)
        start, stop = self._layer_span
        for a in arrays or (self.flat,):
            if a.shape != self.flat.shape:
                raise ValueError(f"sync_layers: an array of shape {a.shape}, the parameters "
                                 f"have {self.flat.shape}")
            solver.tc.allgather_rows(a[start:stop].reshape(self.params["layers"].shape), lo, hi)

    def grad_norm(self, grad, solver):
        """The L2 norm of a gradient whose layer rows lie on their owners (each rank its own,
        zero elsewhere) and whose shared parts are the same on every rank: the squares of the
        layer rows summed over the ranks (one scalar allreduce) plus the shared ones once.
        With one rank: ``global_norm(grad)`` up to the order of the sums."""
        start, stop = self._layer_span
        x = grad.astype(np.float64, copy=False)
        own = x[start:stop]
        if self.is_block:
            own = self._padded_rows(own)
        sq = np.array([own.dot(own)])
        if self._owns_layers(solver):
            sq = solver.tc.allreduce(sq)
        shared = sum(float(x[s].dot(x[s])) for s in self.shared_slices())
        return float(np.sqrt(sq[0] + shared))

    #: The alignment of :meth:`_padded_rows` (a multiple of any dot kernel's unrolling).
    _PAD = 1024

    def _padded_rows(self, own):
        """A block model's layer rows ``own`` (flat, float64) between zeros such that the dot
        product's blocked sums see them at the positions (mod :attr:`_PAD`) they have in the whole
        network's layer span (which holds zeros elsewhere), and with as many elements after them
        up to that alignment: ``own.dot(own)`` then has the whole span's bits (adding squares of
        zeros changes no partial sum). A new array of own.size + at most 3 :attr:`_PAD`."""
        lo, hi = self.held_layers
        row = own.size // max(hi - lo, 1)
        before, after = lo * row, (self.depth - hi) * row
        pre = before % self._PAD
        post = after if after < 2 * self._PAD else self._PAD + after % self._PAD
        out = np.zeros(pre + own.size + post)
        out[pre:pre + own.size] = own
        return out

    def _neighbour_layers(self, solver, lo, hi):
        """The layers lo - 1 and hi (None at the ends) from the neighbouring owners: one message
        each way through the solver's TimeComm."""
        L, o = self.params["layers"], self._row0
        prev = np.empty_like(L[0]) if lo > 0 else None
        nxt = np.empty_like(L[0]) if hi < self.depth else None
        tc = solver.tc
        tc.shift(L[hi - 1 - o], prev if prev is not None else np.empty_like(L[0]),
                 "odenet-layers")
        tc.shift(L[lo - o], nxt if nxt is not None else np.empty_like(L[0]), "odenet-layers",
                 index=1, reverse=True)
        return prev, nxt

    def _reg_terms(self, grad=None, lo=0, hi=None, prev=None, nxt=None, shared=True):
        """The regularization's parts of the layers [lo, hi): per layer k, ‖θ_k‖² (``sq``) and
        ‖θ_{k+1} - θ_k‖² / Δt² (``dsq``, k < N - 1), float64 arrays (N,) zero outside [lo, hi);
        and ``shared_sq`` (float) of the opening and classifier. ``prev``/``nxt``: the layers
        lo - 1 and hi where this rank's rows of them are not current (None: take them from
        :attr:`params`). With ``grad`` (laid out like :attr:`flat`), the gradient of the layers
        [lo, hi) (and of the shared parameters with ``shared``) is added to it, in the order of
        the one-process computation (the same bits)."""
        N, t, dt = self.depth, self.tikhonov, self.dt
        hi = N if hi is None else hi
        L, o = self.params["layers"], self._row0      # layer k is L[k - o]
        elo, ehi = max(lo - 1, 0), min(hi + 1, N)
        if o == 0 and L.shape[0] == N:                # all layers here
            E = L[elo:ehi]
            if (lo > 0 and prev is not None) or (hi < N and nxt is not None):
                E = E.copy()
                if lo > 0 and prev is not None:
                    E[0] = prev
                if hi < N and nxt is not None:
                    E[-1] = nxt
        else:                   # a block model: the neighbours' layers come from prev and nxt
            E = np.concatenate(([prev[None]] if lo > 0 else []) + [L[lo - o:hi - o]]
                               + ([nxt[None]] if hi < N else []))
        diff = (E[1:] - E[:-1]) / dt                 # diff[j]: (θ_{elo+j+1} - θ_{elo+j}) / Δt
        rows = L[lo - o:hi - o].reshape(hi - lo, -1).astype(np.float64)
        sq, dsq = np.zeros(N), np.zeros(N)
        sq[lo:hi] = np.sum(rows * rows, axis=1)
        dhi = min(hi, N - 1)
        if dhi > lo:
            d = diff[lo - elo:dhi - elo].reshape(dhi - lo, -1).astype(np.float64)
            dsq[lo:dhi] = np.sum(d * d, axis=1)
        shared_sq = 0.0
        for s in self.shared_slices():
            x = self.flat[s].astype(np.float64)
            shared_sq += float(np.dot(x, x))
        if grad is not None:
            if shared:
                for s in self.shared_slices():
                    grad[s] += t * self.flat[s]
            gl = self.unflatten(grad)["layers"]
            gl[lo - o:hi - o] += t * L[lo - o:hi - o]
            D = (self.ddt_penalty / dt) * diff
            a = max(lo, 1)
            gl[a - o:hi - o] += D[a - 1 - elo:hi - 1 - elo]
            gl[lo - o:dhi - o] -= D[lo - elo:dhi - elo]
        return sq, dsq, shared_sq

    def _reg_value(self, sq, dsq, shared_sq):
        """The regularization's value from all layers' parts (:meth:`_reg_terms`), summed in a
        fixed order: the same bits on any number of ranks."""
        return (self.tikhonov / 2 * (shared_sq + float(np.sum(sq)))
                + self.ddt_penalty / 2 * float(np.sum(dsq)))

    def regularization(self, grad=None):
        """The regularization's value (module docstring), and its gradient added to ``grad``
        (a flat vector laid out like :attr:`flat`) if given (all layers: they must be current
        on this rank; not for a block model)."""
        self._check_block("regularization()")
        return self._reg_value(*self._reg_terms(grad))

    @entry_point
    def loss_and_grad_flat(self, X, y, solver="serial", keys=None, strict=True, lengths=None,
                           pad="end", owned=False):
        """Loss (mean softmax cross-entropy plus the regularization) and its gradient as a flat
        vector laid out like :attr:`flat`.

        Parameters
        ----------
        X : array_like, shape (B, F)
        y : array_like of int, shape (B,), labels in 0 .. C-1
        solver : str, solver config or solver
        keys : ignored
            Accepted for the trainer's sake (the GRU's MGRIT warm start); the ODENet does not
            use a warm start yet.
        strict : bool
            Raise :class:`~mgritnn.errors.SolverError` for a diverged or non-finite solve.
        lengths, pad : must be None / ignored (as in :meth:`forward`)
        owned : bool
            With a solver that splits the layers over several ranks: each rank's layer rows of
            the gradient hold its own layers' gradient (``solver.local_steps(N)``) and zeros
            elsewhere (not summed over the ranks), the opening and classifier are summed (one
            allreduce of those alone); the regularization of the layers is computed by their
            owners (the smoothness term's neighbouring layers exchanged with the neighbours,
            since the rows a rank does not own may be stale there). The owned rows, the shared
            parts, the loss and the logits are the bits of ``owned=False``. Default False: the
            whole gradient summed, every layer current on every rank expected.

        Returns
        -------
        loss : float
        grad : ndarray, shape (P,), the model's dtype
        info : dict
            ``logits`` (B, C); ``data_loss`` and ``regularization`` (floats, loss = their sum);
            ``forward`` / ``adjoint`` :class:`~mgritnn.solvers.base.SolveStats`;
            ``time_forward``, ``time_adjoint``, ``time_reduce`` (seconds).
        """
        self._no_lengths(lengths)
        Y = self._features(X)
        B = Y.shape[0]
        y = check_labels(y, B, self.num_classes)
        check_keys(keys, B)                 # unused, but checked as the GRU's are
        solver = self._solver(solver)
        t0 = time.perf_counter()
        u0, d0, h_last, state, fstats, (lo, hi) = self._solve(Y, solver, keep=True)
        _check_solve(fstats, solver, "forward", strict)
        t1 = time.perf_counter()
        grad = np.zeros_like(self.flat)
        g = self.unflatten(grad)
        owned = owned and self._owns_layers(solver)
        if self.is_block and not owned:
            raise ValueError("a block model's gradient is its own layers' (owned=True, with the "
                             "solver over its time ranks)")
        loss, logits, lam_last = 0.0, None, None
        if solver.is_last:                       # the head
            lam_last = np.empty_like(h_last)
            data, logits, dpool = softmax_cross_entropy_head(
                self._pool(h_last), self.params["classifier.weight"],
                self.params["classifier.bias"], y, g["classifier.weight"], g["classifier.bias"])
            self._pool_vjp(dpool, lam_last)
        if owned:       # each rank its layers' regularization; the shared parameters' on the last
            prev, nxt = self._neighbour_layers(solver, lo, hi)
            sq, dsq, shared_sq = self._reg_terms(grad, lo, hi, prev, nxt, solver.is_last)
            parts = solver.tc.allreduce(np.concatenate([sq, dsq]))
            reg = self._reg_value(parts[:self.depth], parts[self.depth:], shared_sq)
            if solver.is_last:
                loss = data
        else:           # every layer is current on every rank: the last rank has it all
            terms = self._reg_terms(grad if solver.is_last else None)
            reg = self._reg_value(*terms)
            if solver.is_last:
                loss = data + reg
        lam_first = np.zeros_like(u0) if d0 is not None and solver.is_first else None
        w = self.cell.weights(self.dtype)
        dxp, astats = solver.adjoint(self.cell, w, state, lam_last, self.cell.zero_grads(w),
                                     lam_first=lam_first)
        _check_solve(astats, solver, "adjoint", strict)
        if astats.exponent:         # the serial sweep's scaled adjoint: back to the true scale
            with np.errstate(over="ignore"):
                dxp = np.ldexp(dxp, astats.exponent)
                if lam_first is not None:
                    lam_first = np.ldexp(lam_first, astats.exponent)
        g["layers"][lo - self._row0:hi - self._row0] += dxp
        if lam_first is not None:                # the opening, from the adjoint at point 0
            da0 = lam_first * d0
            if self.layer == "conv":
                dw = conv2d_weight_vjp(da0.reshape((1, B, self.channels) + self.image_shape[1:]),
                                       self._images(Y))[0]
                g["opening.weight"][...] += dw[:, :-1].reshape(g["opening.weight"].shape)
                g["opening.bias"][...] += dw[:, -1]
            else:
                g["opening.weight"][...] += da0.T @ Y
                g["opening.bias"][...] += da0.sum(axis=0)
        t2 = time.perf_counter()
        grad, loss, logits = solver.reduce(grad, loss, logits, (B, self.num_classes),
                                           shared=self.shared_slices() if owned else None)
        if owned:
            loss = loss + reg
        return loss, grad, dict(logits=logits, data_loss=loss - reg, regularization=reg,
                                forward=fstats, adjoint=astats, time_forward=t1 - t0,
                                time_adjoint=t2 - t1, time_reduce=time.perf_counter() - t2)

    def loss_and_grad(self, X, y, solver="serial", keys=None, strict=True, info=False):
        """:meth:`loss_and_grad_flat` with the gradient as a dict of named arrays (the keys and
        shapes of :attr:`params`); ``info``: also return its info dict."""
        loss, grad, stats = self.loss_and_grad_flat(X, y, solver, keys=keys, strict=strict)
        return (loss, self.unflatten(grad), stats) if info else (loss, self.unflatten(grad))

    # -- files ---------------------------------------------------------------------------------

    def save(self, path):
        """Write the parameters and the configuration to ``path`` (.npz), atomically; read it
        back with :func:`mgritnn.load` (``meta["model_type"] == "odenet"``; all layers must be
        here: :meth:`gathered` a block model first)."""
        self._check_block("save()")
        atomic_savez(path, self.params, meta=dict(kind="model", model_type=self.model_type,
                                                  model=self.config))


__all__ = ["LAYER_KINDS", "ODENet", "interpolate_layers", "inject_layers", "odenet_shapes"]


MODEL_TYPES["odenet"] = ODENet
