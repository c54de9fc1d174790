"""Exceptions raised by mgritnn.

Every error a user can cause (bad data, bad configuration, a checkpoint that does not fit) is an
:class:`MgritnnError`: its message names the problem and the fix. The CLI turns these into one line
on stderr and a non-zero exit code; a traceback means a bug in mgritnn.
"""


class MgritnnError(Exception):
    """Base class of the errors a user can cause and fix."""


class DataError(MgritnnError, ValueError):
    """Input data that cannot be used: wrong rank/shape, NaN/inf, bad labels, empty sets."""


class ConfigError(MgritnnError, ValueError):
    """An invalid option or combination of options (model, solver, optimizer, CLI)."""


class CheckpointError(MgritnnError, ValueError):
    """A checkpoint that is missing, unreadable, or made for another model shape."""
