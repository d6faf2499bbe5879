"""IntervalSet against a set-of-integers model; ChunkList lookups against brute force."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dmsfs.content import ChunkList, IntervalSet
from dmsfs.index import HOLE

LIMIT = 120  # small coordinates: collisions of range ends are the interesting cases

pos = st.integers(0, LIMIT)
rng_pair = st.tuples(pos, pos)
ops = st.lists(
    st.one_of(st.tuples(st.just("add"), pos, pos), st.tuples(st.just("clip"), pos, st.just(0))),
    max_size=25)


def check_invariants(s: IntervalSet, model: set[int]) -> None:
    ranges = list(s)
    for a, b in ranges:
        assert a < b, ranges                         # no empty ranges
    for (_, b1), (a2, _) in zip(ranges, ranges[1:], strict=False):
        assert b1 < a2, ranges                       # sorted, disjoint, merged
    assert {x for a, b in ranges for x in range(a, b)} == model
    assert bool(s) == bool(model)


def build(steps: list[tuple[str, int, int]]) -> tuple[IntervalSet, set[int]]:
    s, model = IntervalSet(), set()
    for op, a, b in steps:
        if op == "add":
            s.add(a, b)
            model |= set(range(a, b))
        else:
            s.clip(a)
            model = {x for x in model if x < a}
        check_invariants(s, model)
    return s, model


@settings(max_examples=300, deadline=None)
@given(ops)
def test_add_and_clip(steps: list[tuple[str, int, int]]) -> None:
    build(steps)


@settings(max_examples=300, deadline=None)
@given(ops, st.lists(rng_pair, min_size=1, max_size=8))
def test_queries(steps: list[tuple[str, int, int]], queries: list[tuple[int, int]]) -> None:
    s, model = build(steps)
    for start, end in queries:
        if start < end:
            assert s.overlaps(start, end) == any(start <= x < end for x in model), (
                list(s), start, end)
        if start <= end:
            # the closed range [start, end] meets a range [a, b) taken with its end:
            # so a range ending at start, or one starting at end (an append right
            # after a chunk), touches it
            expect = any(a <= end and start <= b for a, b in list(s))
            assert s.touches(start, end) == expect, (list(s), start, end)
            # in terms of bytes: some byte of the set lies in [start - 1, end]
            assert expect == any(start - 1 <= x <= end for x in model)
        runs = list(s.pieces(start, end))
        if start >= end:
            assert runs == []
            continue
        assert runs[0][0] == start and runs[-1][1] == end
        for (a1, b1, in1), (a2, _, in2) in zip(runs, runs[1:], strict=False):
            assert b1 == a2                          # contiguous
            assert in1 != in2                        # maximal runs
        for a, b, inside in runs:
            assert a < b
            assert all((x in model) == inside for x in range(a, b)), (list(s), a, b, inside)


def test_examples() -> None:
    s = IntervalSet()
    s.add(10, 20)
    s.add(30, 40)
    s.add(20, 30)                                    # adjacent ranges merge
    assert list(s) == [(10, 40)]
    s.add(50, 50)                                    # empty: no-op
    assert list(s) == [(10, 40)]
    s.add(45, 60)
    s.clip(50)
    assert list(s) == [(10, 40), (45, 50)]
    assert list(s.pieces(0, 100)) == [(0, 10, False), (10, 40, True), (40, 45, False),
                                      (45, 50, True), (50, 100, False)]
    assert s.touches(50, 60) and s.touches(0, 10) and not s.touches(51, 60)
    assert not s.overlaps(40, 45) and s.overlaps(39, 45)
    s.clip(10)
    assert not s and list(s) == []
    s.add(1, 2)
    s.clear()
    assert not s


chunk_lists = st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(1, 40)),
                       max_size=12)


@settings(max_examples=200, deadline=None)
@given(chunk_lists, rng_pair)
def test_chunklist_spans(chunks: list[tuple[bytes, int]], q: tuple[int, int]) -> None:
    cl = ChunkList(chunks)
    owner = [i for i, (_, n) in enumerate(chunks) for _ in range(n)]  # chunk of each byte
    assert cl.size == len(owner) == cl.offsets[-1]
    assert len(cl) == len(chunks)
    for offset, i in enumerate(owner):
        assert cl.index_at(offset) == i
    start, end = q
    got = list(cl.spans(start, end))
    expect: list[tuple[int, int, bytes, int, int]] = []
    for offset in range(start, min(end, cl.size)):
        i = owner[offset]
        within = offset - cl.offsets[i]
        if expect and expect[-1][0] == i:
            expect[-1] = (*expect[-1][:4], within + 1)
        else:
            expect.append((i, cl.offsets[i], chunks[i][0], within, within + 1))
    assert got == expect
    for k in range(len(chunks) + 1):
        p = cl.prefix(k)
        assert p.chunks == chunks[:k] and p.size == sum(n for _, n in chunks[:k])


def test_chunklist_holes() -> None:
    assert ChunkList().holes_only() and ChunkList().size == 0
    assert ChunkList([(HOLE, 10), (HOLE, 5)]).holes_only()
    assert not ChunkList([(HOLE, 10), (b"\x01" * 32, 5)]).holes_only()
    assert list(ChunkList().spans(0, 10)) == []
