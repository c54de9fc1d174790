"""One validator for every option of every config (MGRIT, DEER, auto, Newton, training, model).

Each check raises :class:`~mgritnn.errors.ConfigError` naming the option (with its owner, e.g.
``"MGRIT tol"``), what it must be and what it got. Integers accept Python and NumPy integers and
reject bools (``True`` is not a count); numbers accept any real and reject bools and strings.
"""
import numbers

import numpy as np

from .errors import ConfigError


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def check_int(name, v, least=None, none=False):
    """``v`` as an int: an integer (not a bool) >= ``least``; None allowed if ``none``."""
    if v is None and none:
        return None
    if not _is_int(v) or (least is not None and v < least):
        want = "an integer" + (f" >= {least}" if least is not None else "")
        raise ConfigError(f"{name} must be {want}{' or None' if none else ''}, got {v!r}")
    return int(v)


def check_real(name, v, low=None, high=None, low_open=False, high_open=False, none=False,
               hint=""):
    """``v`` as a float: a finite real number in the interval given by ``low``/``high``
    (``*_open``: strict); None allowed if ``none``. ``hint`` is appended to the message."""
    if v is None and none:
        return None
    ok = _is_real(v) and np.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        want = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
        raise ConfigError(f"{name} must be {want}{' or None' if none else ''}, got {v!r}"
                          + (f" ({hint})" if hint else ""))
    return float(v)


def check_choice(name, v, choices):
    """``v`` must be one of ``choices``."""
    if not isinstance(v, str) or v not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {v!r}")
    return v


def check_bool(name, v):
    """``v`` must be a bool (True or False, not a number or a string)."""
    if not isinstance(v, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {v!r}")
    return bool(v)
