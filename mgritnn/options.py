"""One validator for every option of every config (MGRIT, DEER, auto, Newton, training, model)
and of the optimizers (:func:`mgritnn.optim.check_learning_rate`, ... are made of these).

Each check raises :class:`~mgritnn.errors.ConfigError` naming the option (with its owner, e.g.
``"MGRIT tol"``), what it must be and what it got. Integers accept Python and NumPy integers and
reject bools (``True`` is not a count); numbers accept any real and reject bools and strings.

It also holds what every config class shares: :class:`FrozenDict` for option dicts (so that
every config is hashable), :func:`renamed` for options' old names, and :func:`field_docs`, the
fields' descriptions from the class docstring (the command line's help).
"""
import argparse
import dataclasses
import functools
import inspect
import numbers
import warnings
from types import MappingProxyType

import numpy as np

from .errors import ConfigError, MgritnnWarning


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


# ------------------------------------------------------------------------------------------------
# Frozen values: every config is hashable
# ------------------------------------------------------------------------------------------------

def freeze(v):
    """``v`` made hashable: lists become tuples and dicts :class:`FrozenDict` (recursively)."""
    if isinstance(v, dict):
        return v if isinstance(v, FrozenDict) else FrozenDict(v)
    if isinstance(v, (list, tuple)):
        return tuple(freeze(x) for x in v)
    return v


class FrozenDict(dict):
    """A read-only, hashable dict (the option dicts of a frozen config, e.g.
    ``TrainConfig.solver_options``).

    It is a ``dict`` (so ``**opts``, ``json.dumps`` and comparison with a plain dict work as
    before) whose mutating methods raise ``TypeError``; values are frozen too (:func:`freeze`),
    and the hash does not depend on the order of the keys, like equality.
    """

    def __init__(self, *args, **kwargs):
        super().__init__((k, freeze(v)) for k, v in dict(*args, **kwargs).items())

    def __hash__(self):
        return hash(frozenset(self.items()))

    def __reduce__(self):                  # pickle and copy without __setitem__
        return type(self), (dict(self),)

    def __repr__(self):
        return f"FrozenDict({dict.__repr__(self)})"

    def _read_only(self, *args, **kwargs):
        raise TypeError("the options of a frozen config cannot be changed: make a new config "
                        "(dataclasses.replace) with other options")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


def set_frozen(obj, name, value):
    """Set the field ``name`` of the frozen dataclass instance ``obj`` (in ``__post_init__``)."""
    object.__setattr__(obj, name, value)


# ------------------------------------------------------------------------------------------------
# Renamed options: the old names keep working
# ------------------------------------------------------------------------------------------------

def upgrade(owner, options, renamed, warn=True, stacklevel=3):
    """``options`` (a mapping) with the old names of ``renamed`` (old -> new) replaced by the new.

    Parameters
    ----------
    owner : str
        Who owns the options, for messages (``"MGRIT"``).
    options : mapping of str -> object
    renamed : mapping of str -> str
    warn : bool
        Warn (:class:`~mgritnn.errors.MgritnnWarning`) for every old name used. Off for options
        read from a file that the user cannot change (an old checkpoint's metadata).
    stacklevel : int
        Of the warning: 3 names the caller of the function that calls this one.

    Returns
    -------
    dict, in the order of ``options``

    Raises
    ------
    ConfigError
        If an option is given under both its old and its new name.
    """
    out = {}
    for k, v in options.items():
        new = renamed.get(k)
        if new is None:
            out[k] = v
            continue
        if new in options:
            raise ConfigError(f"{owner} {k} is the old name of {new}: give only {new}")
        if warn:
            warnings.warn(f"{owner} option {k!r} is deprecated: use {new!r}", MgritnnWarning,
                          stacklevel=stacklevel)
        out[new] = v
    return out


def renamed(owner, **old_to_new):
    """Class decorator of a config dataclass: its constructor also takes the fields' old names
    (``fwd_iters=`` for ``max_iter=``), with a deprecation warning; ``cls.RENAMED`` maps them
    (old -> new) for other readers (command-line aliases, old checkpoints)."""
    def decorate(cls):
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            init(self, *args, **upgrade(owner, kwargs, old_to_new))

        cls.__init__ = __init__
        cls.RENAMED = MappingProxyType(dict(old_to_new))
        return cls
    return decorate


# ------------------------------------------------------------------------------------------------
# The fields' documentation (the command line's help comes from it)
# ------------------------------------------------------------------------------------------------

def field_docs(cls):
    """The description of every field in the numpydoc ``Attributes`` (or ``Parameters``) section
    of ``cls``'s docstring, whitespace collapsed: ``{name: text}``. An entry ``a, b : type``
    documents both ``a`` and ``b``."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    docs, names, section = {}, [], False
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if nxt.strip() and set(nxt.strip()) == {"-"}:       # a section heading
            section = line.strip() in ("Attributes", "Parameters")
            names = []
            continue
        if not section or set(line.strip()) == {"-"}:
            continue
        if line and not line[0].isspace():                  # "name : type" or "a, b : type"
            names = [n.strip() for n in line.split(":")[0].split(",")]
            for n in names:
                docs[n] = ""
        elif names:
            for n in names:
                docs[n] = (docs[n] + " " + line.strip()).strip()
    return docs


def option_fields(cls):
    """The fields of the config class ``cls`` that are options (not ``comm`` and the like, which
    are marked ``metadata={"option": False}``)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("option", True)]


def check_choices(owner, cfg):
    """Check every field of the config ``cfg`` whose ``metadata["flag"]["choices"]`` is a tuple
    (the one list of its allowed values, which the command line offers too); ``owner`` starts
    the option's name in the message (``"MGRIT"``; ``""``: none)."""
    for f in dataclasses.fields(cfg):
        choices = (f.metadata.get("flag") or {}).get("choices")
        if isinstance(choices, tuple):
            check_choice(f"{owner} {f.name}".strip(), getattr(cfg, f.name), choices)


def int_list(text):
    """An integer, or a tuple of them from a comma-separated list (a command-line value)."""
    try:
        v = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or a comma-separated list, got "
                                         f"{text!r}") from None
    return v[0] if len(v) == 1 else tuple(v)


def str_list(text):
    """A string, or a tuple of them from a comma-separated list (a command-line value)."""
    v = text.split(",")
    return v[0] if len(v) == 1 else tuple(v)
