"""atomic_write: the new file whole, or the old one untouched and no leftovers."""

import pytest

from ddpm_jax.atomic_files import atomic_write


def test_replaces_the_file_when_the_block_ends(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        f.write(b"new")
        assert path.read_bytes() == b"old"  # nothing visible before the rename
    assert path.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [path]


def test_an_error_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk"):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]


def test_writers_of_the_same_file_use_their_own_temporaries(tmp_path):
    path = tmp_path / "f.bin"
    with atomic_write(path) as first, atomic_write(path) as second:
        first.write(b"first")
        second.write(b"second")
    assert path.read_bytes() == b"first"  # the last rename wins; both were whole
    assert sorted(tmp_path.iterdir()) == [path]
