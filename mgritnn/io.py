"""Atomic ``.npz`` files: write to a temporary file in the target directory, then rename."""
import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import CheckpointError

META_KEY = "mgritnn_meta"


def atomic_savez(path, arrays, meta=None):
    """Write ``arrays`` (dict name -> ndarray) and ``meta`` (a JSON-able dict) to ``path`` atomically.

    A reader sees either the old file or the complete new one, never a partial write.
    """
    path = os.fspath(path)
    payload = dict(arrays)
    if meta is not None:
        payload[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_npz(path):
    """Read an ``.npz`` written by :func:`atomic_savez`: returns ``(arrays, meta)``.

    Raises
    ------
    CheckpointError
        If the file is missing or not a readable ``.npz`` archive.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist; check the path")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path!r} is not a readable .npz checkpoint ({e})") from None
    meta = arrays.pop(META_KEY, None)
    return arrays, (json.loads(str(meta)) if meta is not None else None)
