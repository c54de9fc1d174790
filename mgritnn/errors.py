"""Exceptions and warnings of mgritnn.

Every error a user can cause (bad data, bad configuration, a checkpoint that does not fit, an
output that cannot be written) is an :class:`MgritnnError`: its message names the problem and the
fix. The CLI turns these into one line on stderr and exit status 2; a traceback means a bug in
mgritnn. Conditions that do not stop a run are :class:`MgritnnWarning` warnings (one line
``mgritnn: warning: ...`` on the command line).
"""
import errno as _errno
import os


class MgritnnError(Exception):
    """Base class of the errors a user can cause and fix."""


class DataError(MgritnnError, ValueError):
    """Input data that cannot be used: wrong rank/shape, NaN/inf, bad labels, empty sets."""


class ConfigError(MgritnnError, ValueError):
    """An invalid option or combination of options (model, solver, optimizer, CLI)."""


class CheckpointError(MgritnnError, ValueError):
    """A checkpoint that is missing, unreadable, or made for another model shape."""


class OutputError(MgritnnError, OSError):
    """An output file (checkpoint, log, predictions) that cannot be written.

    Raised for the operating system's errors (permission denied, no space left, read-only file
    system, file too large, ...) and for too little free space found before a run. It is an
    ``OSError`` too: ``errno`` and ``filename`` are those of the failed operation (where known);
    ``str()`` is the one-line message with the fix.
    """

    def __init__(self, message, errno=None, filename=None):
        super().__init__(message)
        self.errno, self.filename = errno, filename

    def __str__(self):
        return self.args[0]


class SolverError(MgritnnError, ArithmeticError):
    """A time solve diverged or produced NaN/inf (and did not fall back to the serial sweep): its
    result is not the model's, so it is not returned. ``stats`` holds the solve's
    :class:`~mgritnn.solvers.base.SolveStats`."""

    def __init__(self, message, stats=None):
        super().__init__(message)
        self.stats = stats


class DivergenceError(MgritnnError, ArithmeticError):
    """Training diverged: the loss, gradient, parameters or optimizer state became NaN/inf."""


class MgritnnWarning(UserWarning):
    """A condition the user should know about that does not stop the run (e.g. resuming a
    checkpoint with other settings)."""


#: The fix to suggest for an operating-system error number, by errno name.
_FIXES = {
    "EACCES": "check the permissions of the file and its directory, or choose another path",
    "EPERM": "check the permissions of the file and its directory, or choose another path",
    "EROFS": "the file system is mounted read-only: choose a path on a writable one",
    "ENOSPC": "free disk space there, or choose a path on another file system",
    "EDQUOT": "your disk quota is used up: free space in it, or choose a path outside it",
    "EFBIG": "the file is larger than the file size limit (see 'ulimit -f') or the file system's "
             "largest file: raise the limit, or choose a path on another file system",
    "ENOENT": "a directory of the path does not exist: create it, or check the path",
    "ENOTDIR": "a component of the path is a file, not a directory: check the path",
    "EISDIR": "the path is a directory: name a file in it",
    "ENAMETOOLONG": "the path is too long: choose a shorter one",
    "EIO": "the device reported an input/output error: check the disk, or choose another path",
    "EMFILE": "too many open files: raise the limit ('ulimit -n')",
}


def os_error_message(e, doing, path=None):
    """One line for an operating-system error: what failed, where, the system's reason, the fix.

    Parameters
    ----------
    e : OSError
    doing : str
        What was being done, e.g. ``"cannot write the checkpoint"``.
    path : str, optional
        The file concerned (default: ``e.filename``).

    Returns
    -------
    str, e.g. ``"cannot write the checkpoint 'ck.npz': No space left on device (ENOSPC): free disk
    space there, or choose a path on another file system"``
    """
    path = e.filename if path is None else path
    name = _errno.errorcode.get(e.errno, "")
    reason = e.strerror or str(e) or type(e).__name__
    if name:
        reason += f" ({name})"
    where = f" {os.fspath(path)!r}" if path is not None else ""
    fix = _FIXES.get(name, "check the path and the file system")
    return f"{doing}{where}: {reason}: {fix}"


def output_error(e, doing, path=None):
    """The :class:`OutputError` for the ``OSError`` ``e`` (see :func:`os_error_message`)."""
    if isinstance(e, OutputError):
        return e
    return OutputError(os_error_message(e, doing, path), e.errno,
                       e.filename if path is None else path)
