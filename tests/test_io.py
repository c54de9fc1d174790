"""mgritnn.io on its own: atomic archives, output checks, and archives read without pickle.

The end-to-end behaviour (full disks, killed runs, umask of real outputs) is in test_faults.py;
these tests pin each function's contract directly.
"""
import errno
import json
import os
import stat

import numpy as np
import pytest

from mgritnn import io
from mgritnn.errors import CheckpointError, DataError, OutputError


def _temps(d):
    return sorted(n for n in os.listdir(d) if ".tmp-" in n)


def test_atomic_savez_round_trip_with_meta(tmp_path):
    p = tmp_path / "sub" / "dir" / "a.npz"                 # missing parents are created
    arrays = {"x": np.arange(6.0).reshape(2, 3), "y": np.array([1, 2], np.int32)}
    io.atomic_savez(p, arrays, meta={"kind": "model", "b": [1, 2]})
    got, meta = io.read_npz(p)
    assert meta == {"kind": "model", "b": [1, 2]}
    assert set(got) == {"x", "y"}
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k])
        assert got[k].dtype == arrays[k].dtype
    assert _temps(p.parent) == []
    io.atomic_savez(p, {"x": np.zeros(1)})                 # no meta: read back as None
    assert io.read_npz(p)[1] is None


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    p = tmp_path / "c.npz"
    io.atomic_savez(p, {"x": np.ones(3)}, meta={"kind": "train"})
    before = p.read_bytes()

    def broken(f, **payload):
        f.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.np, "savez", broken)
    with pytest.raises(OutputError, match="the checkpoint.*No space left") as e:
        io.atomic_savez(p, {"x": np.zeros(3)}, meta={"kind": "train"})
    assert e.value.errno == errno.ENOSPC
    assert p.read_bytes() == before and _temps(tmp_path) == []

    monkeypatch.setattr(io.np, "savez", lambda f, **a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):                 # not an OSError: re-raised as is
        io.atomic_savez(p, {"x": np.zeros(3)})
    assert p.read_bytes() == before and _temps(tmp_path) == []


def test_a_replaced_file_keeps_its_permissions_and_a_link_stays_a_link(tmp_path):
    target = tmp_path / "real.npz"
    io.atomic_savez(target, {"x": np.zeros(1)})
    os.chmod(target, 0o640)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    io.atomic_savez(link, {"x": np.ones(2)})
    assert link.is_symlink()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    np.testing.assert_array_equal(io.read_npz(target)[0]["x"], np.ones(2))


def test_atomic_savez_refuses_a_directory(tmp_path):
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(OutputError, match="not a regular file"):
        io.atomic_savez(tmp_path / "d.npz", {"x": np.zeros(1)})
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        io.atomic_savez(tmp_path / "f" / "a.npz", {"x": np.zeros(1)})


def test_remove_stale_temps_removes_only_the_files_own_temporaries(tmp_path):
    p = tmp_path / "run.npz"
    mine = [tmp_path / f"{io.temp_prefix(p)}{s}.npz" for s in ("abc123", "Z_9")]
    others = [tmp_path / f"{io.temp_prefix(tmp_path / 'other.npz')}abc.npz",
              tmp_path / f"{io.temp_prefix(p)}abc.npz.keep", tmp_path / "run.npz.bak"]
    for f in mine + others:
        f.write_bytes(b"x")
    assert sorted(io.remove_stale_temps(p)) == sorted(map(str, mine))
    assert all(f.exists() for f in others) and not any(f.exists() for f in mine)
    assert io.remove_stale_temps(tmp_path / "missing-dir" / "x.npz") == []


def test_prepare_output_probes_without_leaving_anything(tmp_path):
    p = tmp_path / "new" / "run.jsonl"
    io.prepare_output(p, "--log", append=True)
    assert p.parent.is_dir() and os.listdir(p.parent) == []       # probe removed, file not made
    p.write_text("old line\n")
    io.prepare_output(p, "--log", append=True)                   # appending keeps the content
    assert p.read_text() == "old line\n"
    (tmp_path / "blocker").write_text("")
    with pytest.raises(OutputError, match="--checkpoint .* is a file, not a directory"):
        io.prepare_output(tmp_path / "blocker" / "c.npz", "--checkpoint")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_prepare_output_names_the_unwritable_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="--out .*cannot create files in the directory"):
            io.prepare_output(d / "p.npz", "--out")
    finally:
        d.chmod(0o700)


def test_check_free_space(tmp_path):
    io.check_free_space(tmp_path / "x.npz", "--checkpoint", 1)
    with pytest.raises(OutputError, match=r"needs about .* MiB but only .* are free") as e:
        io.check_free_space(tmp_path / "x.npz", "--checkpoint", 1 << 62)
    assert e.value.errno == errno.ENOSPC


@pytest.mark.parametrize("content, match", [
    (b"", "is empty"),
    (b"hello world, not an archive", "does not start like a zip archive"),
    (b"\x93NUMPY\x01\x00", r"single array \(\.npy\)"),
    (b"PK\x03\x04truncated", "corrupt .npz archive"),
])
def test_open_npz_names_what_the_file_is(tmp_path, content, match):
    p = tmp_path / "bad.npz"
    p.write_bytes(content)
    with pytest.raises(DataError, match=match) as e:
        io.open_npz(p, DataError, "the data file", "FIX")
    assert str(e.value).endswith("FIX") and "allow_pickle" not in str(e.value)


def test_open_npz_of_a_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read the checkpoint .*check its path"):
        io.open_npz(tmp_path / "nope.npz", CheckpointError, "the checkpoint", "FIX")
    with pytest.raises(CheckpointError, match="does not exist"):
        io.read_npz(tmp_path / "nope.npz")


def test_read_member_never_loads_pickle(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, ok=np.arange(3), obj=np.array([{"a": 1}, None], dtype=object))
    with io.open_npz(p, DataError, "the data file", "FIX") as z:
        np.testing.assert_array_equal(io.read_member(z, "ok", p, DataError, "FIX"), np.arange(3))
        with pytest.raises(DataError, match="object array .*never loads pickle"):
            io.read_member(z, "obj", p, DataError, "FIX")


def test_read_npz_reads_the_meta_as_json(tmp_path):
    p = tmp_path / "m.npz"
    np.savez(p, a=np.zeros(2), **{io.META_KEY: np.array(json.dumps({"k": 1}))})
    arrays, meta = io.read_npz(p)
    assert meta == {"k": 1} and list(arrays) == ["a"]
