"""Property tests for daemon.locks (hypothesis)."""

from __future__ import annotations

from fnmatch import fnmatchcase
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.daemon.locks import LockConflict, LockTable
from orchestrator.shared.lockspec import (
    locks_overlap,
    normalize_lock,
    path_covered,
)

# database=None: no .hypothesis/ directory is written into the repo.
PROPS = settings(max_examples=200, deadline=None, database=None)

# Small alphabets so that random specs and paths collide often.
LIT_SEGS = ["a", "b", "ab", "ba", "c"]
GLOB_SEGS = ["*", "a*", "*b", "?", "??", "[ab]", "[!a]", "[a-b]*", "*a*", "**"]

lit_seg = st.sampled_from(LIT_SEGS)
any_seg = st.sampled_from(LIT_SEGS + GLOB_SEGS)

plain_specs = st.lists(lit_seg, min_size=0, max_size=3).map(lambda s: "/".join(s) or ".")
glob_specs = st.lists(any_seg, min_size=0, max_size=3).map(lambda s: "/".join(s) or ".")
specs = st.one_of(plain_specs, glob_specs)
concrete_paths = st.lists(lit_seg, min_size=1, max_size=4).map("/".join)


@cache
def _ref_match(pat: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Reference glob matcher: fnmatch per segment, `**` = zero or more segments."""
    if not pat:
        return not parts
    if pat[0] == "**":
        return any(_ref_match(pat[1:], parts[k:]) for k in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pat[0]) and _ref_match(pat[1:], parts[1:])


def _ref_covered(path: str, spec: str) -> bool:
    """Reference coverage: the spec matches the path or one of its ancestors."""
    norm = normalize_lock(spec)
    pat = () if norm == "." else tuple(norm.split("/"))
    parts = tuple(path.split("/"))
    return any(_ref_match(pat, parts[:k]) for k in range(len(parts) + 1))


@PROPS
@given(specs, specs)
def test_overlap_symmetric(a: str, b: str) -> None:
    assert locks_overlap(a, b) == locks_overlap(b, a)


@PROPS
@given(specs)
def test_overlap_reflexive(a: str) -> None:
    assert locks_overlap(a, a)


@PROPS
@given(concrete_paths, specs)
def test_path_covered_matches_reference(path: str, spec: str) -> None:
    assert path_covered(path, [spec]) == _ref_covered(path, spec)


@PROPS
@given(specs, specs, st.lists(concrete_paths, min_size=1, max_size=5))
def test_overlap_is_conservative(a: str, b: str, paths: list[str]) -> None:
    for p in paths:
        if _ref_covered(p, a) and _ref_covered(p, b):
            assert locks_overlap(a, b), (a, b, p)


@PROPS
@given(specs, specs)
def test_overlap_sound_against_all_small_paths(a: str, b: str) -> None:
    # Exhaustive variant over every path of depth <= 4 built from LIT_SEGS.
    if not locks_overlap(a, b):
        common = _covered_set(a) & _covered_set(b)
        assert not common, (a, b, sorted(common)[:3])


@PROPS
@given(plain_specs, plain_specs)
def test_plain_overlap_is_exact(a: str, b: str) -> None:
    pa = [] if a == "." else a.split("/")
    pb = [] if b == "." else b.split("/")
    k = min(len(pa), len(pb))
    assert locks_overlap(a, b) == (pa[:k] == pb[:k])


def _all_paths(depth: int) -> list[str]:
    out: list[str] = []
    frontier = [""]
    for _ in range(depth):
        frontier = [f"{f}/{s}" if f else s for f in frontier for s in LIT_SEGS]
        out.extend(frontier)
    return out


_ALL_PATHS = _all_paths(4)


@cache
def _covered_set(spec: str) -> frozenset[str]:
    return frozenset(p for p in _ALL_PATHS if _ref_covered(p, spec))


# --------------------------------------------------------------------------------------
# LockTable
# --------------------------------------------------------------------------------------

OWNERS = ["T1", "T2", "T3", "T4"]
owner_st = st.sampled_from(OWNERS)
paths_st = st.lists(specs, min_size=0, max_size=3)
op_st = st.one_of(
    st.tuples(st.just("acquire"), owner_st, paths_st),
    st.tuples(st.just("release"), owner_st, st.just([])),
    st.tuples(st.just("reserve"), owner_st, paths_st),
    st.tuples(st.just("unreserve"), owner_st, st.just([])),
    st.tuples(st.just("query"), owner_st, paths_st),
)


def _held_entries(t: LockTable) -> list[tuple[str, str]]:
    entries = {(lz.path, lz.owner) for lz in t.leases()}
    for owner, paths in t.reservations().items():
        entries.update((p, owner) for p in paths)
    return sorted(entries)


def _brute_conflicts(t: LockTable, paths: list[str], owner: str | None) -> list[tuple[str, str]]:
    return sorted(
        (p, o)
        for p, o in _held_entries(t)
        if o != owner and any(locks_overlap(q, p) for q in paths)
    )


def _check_invariant(t: LockTable) -> None:
    leases = t.leases()
    for i, x in enumerate(leases):
        for y in leases[i + 1 :]:
            if x.owner != y.owner:
                assert not locks_overlap(x.path, y.path), (x, y)
    res = t.reservations()
    flat = [(p, o) for o, ps in res.items() for p in ps]
    for i, (p, o) in enumerate(flat):
        for q, o2 in flat[i + 1 :]:
            if o != o2:
                assert not locks_overlap(p, q), (p, o, q, o2)
    assert len(t) == len(leases)


@PROPS
@given(st.lists(op_st, min_size=1, max_size=10))
def test_random_ops_keep_invariants_and_index_matches_brute_force(
    ops: list[tuple[str, str, list[str]]],
) -> None:
    t = LockTable()
    for step, (kind, owner, paths) in enumerate(ops):
        now = float(step)
        if kind == "acquire":
            expected = _brute_conflicts(t, paths, owner)
            try:
                t.acquire(owner, "agent", paths, now, 10.0)
            except LockConflict as exc:
                assert exc.conflicts == expected
                assert expected
            else:
                assert not expected
                assert owner not in t.reservations()
                held = {lz.path for lz in t.held_by(owner)}
                assert {normalize_lock(p) for p in paths} <= held
        elif kind == "release":
            before = t.held_by(owner)
            assert t.release(owner) == before
            assert owner not in t.reservations()
        elif kind == "reserve":
            try:
                t.reserve(owner, paths)
            except LockConflict as exc:
                assert exc.conflicts
            else:
                want = sorted({normalize_lock(p) for p in paths})
                assert t.reservations().get(owner, []) == want
        elif kind == "unreserve":
            t.unreserve(owner)
        else:
            for who in [owner, None]:
                assert t.conflicts(paths, owner=who) == _brute_conflicts(t, paths, who)
        _check_invariant(t)
        # Indexed lookup equals brute force on a fixed probe set too.
        for probe in (["."], ["a/b"], ["*/b"], ["**/c"]):
            assert t.conflicts(probe, owner=owner) == _brute_conflicts(t, probe, owner)
