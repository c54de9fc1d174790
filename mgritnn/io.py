"""Output files that survive a crash: atomic ``.npz`` files, and the checks an output path passes
before a run spends any time.

:func:`atomic_savez` writes to a temporary file ``.<name>.tmp-XXXXXXXX.npz`` beside the target,
fsyncs it and renames it over the target, so that a reader (or a run killed at any moment) sees
either the old file or the complete new one. A killed write leaves its temporary file behind;
:func:`remove_stale_temps` removes those of one target (and only those). Files are created with the
permissions ``0666 & ~umask``, as ``open`` would, and a replaced file keeps its permissions.
Operating-system errors become :class:`~mgritnn.errors.OutputError` (one line with the path, the
system's reason and the fix).
"""
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib

import numpy as np

from .errors import CheckpointError, OutputError, output_error

META_KEY = "mgritnn_meta"

_WHAT = {"train": "the checkpoint", "predictions": "the predictions", "model": "the model"}


def _umask():
    """The process's umask (read from /proc where possible: setting it to read it is not
    thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_prefix(path):
    """Prefix of the temporary files of ``path``: ``.<basename>.tmp-``."""
    return f".{os.path.basename(os.fspath(path))}.tmp-"


def _resolve(path):
    """``path``, or the file a symbolic link ``path`` points to (a write replaces the file, not
    the link)."""
    path = os.fspath(path)
    return os.path.realpath(path) if os.path.islink(path) else path


def _fsync_dir(directory):
    """Make a rename in ``directory`` durable (where the system allows fsync of a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_savez(path, arrays, meta=None, what=None):
    """Write ``arrays`` (dict name -> ndarray) and ``meta`` (a JSON-able dict) to ``path`` atomically.

    A reader sees either the old file or the complete new one, never a partial write; on any
    failure the temporary file is removed and the old file stays as it was. Missing parent
    directories are created.

    Parameters
    ----------
    path : str or path-like
        The file to write (a symbolic link: the file it points to).
    arrays : dict of str to ndarray
    meta : dict, optional
        Stored as JSON under :data:`META_KEY`.
    what : str, optional
        What the file is, for messages (default: from ``meta["kind"]``, e.g. "the checkpoint").

    Raises
    ------
    OutputError
        If the file cannot be written (permission denied, no space left, read-only file system,
        file too large, ...), or ``path`` exists and is not a regular file.
    """
    what = what or _WHAT.get((meta or {}).get("kind"), "the file")
    payload = dict(arrays)
    if meta is not None:
        payload[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    _atomic_write(path, lambda f: np.savez(f, **payload), ".npz", what)


def atomic_write_text(path, text, what="the file"):
    """Write the string ``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_savez` writes
    an archive: a temporary file ``.<name>.tmp-XXXXXXXX.txt`` beside the target, fsynced and
    renamed over it.

    Raises
    ------
    OutputError
        As :func:`atomic_savez`.
    """
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")), ".txt", what)


def _atomic_write(path, write, suffix, what):
    """The atomic write of :func:`atomic_savez` and :func:`atomic_write_text`: ``write(f)`` fills
    the binary file object ``f`` of a temporary file (name ending in ``suffix``) that then
    replaces ``path``."""
    path = _resolve(path)
    if os.path.exists(path) and not os.path.isfile(path):
        raise OutputError(f"cannot write {what} {path!r}: it exists and is not a regular file "
                          "(a directory, device, pipe or socket): name a file", errno.EEXIST, path)
    directory = os.path.dirname(os.path.abspath(path))
    _make_dirs(directory, f"cannot write {what} {path!r}")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=directory)
    except OSError as e:
        raise output_error(e, f"cannot write {what}", path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise output_error(e, f"cannot write {what}", path) from e
        raise
    _fsync_dir(directory)


def remove_stale_temps(path):
    """Remove the temporary files that killed writes of ``path`` left behind.

    Only files named as :func:`atomic_savez` names the temporary files of this very ``path``
    (``.<basename>.tmp-<random>.npz`` in its directory) are removed: never those of another file.
    Call it only where no other process is writing ``path``.

    Returns
    -------
    list of str
        The paths removed.
    """
    path = _resolve(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(temp_prefix(path)) + r"[A-Za-z0-9_]+\.npz\Z")
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        if pattern.match(name):
            full = os.path.join(directory, name)
            try:
                if os.path.isfile(full) and not os.path.islink(full):
                    os.unlink(full)
                    removed.append(full)
            except OSError:
                pass
    return removed


def _make_dirs(directory, doing):
    """Create ``directory`` and its missing parents; ``doing`` starts the message of the
    :class:`OutputError` raised when that fails."""
    above = directory
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if os.path.exists(above) and not os.path.isdir(above):
        raise OutputError(f"{doing}: {above!r} is a file, not a directory: choose a path in a "
                          "directory", errno.ENOTDIR, above)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise output_error(e, f"{doing}: cannot create the directory", directory) from e


def check_output_path(path, flag, error, file_name="run.npz"):
    """Check an output path without writing anything (before a run spends any time): the one
    check of every output option (``--checkpoint``, ``--log``, ``--output``).

    ``path`` must be a non-empty file name (not ending in a separator, not an existing
    directory), every existing component above it a directory, and the nearest existing
    directory above it writable (its missing directories are created later by
    :func:`prepare_output`).

    Parameters
    ----------
    path : str or path-like
    flag : str
        The option that named it, for messages (``"--checkpoint"``).
    error : type
        The exception raised (:class:`~mgritnn.errors.ConfigError` for options).
    file_name : str
        The file name suggested in messages.
    """
    text = os.fspath(path)
    if not str(text).strip():
        raise error(f"{flag} is empty ({text!r}; an unset shell variable?): give a file path, "
                    f"or leave {flag} out")
    if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)) or \
            os.path.basename(text) in (".", ".."):
        raise error(f"{flag} {text!r} names a directory, not a file: name a file in it, e.g. "
                    f"{os.path.join(text, file_name)!r}")
    target = _resolve(text)
    if os.path.isdir(target):
        raise error(f"{flag} {text!r} is a directory: name a file in it, e.g. "
                    f"{os.path.join(text, file_name)!r}")
    above = os.path.dirname(os.path.abspath(target))
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise error(f"{flag} {text!r}: {above!r} is a file, not a directory: choose a path in a "
                    "directory")
    if not os.access(above, os.W_OK | os.X_OK):
        raise error(f"{flag} {text!r}: the directory {above!r} is not writable: Permission "
                    "denied (EACCES): choose a path in a directory you can write")


