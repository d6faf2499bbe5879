"""A writer's state dir set aside when another writer changed the store since
(dmsfs/statedir.py)."""

from __future__ import annotations

from pathlib import Path

from dmsfs.statedir import GENERATION_FILE, SUPERSEDED_DIR, adopt_generation


def fill(state: Path) -> None:
    (state / "index.lmdb").write_bytes(b"index")
    (state / "staging").mkdir()
    (state / "staging" / "chunk").write_bytes(b"staged")
    (state / "uploads").mkdir()
    (state / "uploads" / "0000000000000001.put.versions%2Fx").write_bytes(b"record")
    (state / "cache").mkdir()
    (state / "cache" / "block").write_bytes(b"cached")


def test_a_new_state_dir_records_its_generation(tmp_path: Path) -> None:
    fill(tmp_path)
    assert adopt_generation(tmp_path, previous=4, generation=5) is None
    assert (tmp_path / GENERATION_FILE).read_text() == "5\n"
    assert (tmp_path / "index.lmdb").read_bytes() == b"index"


def test_the_same_writer_after_a_crash_keeps_everything(tmp_path: Path) -> None:
    fill(tmp_path)
    adopt_generation(tmp_path, previous=0, generation=1)
    assert adopt_generation(tmp_path, previous=1, generation=2) is None
    assert (tmp_path / "uploads" / "0000000000000001.put.versions%2Fx").exists()
    assert not (tmp_path / SUPERSEDED_DIR).exists()
    assert (tmp_path / GENERATION_FILE).read_text() == "2\n"


def test_a_stale_state_dir_is_set_aside_not_deleted(tmp_path: Path) -> None:
    fill(tmp_path)
    adopt_generation(tmp_path, previous=0, generation=1)
    moved = adopt_generation(tmp_path, previous=2, generation=3)   # someone held 2
    assert moved is not None and moved.parent == tmp_path / SUPERSEDED_DIR
    assert (moved / "index.lmdb").read_bytes() == b"index"
    assert (moved / "staging" / "chunk").read_bytes() == b"staged"
    assert (moved / "uploads" / "0000000000000001.put.versions%2Fx").read_bytes() == b"record"
    for name in ("index.lmdb", "staging", "uploads"):
        assert not (tmp_path / name).exists(), name
    assert (tmp_path / "cache" / "block").read_bytes() == b"cached"   # immutable packs
    assert (tmp_path / GENERATION_FILE).read_text() == "3\n"
