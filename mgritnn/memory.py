"""Memory a model and a batch need, against what this machine has: refuse what cannot fit, early.

It also holds the GRU classifier's parameter layout (:func:`param_shapes`), which the estimates,
the model (:mod:`mgritnn.model`) and the planner (:mod:`mgritnn.plan`) all count: it lives here,
in the lowest layer that needs it, so that none of them imports a layer above itself.

The estimates are lower bounds (only arrays surely allocated at the same time), so a run they
refuse could never have fit; they are checked before the model is allocated, before training
starts and before each batch (each check reads ``/proc`` only for estimates of 256 MB or more).
"""
import numpy as np

from .config import resolve_dtype
from .errors import ConfigError


#: Below this many bytes no memory check is made (reading /proc costs more than it could save).
_MEMORY_CHECK_FROM = 256 * 2 ** 20
#: Parameter-sized arrays an optimizer keeps (Adam: two moments; SGD: the momentum buffer).
_OPTIMIZER_SLOTS = {"adam": 2, "sgd": 1}


def param_shapes(input_size, hidden_size, num_classes, num_layers):
    """Names and shapes of all parameters of the GRU classifier, in the flat buffer's order
    (PyTorch's ``state_dict`` order).

    Parameters
    ----------
    input_size, hidden_size, num_classes, num_layers : int
        I, H, C, L.

    Returns
    -------
    list of (str, tuple of int)
        Per layer k: ``weight_ih_l{k}`` (3H, I_k) (I_0 = I, else H), ``weight_hh_l{k}`` (3H, H),
        ``bias_ih_l{k}`` (3H,), ``bias_hh_l{k}`` (3H,); then ``head.weight`` (C, H) and
        ``head.bias`` (C,).
    """
    H = hidden_size
    shapes = []
    for k in range(num_layers):
        I = input_size if k == 0 else H
        shapes += [(f"weight_ih_l{k}", (3 * H, I)), (f"weight_hh_l{k}", (3 * H, H)),
                   (f"bias_ih_l{k}", (3 * H,)), (f"bias_hh_l{k}", (3 * H,))]
    shapes += [("head.weight", (num_classes, H)), ("head.bias", (num_classes,))]
    return shapes


def _read_int(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def available_memory():
    """Bytes of memory this process can still use, or None where that cannot be found out.

    ``MemAvailable`` of ``/proc/meminfo`` (Linux), lowered to the room left under the memory
    limit of the process's control group (cgroup v2 ``memory.max``, v1
    ``memory.limit_in_bytes``) where one is set.

    Returns
    -------
    int or None
    """
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        return None
    if avail is None:
        return None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2 ** 60:
            avail = min(avail, max(limit - usage, 0))
    return avail


def _gb(n):
    """Bytes as a short decimal size: ``"43.2 GB"``."""
    if n >= 1e12:
        return f"{n / 1e12:.1f} TB"
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.1f} MB"


def memory_estimate(input_size, hidden_size, num_classes, num_layers=1, dtype="float32", batch=0,
                    seq_len=0, optimizer=None, keep=True):
    """A lower bound of the memory a model and one batch need, in bytes.

    Counts only arrays that are surely allocated at the same time, so that a configuration this
    estimate puts above the available memory clearly cannot run:

    * the parameters: ``P = sum_k 3H (I_k + H + 2) + C (H + 1)`` values (``I_0`` the input size,
      ``I_k = H`` above) in the model's dtype; for a batch also the transposed copies of the GRU
      weights that the kernels use (``sum_k 3H (I_k + H)``), and while training the gradient and
      the optimizer's state (``optimizer``: 2 more copies of P for Adam, 1 for SGD);
    * while the model is built: the parameters plus the float64 draw they are initialized from
      (``8 P`` bytes);
    * a batch: per time step and batch row, the layer-0 input projection (``3H``) and, when the
      states are kept for the gradient (``keep``), the trajectory and gate caches of every layer
      (``5 H L``) and the projection's gradient (``3H``).

    Parameters
    ----------
    input_size, hidden_size, num_classes, num_layers : int
    dtype : str or numpy dtype
    batch : int
        Batch rows on this rank (0: only the model).
    seq_len : int
        Time steps on this rank.
    optimizer : {"adam", "sgd"} or None
        The optimizer of a training run (None: no gradient or optimizer state).
    keep : bool
        Whether the forward solve keeps what the gradient needs (training).

    Returns
    -------
    dict
        ``parameters`` (the count P), ``model`` (bytes of the parameter-sized arrays during a
        batch: parameters, transposed weights, with ``optimizer`` the gradient and the optimizer
        state), ``weights`` (bytes of the transposed weights alone), ``initialization`` (peak
        bytes while building the model), ``batch`` (bytes of one batch) and ``total`` (the larger
        of the initialization peak and, with a batch, model + batch).
    """
    H, L = int(hidden_size), int(num_layers)
    item = np.dtype(resolve_dtype(dtype)).itemsize
    shapes = param_shapes(int(input_size), H, int(num_classes), L)
    P = sum(int(np.prod(shape)) for _, shape in shapes)
    weights = item * sum(int(np.prod(shape)) for name, shape in shapes if name.startswith("weight"))
    copies = 1 if optimizer is None else 2 + _OPTIMIZER_SLOTS.get(optimizer, 0)
    model = P * item * copies + weights
    per_step_row = 3 * H + ((5 * H * L + 3 * H) if keep else 0)
    batch_bytes = int(batch) * int(seq_len) * item * per_step_row
    init = P * (item + 8)
    run = model + batch_bytes if batch and seq_len else 0
    return dict(parameters=P, model=model, weights=weights, initialization=init,
                batch=batch_bytes, total=max(init, run), flags=_GRU_FLAGS)