def prepare_output(path, flag, append=False):
    """Make sure ``path`` can be written, before a run spends any time: create its missing parent
    directories; then open it for appending (``append=True`` and the file exists), or else write
    and remove a probe file beside it (named as its temporary files).

    Parameters
    ----------
    path : str
        The output file (it need not exist).
    flag : str
        The option that named it, for messages (e.g. ``"--log"``).
    append : bool
        The file will be opened for appending (a log), not replaced (a checkpoint).

    Raises
    ------
    OutputError
        Naming the path, the system's reason and the fix.
    """
    path = _resolve(path)
    directory = os.path.dirname(os.path.abspath(path))
    _make_dirs(directory, f"{flag} {path!r} cannot be created")
    if append and os.path.exists(path):
        try:
            with open(path, "a"):
                pass
        except OSError as e:
            raise output_error(e, f"{flag}: cannot open for appending", path) from e
        return                              # it exists and opens: nothing is created beside it
    try:        # named as a temporary file of path: remove_stale_temps(path) removes it if left
        fd, probe = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".npz", dir=directory)
    except OSError as e:
        raise output_error(e, f"{flag} {path!r}: cannot create files in the directory",
                           directory) from e
    try:
        os.write(fd, b"\0")
    except OSError as e:
        raise output_error(e, f"{flag} {path!r}: cannot write files in the directory",
                           directory) from e
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except OSError:
            pass


