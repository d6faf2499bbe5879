"""Content-defined chunking: deterministic, local to edits, streamable, bounded."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmsfs.chunker import Chunker, ChunkerParams

KiB = 1024
MiB = 1024 * KiB
SMALL = ChunkerParams(4 * KiB, 16 * KiB, 64 * KiB)
PARAMS = [SMALL, ChunkerParams()]  # the test suite's sizes and the store default


def pieces(buf: bytes, lengths: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in lengths:
        out.append(buf[pos:pos + n])
        pos += n
    return out


def cut_in_windows(chunker: Chunker, buf: bytes, windows: list[int]) -> list[int]:
    """Cut as the writer does: window after window, only the last one at EOF; a
    window that yields no final chunk is grown by the next window size."""
    lengths: list[int] = []
    pos, k = 0, 0
    grow = 0
    while pos < len(buf):
        grow += windows[k % len(windows)]
        k += 1
        stop = min(len(buf), pos + grow)
        got = chunker.cut(buf[pos:stop], at_eof=stop == len(buf))
        if not got:
            continue
        lengths.extend(got)
        pos += sum(got)
        grow = 0
    return lengths


@pytest.fixture(scope="module")
def data8m() -> bytes:
    return random.Random(8).randbytes(8 * MiB)


@pytest.mark.parametrize("params", PARAMS, ids=["small", "default"])
def test_same_input_same_cuts(params: ChunkerParams, data8m: bytes) -> None:
    a = Chunker(params).cut(data8m, at_eof=True)
    b = Chunker(params).cut(bytes(data8m), at_eof=True)
    assert a == b
    assert sum(a) == len(data8m)
    assert len(a) >= len(data8m) // params.max_size


@pytest.mark.parametrize("params", PARAMS, ids=["small", "default"])
def test_sizes_within_limits(params: ChunkerParams, data8m: bytes) -> None:
    chunker = Chunker(params)
    for buf in (data8m, data8m[: 3 * MiB + 17], bytes(5 * MiB), b"ab" * (MiB + 3)):
        lengths = chunker.cut(buf, at_eof=True)
        assert sum(lengths) == len(buf)
        assert all(params.min_size <= n <= params.max_size for n in lengths[:-1]), lengths
        assert 0 < lengths[-1] <= params.max_size
    # zeros cut at the maximum size: no content-defined boundary ever fires
    assert set(chunker.cut(bytes(5 * MiB), at_eof=True)[:-1]) == {params.max_size}
    # short input: one chunk, or nothing when more data may follow
    assert chunker.cut(b"x" * 100, at_eof=True) == [100]
    assert chunker.cut(b"x" * 100, at_eof=False) == []
    assert chunker.cut(b"", at_eof=True) == []


@pytest.mark.parametrize("params", PARAMS, ids=["small", "default"])
def test_insertion_changes_only_nearby_chunks(params: ChunkerParams, data8m: bytes) -> None:
    chunker = Chunker(params)
    mid = 4 * MiB + 12_345
    edited = data8m[:mid] + random.Random(9).randbytes(4 * KiB) + data8m[mid:]
    old = pieces(data8m, chunker.cut(data8m, at_eof=True))
    new = pieces(edited, chunker.cut(edited, at_eof=True))

    # every chunk that ends before the edit is unchanged, in place
    before = 0
    pos = 0
    for chunk in old:
        if pos + len(chunk) > mid:
            break
        pos += len(chunk)
        before += 1
    assert new[:before] == old[:before]

    # the chunks resynchronise soon after the edit: a long common suffix
    common_suffix = 0
    while (common_suffix < min(len(old), len(new))
           and old[-1 - common_suffix] == new[-1 - common_suffix]):
        common_suffix += 1
    suffix_bytes = sum(len(c) for c in old[len(old) - common_suffix:])
    # what differs spans the edit plus at most a couple of maximum-size chunks
    changed_old = len(data8m) - suffix_bytes - sum(len(c) for c in old[:before])
    assert changed_old <= 3 * params.max_size
    known = set(old)
    fresh = [c for c in new if c not in known]
    assert 1 <= len(fresh) <= 4
    assert sum(len(c) for c in fresh) <= 4 * KiB + 3 * params.max_size


@pytest.mark.parametrize("params", PARAMS, ids=["small", "default"])
def test_window_by_window_equals_whole(params: ChunkerParams, data8m: bytes) -> None:
    chunker = Chunker(params)
    whole = chunker.cut(data8m, at_eof=True)
    for windows in ([params.max_size + 1], [8 * MiB // 3], [params.min_size, 100_001, 7]):
        assert cut_in_windows(chunker, data8m, windows) == whole


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(1, 600 * KiB),
       windows=st.lists(st.integers(1, 200 * KiB), min_size=1, max_size=6))
def test_window_by_window_property(seed: int, size: int, windows: list[int]) -> None:
    rng = random.Random(seed)
    # half random, half repetitive (compressible, fewer natural cut points)
    buf = rng.randbytes(size // 2) + (rng.randbytes(97) * (size // 97 + 1))[: size - size // 2]
    chunker = Chunker(SMALL)
    whole = chunker.cut(buf, at_eof=True)
    assert cut_in_windows(chunker, buf, windows) == whole
    # not at EOF, the final chunks are a prefix of the EOF cuts
    partial = chunker.cut(buf, at_eof=False)
    assert partial == whole[: len(partial)]
    assert len(partial) == len(whole) - 1