#: The flags that shrink a model's parameters and a batch, by model (for the messages).
_GRU_FLAGS = ("--hidden or --layers", "--batch-size or --seq-len (or --hidden, --layers)")
_ODENET_FLAGS = ("--width or --depth", "--batch-size (or --width, --depth)")


def odenet_memory_estimate(parameters, width, dtype="float64", batch=0, depth=0, optimizer=None,
                           keep=True, stored=None):
    """A lower bound of the memory an ODENet (:class:`~mgritnn.odenet.ODENet`) and one batch
    need on one rank, in bytes (the same dict as :func:`memory_estimate`).

    * the parameters this rank stores (``stored``; default all, the count P of
      :func:`~mgritnn.odenet.odenet_shapes`; a rank that owns its layers stores the opening, the
      classifier and its block of layers), and while training the gradient and the optimizer's
      state, laid out like them;
    * while the model is built: all P parameters plus their float64 draw (``8 P`` bytes; the
      whole network is built, then cut to the rank's block);
    * a batch: per batch row, the states of this rank's ``depth`` layers, ``width`` values at each
      of the ``depth + 1`` points, and when they are kept for the gradient (``keep``) each layer's
      activation derivative (``depth`` more).

    Parameters
    ----------
    parameters : int
    width : int
    dtype : str or numpy dtype
    batch : int
        Batch rows on this rank (0: only the model; L-BFGS: the whole training set).
    depth : int
        Layers on this rank (its share of the time axis).
    optimizer : {"adam", "sgd"} or None
    keep : bool
    stored : int or None
        The parameters this rank stores while it trains (None: ``parameters``).
    """
    item = np.dtype(resolve_dtype(dtype)).itemsize
    P = int(parameters)
    copies = 1 if optimizer is None else 2 + _OPTIMIZER_SLOTS.get(optimizer, 0)
    model = (P if stored is None else int(stored)) * item * copies
    per_row = int(width) * ((int(depth) + 1) + (int(depth) if keep else 0))
    batch_bytes = int(batch) * item * per_row
    init = P * (item + 8)
    run = model + batch_bytes if batch and depth else 0
    return dict(parameters=P, model=model, weights=0, initialization=init, batch=batch_bytes,
                total=max(init, run), flags=_ODENET_FLAGS)


def check_memory(estimate, available=None):
    """Refuse a model or batch that clearly cannot fit in memory.

    Parameters
    ----------
    estimate : dict
        From :func:`memory_estimate`.
    available : int or None
        Bytes available (None: :func:`available_memory`; when that is unknown, or the estimate is
        below 256 MB, nothing is checked).

    Raises
    ------
    ConfigError
        If ``estimate["total"]`` exceeds the available memory; the message gives the estimate,
        what it is made of and the fix in the model's flags (``estimate["flags"]``: the GRU's
        ``--hidden``/``--layers`` or the ODENet's ``--width``/``--depth`` when the parameters
        dominate, a smaller ``--batch-size`` (GRU: or ``--seq-len``) when the batch does).
    """
    need = estimate["total"]
    if need < _MEMORY_CHECK_FROM:
        return
    if available is None:
        available = available_memory()
    if available is None or need <= available:
        return
    P = estimate["parameters"]
    if estimate["batch"] and need > estimate["initialization"]:
        parts = (f"model: {_gb(estimate['model'])} for {P:,} parameters and their working "
                 f"copies; one batch: {_gb(estimate['batch'])}")
    else:
        parts = f"{P:,} parameters, initialized from float64 values"
    model_flags, batch_flags = estimate.get("flags", _GRU_FLAGS)
    if estimate["batch"] > estimate["model"] and need > estimate["initialization"]:
        fix = f"use a smaller {batch_flags}"
    else:
        fix = f"use a smaller {model_flags}"
    raise ConfigError(f"not enough memory: at least {_gb(need)} is needed ({parts}) but only "
                      f"{_gb(available)} is available: {fix}")


def check_training_memory(input_size, hidden_size, num_classes, num_layers=1, dtype="float32",
                          batch=1, seq_len=1, optimizer="adam", available=None):
    """:func:`check_memory` of a training run's model, optimizer and one batch on this rank
    (see :func:`memory_estimate`); called before anything is allocated.

    Raises
    ------
    ConfigError
        If the run clearly cannot fit in the available memory.
    """
    check_memory(memory_estimate(input_size, hidden_size, num_classes, num_layers, dtype, batch,
                                 seq_len, optimizer=optimizer, keep=True), available)
