"""Unit tests for daemon.locks: normalization, overlap table, enforcement, LockTable."""

from __future__ import annotations

import random

import pytest

from orchestrator.daemon.locks import Lease, LockConflict, LockTable
from orchestrator.shared.lockspec import (
    WHOLE_REPO,
    Spec,
    is_glob,
    locks_overlap,
    normalize_lock,
    path_covered,
    paths_outside,
)

# --------------------------------------------------------------------------------------
# normalize_lock
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("src/api/avatar.py", "src/api/avatar.py"),
        ("src/storage/", "src/storage"),
        ("src/storage", "src/storage"),
        ("  src/storage/  ", "src/storage"),
        ("./src//storage///", "src/storage"),
        ("src/./a/./b", "src/a/b"),
        (".", WHOLE_REPO),
        ("./", WHOLE_REPO),
        ("**", WHOLE_REPO),
        ("**/", WHOLE_REPO),
        ("./**/**", WHOLE_REPO),
        ("src/**/**/*.py", "src/**/*.py"),
        ("docs/*.md", "docs/*.md"),
        ("[ab]/x", "[ab]/x"),
    ],
)
def test_normalize_lock(raw: str, expected: str) -> None:
    assert normalize_lock(raw) == expected
    assert normalize_lock(expected) == expected  # idempotent


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("/etc/x", "repo-relative: /etc/x"),
        ("  /abs", "repo-relative"),
        ("a/../b", "'..'"),
        ("..", "'..'"),
        ("../x", "'..'"),
        ("src\\x.py", "backslash"),
        ("a\x00b", "NUL"),
        ("", "empty"),
        ("   ", "empty"),
    ],
)
def test_normalize_lock_errors(raw: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_lock(raw)
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg


def test_dotdot_inside_name_is_fine() -> None:
    assert normalize_lock("a/..b/c..") == "a/..b/c.."


@pytest.mark.parametrize(
    ("spec", "glob"),
    [
        ("src/a.py", False),
        ("src/", False),
        (".", False),
        ("**", False),
        ("src/*.py", True),
        ("src/**", True),
        ("t/test_?.py", True),
        ("[ab]/x", True),
        ("weird[name", False),  # unclosed bracket is literal
    ],
)
def test_is_glob(spec: str, glob: bool) -> None:
    assert is_glob(spec) is glob


# --------------------------------------------------------------------------------------
# locks_overlap table
# --------------------------------------------------------------------------------------

OVERLAP_CASES = [
    # plain vs plain
    ("src/a.py", "src/a.py", True),  # file vs same file
    ("src/a.py", "src/b.py", False),  # file vs sibling
    ("src/a", "src/a/b.py", True),  # dir vs file inside
    ("src/a/", "src/a/b/c/d.py", True),  # dir vs deep file
    ("src/a", "src/ab", False),  # segment-wise, not string prefix
    ("src/a", "src/ab/c.py", False),
    ("src", "src/storage", True),  # dir vs nested dir
    ("src/storage", "src/storage/", True),
    ("src/storage", "lib/storage", False),
    # whole repo
    (".", "anything/at/all.py", True),
    (".", ".", True),
    (".", "docs/*.md", True),
    ("**", "x", True),
    # glob vs plain
    ("src/*.py", "src/a.py", True),  # glob matches path
    ("src/**/*.py", "src/x/y/z.py", True),
    ("src/*.py", "src", True),  # glob vs ancestor dir
    ("src/**/*.py", "src", True),
    ("src/*.py", ".", True),
    ("src/*", "src/a/b.py", True),  # glob matches ancestor of path (descendant of match)
    ("src/*.py", "src/a/b.py", False),  # `*` does not cross '/'
    ("src/*.py", "src/a.md", False),  # glob vs non-matching
    ("src/*.py", "lib/a.py", False),
    ("docs/*.md", "docs/guide.md", True),
    ("tests/test_?.py", "tests/test_a.py", True),
    ("tests/test_?.py", "tests/test_ab.py", False),
    ("[ab]/x", "a/x", True),
    ("[ab]/x", "c/x", False),
    ("[ab]/x", "b", True),
    ("[!a]/x", "a/x", False),
    ("[!a]/x", "b/x", True),
    ("[a-c]/x", "b/x/y", True),
    ("[a-c]/x", "d/x", False),
    # `**`
    ("**/x.py", "a/b/c/x.py", True),
    ("**/x.py", "x.py", True),  # `**` matches zero segments
    ("**/x.py", "a/b", True),  # a/b/x.py possible
    ("src/**", "src", True),
    ("src/**", "lib/a.py", False),
    ("src/**/test", "src/test", True),
    ("a/**/b/**/c", "a/x/b/y/c/z", True),
    ("a/**/b", "c/b", False),
    # glob vs glob
    ("docs/*.md", "src/*.py", False),  # disjoint first segment
    ("*.md", "*.py", False),  # incompatible suffixes
    ("a*", "b*", False),  # incompatible prefixes
    ("a*b", "a*c", False),
    ("a*", "*b", True),  # "ab"
    ("src/*.py", "src/test_*", True),  # "src/test_x.py"
    ("src/*.py", "src/**", True),
    ("src/**/*.py", "**/test_*.py", True),
    ("**/*.py", "docs/*.md", True),  # docs/x.md/y.py: globs may name directories
    ("docs/*.md", "docs/**/*.md", True),
    ("[ab]/*", "[bc]/*", True),
    ("[ab]/*", "[cd]/*", False),
    ("[!a]", "[!b]", True),  # conservative
    ("[!ab]", "[ab]", False),
    ("?", "??", False),
    ("?*", "??", True),
    ("src/*/x", "src/a/*", True),
    ("src/*/x", "src/a/y", False),
]


@pytest.mark.parametrize(("a", "b", "expected"), OVERLAP_CASES)
def test_locks_overlap_table(a: str, b: str, expected: bool) -> None:
    assert locks_overlap(a, b) is expected
    assert locks_overlap(b, a) is expected


def test_locks_overlap_normalizes_inputs() -> None:
    assert locks_overlap("./src//a/", "src/a/b.py")
    with pytest.raises(ValueError):
        locks_overlap("/abs", "src")


# --------------------------------------------------------------------------------------
# path_covered / paths_outside
# --------------------------------------------------------------------------------------

COVER_CASES = [
    ("src/a.py", ["src/a.py"], True),
    ("src/a.py", ["src/b.py"], False),
    ("src/storage/db/x.py", ["src/storage/"], True),
    ("src/storagex/y.py", ["src/storage"], False),
    ("src/a.py", ["src/a"], False),
    ("src/a.py", ["src/*.py"], True),
    ("src/pkg/a.py", ["src/*.py"], False),
    ("src/pkg/a.py", ["src/**/*.py"], True),
    ("src/a.py", ["src/**/*.py"], True),
    ("src/pkg/mod/a.txt", ["src/*"], True),  # glob matches ancestor dir
    ("src/pkg/mod/a.txt", ["src/p?g"], True),
    ("docs/x.md", ["src/", "docs/*.md"], True),
    ("anything", ["."], True),
    ("anything/deep", ["**"], True),
    ("tests/test_a.py", ["tests/test_?.py"], True),
    ("a/x", ["[ab]/x"], True),
    ("c/x", ["[ab]/x"], False),
    ("src/[a].py", ["src/[a].py"], False),  # path is literal; spec is a class
    ("src/a.py", ["src/[a].py"], True),
    ("src/a.py", [], False),
    ("/etc/passwd", ["."], False),
    ("src/../etc", ["."], False),
    ("", ["."], False),
]


@pytest.mark.parametrize(("path", "locks", "expected"), COVER_CASES)
def test_path_covered(path: str, locks: list[str], expected: bool) -> None:
    assert path_covered(path, locks) is expected


def test_path_covered_invalid_lock_raises() -> None:
    with pytest.raises(ValueError, match="repo-relative"):
        path_covered("a", ["/abs"])


def test_paths_outside_sorted_and_deduped() -> None:
    changed = ["src/b.py", "docs/a.md", "src/a.py", "README.md", "src/b.py", "src/sub/c.py"]
    assert paths_outside(changed, ["src/*.py", "docs/"]) == ["README.md", "src/sub/c.py"]


def test_paths_outside_no_locks_means_everything_outside() -> None:
    assert paths_outside(["b", "a"], []) == ["a", "b"]


def test_paths_outside_empty_changes() -> None:
    assert paths_outside([], []) == []


# --------------------------------------------------------------------------------------
# LockTable
# --------------------------------------------------------------------------------------


def test_lease_helpers() -> None:
    lease = Lease("src", "T-1", "claude", 10.0, 12.0, 20.0)
    assert lease.age_s(15.0) == 5.0
    assert lease.remaining_s(15.0) == 5.0
    assert not lease.is_expired(19.9)
    assert lease.is_expired(20.0)


def test_acquire_and_conflict() -> None:
    t = LockTable()
    got = t.acquire("T-1", "a1", ["src/api/", "docs/*.md"], now_s=100.0, ttl_s=30.0)
    assert [lz.path for lz in got] == ["docs/*.md", "src/api"]
    assert got[0] == Lease("docs/*.md", "T-1", "a1", 100.0, 100.0, 130.0)
    assert len(t) == 2
    assert t.conflicts(["src/api/avatar.py"]) == [("src/api", "T-1")]
    assert t.conflicts(["src"]) == [("src/api", "T-1")]
    assert t.conflicts(["src/apix"]) == []
    assert t.conflicts(["docs/guide.md", "src/*.py"]) == [("docs/*.md", "T-1")]
    assert t.conflicts(["src/**/x.py"]) == [("src/api", "T-1")]
    assert t.conflicts(["."]) == [("docs/*.md", "T-1"), ("src/api", "T-1")]
    assert t.conflicts([]) == []
    # own locks never conflict
    assert t.conflicts(["src/api/avatar.py"], owner="T-1") == []
    with pytest.raises(LockConflict) as info:
        t.acquire("T-2", "a2", ["src/api/avatar.py"], now_s=101.0, ttl_s=30.0)
    assert info.value.conflicts == [("src/api", "T-1")]
    assert isinstance(info.value, ValueError)
    assert "src/api (T-1)" in str(info.value)


def test_acquire_all_or_nothing() -> None:
    t = LockTable()
    t.acquire("T-1", "a", ["src/a.py"], 0.0, 10.0)
    with pytest.raises(LockConflict):
        t.acquire("T-2", "b", ["src/b.py", "src/c.py", "src/a.py"], 0.0, 10.0)
    assert t.held_by("T-2") == []
    assert len(t) == 1
    assert t.conflicts(["src/b.py"]) == []


def test_acquire_invalid_path_changes_nothing() -> None:
    t = LockTable()
    with pytest.raises(ValueError, match="repo-relative"):
        t.acquire("T-1", "a", ["src/ok.py", "/abs"], 0.0, 10.0)
    assert len(t) == 0


def test_acquire_no_locks_always_succeeds() -> None:
    t = LockTable()
    t.acquire("T-1", "a", ["."], 0.0, 10.0)
    assert t.acquire("T-2", "b", [], 0.0, 10.0) == []
    assert t.held_by("T-2") == []
    assert t.owners() == ["T-1"]


def test_acquire_validation() -> None:
    t = LockTable()
    with pytest.raises(ValueError, match="ttl_s"):
        t.acquire("T-1", "a", ["x"], 0.0, 0.0)
    with pytest.raises(ValueError, match="owner"):
        t.acquire("", "a", ["x"], 0.0, 1.0)


def test_acquire_dedupes_and_reacquire_refreshes() -> None:
    t = LockTable()
    got = t.acquire("T-1", "a", ["src/", "./src", "src//"], 0.0, 10.0)
    assert len(got) == 1 and len(t) == 1
    again = t.acquire("T-1", "b", ["src", "lib"], 5.0, 10.0)
    assert [(lz.path, lz.agent, lz.acquired_at_s, lz.expires_at_s) for lz in again] == [
        ("lib", "b", 5.0, 15.0),
        ("src", "b", 0.0, 15.0),
    ]
    assert len(t) == 2


def test_same_owner_may_hold_overlapping_paths() -> None:
    t = LockTable()
    t.acquire("T-1", "a", ["src", "src/a.py", "src/*.py"], 0.0, 10.0)
    assert len(t) == 3
    assert t.conflicts(["src/a.py"], owner="T-2") == [
        ("src", "T-1"),
        ("src/*.py", "T-1"),
        ("src/a.py", "T-1"),
    ]


def test_release() -> None:
    t = LockTable()
    t.acquire("T-1", "a", ["src/b", "src/a"], 0.0, 10.0)
    t.acquire("T-2", "a", ["lib"], 0.0, 10.0)
    released = t.release("T-1")
    assert [lz.path for lz in released] == ["src/a", "src/b"]
    assert len(t) == 1
    assert t.conflicts(["src"]) == []
    assert t.release("T-1") == []
    assert t.release("nobody") == []
    t.acquire("T-3", "a", ["src"], 0.0, 10.0)
    assert t.conflicts(["src/a"]) == [("src", "T-3")]


def test_renew_and_expired() -> None:
    t = LockTable()
    t.acquire("T-1", "a", ["a", "b"], 0.0, 10.0)
    t.acquire("T-2", "a", ["c"], 0.0, 20.0)
    assert t.expired(9.9) == []
    assert t.expired(10.0) == ["T-1"]
    assert t.expired(25.0) == ["T-1", "T-2"]
    assert t.renew("T-1", 12.0, 10.0) == 2
    assert t.expired(15.0) == []
    assert all(lz.renewed_at_s == 12.0 and lz.expires_at_s == 22.0 for lz in t.held_by("T-1"))
    assert t.held_by("T-1")[0].acquired_at_s == 0.0
    assert t.renew("nobody", 12.0, 10.0) == 0
    # expired() does not release
    assert len(t) == 3
    with pytest.raises(ValueError, match="ttl_s"):
        t.renew("T-1", 0.0, -1.0)


def test_returned_leases_are_snapshots() -> None:
    t = LockTable()
    (lease,) = t.acquire("T-1", "a", ["a"], 0.0, 10.0)
    lease.expires_at_s = 1e9
    t.leases()[0].expires_at_s = 1e9
    t.held_by("T-1")[0].expires_at_s = 1e9
    assert t.expired(10.0) == ["T-1"]


def test_leases_sorted_by_path() -> None:
    t = LockTable()
    t.acquire("T-2", "a", ["z", "b"], 0.0, 10.0)
    t.acquire("T-1", "a", ["m", "a/*.py"], 0.0, 10.0)
    assert [(lz.path, lz.owner) for lz in t.leases()] == [
        ("a/*.py", "T-1"),
        ("b", "T-2"),
        ("m", "T-1"),
        ("z", "T-2"),
    ]


def test_reservation_blocks_others_not_owner() -> None:
    t = LockTable()
    t.acquire("T-1", "a", ["src/a.py"], 0.0, 10.0)
    t.reserve("T-9", ["src/"])
    assert t.reservations() == {"T-9": ["src"]}
    # reservation conflicts for anyone but the reserving owner
    assert t.conflicts(["src/b.py"], owner="T-2") == [("src", "T-9")]
    assert t.conflicts(["src/b.py"], owner="T-9") == []
    with pytest.raises(LockConflict) as info:
        t.acquire("T-2", "b", ["src/b.py"], 1.0, 10.0)
    assert info.value.conflicts == [("src", "T-9")]
    # existing lease unaffected, and still blocks T-9
    assert len(t.held_by("T-1")) == 1
    with pytest.raises(LockConflict):
        t.acquire("T-9", "c", ["src"], 1.0, 10.0)
    t.release("T-1")
    got = t.acquire("T-9", "c", ["src"], 2.0, 10.0)
    assert [lz.path for lz in got] == ["src"]
    assert t.reservations() == {}  # dropped on successful acquire


def test_reservation_vs_reservation_first_wins() -> None:
    t = LockTable()
    t.reserve("T-1", ["src/a"])
    with pytest.raises(LockConflict) as info:
        t.reserve("T-2", ["src"])
    assert info.value.conflicts == [("src/a", "T-1")]
    assert t.reservations() == {"T-1": ["src/a"]}
    t.reserve("T-2", ["lib"])  # disjoint is fine
    t.reserve("T-1", ["src/a", "src/b"])  # re-reserving replaces
    assert t.reservations() == {"T-1": ["src/a", "src/b"], "T-2": ["lib"]}


def test_reservation_may_overlap_leases() -> None:
    t = LockTable()
    t.acquire("T-1", "a", ["src"], 0.0, 10.0)
    t.reserve("T-2", ["src"])  # reserving over a held lease is the whole point
    t.reserve("T-1", ["lib"])  # T-2 reservation does not overlap lib
    assert t.reservations() == {"T-1": ["lib"], "T-2": ["src"]}


def test_unreserve_and_release_drop_reservation() -> None:
    t = LockTable()
    t.reserve("T-1", ["a"])
    assert t.unreserve("T-1") is True
    assert t.unreserve("T-1") is False
    assert t.conflicts(["a"]) == []
    t.reserve("T-1", ["a"])
    t.release("T-1")
    assert t.reservations() == {}
    assert t.conflicts(["a"]) == []
    t.reserve("T-1", ["a"])
    t.reserve("T-1", [])  # empty == unreserve
    assert t.reservations() == {}


def test_failed_acquire_keeps_reservation() -> None:
    t = LockTable()
    t.acquire("T-1", "a", ["x"], 0.0, 10.0)
    t.reserve("T-2", ["x"])
    with pytest.raises(LockConflict):
        t.acquire("T-2", "b", ["x"], 0.0, 10.0)
    assert t.reservations() == {"T-2": ["x"]}


def test_lease_and_reservation_same_path_same_owner() -> None:
    t = LockTable()
    t.acquire("T-1", "a", ["x"], 0.0, 10.0)
    t.reserve("T-1", ["x"])
    assert t.conflicts(["x"]) == [("x", "T-1")]
    t.unreserve("T-1")
    assert t.conflicts(["x"]) == [("x", "T-1")]
    t.release("T-1")
    assert t.conflicts(["x"]) == []


def test_conflicts_looks_only_at_indexed_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    """A query compares against the glob leases and its own trie path, not every lease.

    Counted, not timed (performance is measured in benchmarks/): with 1,000 plain-path
    leases and one glob lease, a scan would compare each query with ~1,000 leases.
    """
    import orchestrator.daemon.locks as locks_module

    rng = random.Random(7)
    words = [f"m{i}" for i in range(30)]
    t = LockTable()
    n = 0
    while len(t) < 1000:
        p = "/".join(rng.choice(words) for _ in range(rng.randint(2, 4)))
        if not t.conflicts([p]):
            t.acquire(f"T{n}", "a", [p], 0.0, 10.0)
            n += 1
    t.acquire("G", "a", ["docs/*.md", "tests/**/test_*.py"], 0.0, 10.0)
    cands = [
        ["/".join(rng.choice(words) for _ in range(rng.randint(1, 4))) + ".py", "x/y"]
        for _ in range(2000)
    ]
    calls = 0
    real_overlap = locks_module.specs_overlap

    def counting_overlap(a: Spec, b: Spec) -> bool:
        nonlocal calls
        calls += 1
        return real_overlap(a, b)

    monkeypatch.setattr(locks_module, "specs_overlap", counting_overlap)
    found = [t.conflicts(c, owner="Q") for c in cands]
    assert calls / len(cands) <= 10, calls
    # The index answers as a scan of every lease would.
    held = t.leases()
    for c, got in list(zip(cands, found, strict=True))[:200]:
        expected = {
            (lease.path, lease.owner)
            for lease in held
            for path in c
            if locks_overlap(path, lease.path)
        }
        assert {(p, o) for p, o in got} == expected, c