def _size(n):
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.0f} KiB"


def check_free_space(path, flag, need):
    """Raise an :class:`OutputError` (ENOSPC) unless the file system of ``path`` has ``need``
    bytes free (``shutil.disk_usage``; nothing is checked where it cannot be measured)."""
    directory = os.path.dirname(os.path.abspath(_resolve(path)))
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if free < need:
        raise OutputError(f"{flag} {path!r}: one file needs about {_size(need)} but only "
                          f"{_size(free)} are free on the file system of {directory!r}: free disk "
                          "space there, or choose a path on another file system",
                          errno.ENOSPC, path)


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")      # a zip member, an empty zip
_NPY_MAGIC = b"\x93NUMPY"
#: What a damaged archive or archive member raises when read.
_CORRUPT = (OSError, EOFError, zipfile.BadZipFile, zlib.error)


def open_npz(path, error, what, fix):
    """``np.load`` of a file that should be an ``.npz`` archive, never through pickle: an NpzFile.

    The first bytes are checked before NumPy sees the file, so that a file that is no archive
    (random bytes, text, an empty file, a single ``.npy`` array) is reported as such, not as
    "pickled data" (and never with advice to allow pickle, which can run code).

    Parameters
    ----------
    path : str or path-like
    error : type
        The exception raised for a file that cannot be used (DataError, CheckpointError).
    what : str
        What the file is meant to be, for messages (``"the data file"``).
    fix : str
        How to get a good file, appended to every message.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise error(f"cannot read {what} {path!r}: {exc.strerror or exc}; check its path and "
                    "permissions") from None
    if head.startswith(_NPY_MAGIC):
        raise error(f"{path!r} holds a single array (.npy), not a .npz archive: {fix}")
    if not head.startswith(_ZIP_MAGIC):
        kind = "is empty" if not head else "does not start like a zip archive"
        raise error(f"{path!r} is not a .npz archive (it {kind}: another format, or corrupt): "
                    f"{fix}")
    try:
        return np.load(path, allow_pickle=False)
    except _CORRUPT + (ValueError,) as exc:
        raise error(f"{path!r} is a corrupt .npz archive (truncated or damaged: "
                    f"{type(exc).__name__}): {fix}") from None


def read_member(archive, key, path, error, fix):
    """The array ``key`` of an archive from :func:`open_npz`; an object array (it would need
    pickle) or a damaged member raises ``error`` with ``fix``."""
    path = os.fspath(path)
    try:
        return archive[key]
    except ValueError as exc:
        if "pickle" in str(exc) or "bject array" in str(exc):
            raise error(f"{path!r}: the array {key!r} is an object array (dtype=object), which "
                        "could only be loaded through pickle, and mgritnn never loads pickle (it "
                        "can run code): store it as a plain numeric or string array, e.g. "
                        "np.asarray(values, dtype=str)") from None
        raise error(f"{path!r}: the array {key!r} is damaged ({exc}): {fix}") from None
    except _CORRUPT as exc:
        raise error(f"{path!r} is a corrupt .npz archive: the array {key!r} cannot be read "
                    f"({type(exc).__name__}: {exc}): {fix}") from None


def read_npz(path):
    """Read an ``.npz`` written by :func:`atomic_savez`: returns ``(arrays, meta)``.

    Raises
    ------
    CheckpointError
        If the file is missing or not a readable ``.npz`` archive (checked as :func:`open_npz`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist; check the path")
    fix = ("give the file that mgritnn train --checkpoint or GRUClassifier.save wrote (it is not "
           "a readable .npz checkpoint)")
    with open_npz(path, CheckpointError, "the checkpoint", fix) as z:
        arrays = {k: read_member(z, k, path, CheckpointError, fix) for k in z.files}
    meta = arrays.pop(META_KEY, None)
    return arrays, (json.loads(str(meta)) if meta is not None else None)
