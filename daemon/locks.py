"""Path locks: spec normalization, overlap rules, change enforcement and the lease table.

Every ticket declares ``locks``: repo-relative POSIX path specs it may change. A spec is

* a plain path: a file (``src/api/avatar.py``) or a directory (``src/storage`` or
  ``src/storage/``). A plain path covers itself and its whole subtree.
* a glob: any segment containing ``*``, ``?`` or a ``[...]`` class (fnmatch-like,
  case-sensitive; ``*`` and ``?`` never cross ``/``; a ``**`` segment matches zero or
  more whole segments). A glob covers every path it matches plus their subtrees.
* the whole repo: ``.``, ``./`` or ``**`` (all normalize to ``"."``).

Overlap is decided segment by segment and is *conservative*: ``locks_overlap`` never
returns ``False`` for two specs that both cover some path. See ``docs/locks.md``.

This module is pure: no I/O and no clock reads. Times are float seconds (``now_s``)
supplied by the caller, on whatever monotonic or wall clock the caller uses consistently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple

__all__ = [
    "WHOLE_REPO",
    "Lease",
    "LockConflict",
    "LockTable",
    "is_glob",
    "locks_overlap",
    "normalize_lock",
    "path_covered",
    "paths_outside",
]

WHOLE_REPO = "."
"""Normalized spec meaning "the entire repository"."""

# --------------------------------------------------------------------------------------
# Segment patterns
# --------------------------------------------------------------------------------------


class _CharSet(NamedTuple):
    """A set of single characters: ``chars`` ∪ ``ranges``, complemented if ``neg``."""

    neg: bool
    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...]


_ANY_CHAR = _CharSet(True, frozenset(), ())

# A token is (is_star, charset). A star matches any run of characters (within a segment).
_Token = tuple[bool, _CharSet]
_STAR: _Token = (True, _ANY_CHAR)
_QMARK: _Token = (False, _ANY_CHAR)


def _lit_token(c: str) -> _Token:
    return (False, _CharSet(False, frozenset(c), ()))


@dataclass(frozen=True, eq=False, slots=True)
class _Seg:
    """One path segment of a spec (never ``**``; that is the ``_DSTAR`` sentinel)."""

    raw: str
    literal: bool
    tokens: tuple[_Token, ...]
    regex: re.Pattern[str] | None


class _DStar:
    """Sentinel for a ``**`` segment (zero or more whole segments)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "**"


_DSTAR = _DStar()
_SegOrDStar = _Seg | _DStar


def _tokenize(seg: str) -> tuple[tuple[_Token, ...], bool]:
    """Split one segment into tokens following fnmatch's bracket rules.

    Returns:
        ``(tokens, literal)`` where ``literal`` is True iff the segment has no wildcard.
    """
    toks: list[_Token] = []
    literal = True
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        i += 1
        if c == "*":
            literal = False
            if not toks or toks[-1] is not _STAR:
                toks.append(_STAR)
        elif c == "?":
            literal = False
            toks.append(_QMARK)
        elif c == "[":
            j = i
            if j < n and seg[j] == "!":
                j += 1
            if j < n and seg[j] == "]":
                j += 1
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:  # unclosed bracket: a literal "["
                toks.append(_lit_token("["))
                continue
            body = seg[i:j]
            i = j + 1
            neg = body.startswith("!")
            if neg:
                body = body[1:]
            chars: set[str] = set()
            ranges: list[tuple[str, str]] = []
            k = 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    lo, hi = body[k], body[k + 2]
                    if lo <= hi:  # reversed ranges are empty, as in fnmatch
                        ranges.append((lo, hi))
                    k += 3
                else:
                    chars.add(body[k])
                    k += 1
            toks.append((False, _CharSet(neg, frozenset(chars), tuple(ranges))))
            literal = False
        else:
            toks.append(_lit_token(c))
    return tuple(toks), literal


def _token_regex(tok: _Token) -> str:
    is_star, cs = tok
    if is_star:
        return ".*"
    if cs == _ANY_CHAR:
        return "."
    if not cs.neg and not cs.ranges and len(cs.chars) == 1:
        return re.escape(next(iter(cs.chars)))
    body = "".join(re.escape(c) for c in sorted(cs.chars))
    body += "".join(f"{re.escape(lo)}-{re.escape(hi)}" for lo, hi in cs.ranges)
    if not body:
        return "." if cs.neg else "(?!)"
    return f"[{'^' if cs.neg else ''}{body}]"


@lru_cache(maxsize=16384)
def _segment(raw: str) -> _Seg:
    tokens, literal = _tokenize(raw)
    if literal:
        return _Seg(raw, True, tokens, None)
    regex = re.compile("".join(_token_regex(t) for t in tokens), re.DOTALL)
    return _Seg(raw, False, tokens, regex)


@lru_cache(maxsize=16384)
def _literal_segment(raw: str) -> _Seg:
    """A segment of a concrete path: always literal, even if it contains ``*?[``."""
    return _Seg(raw, True, (), None)


def _cs_contains(cs: _CharSet, c: str) -> bool:
    inside = c in cs.chars or any(lo <= c <= hi for lo, hi in cs.ranges)
    return inside != cs.neg


def _interval_covered(lo: str, hi: str, intervals: list[tuple[str, str]]) -> bool:
    """True iff every character in ``[lo, hi]`` lies in the union of sorted ``intervals``."""
    cur, end = ord(lo), ord(hi)
    for a, b in intervals:
        if ord(b) < cur:
            continue
        if ord(a) > cur:
            return False
        cur = ord(b) + 1
        if cur > end:
            return True
    return False


def _cs_intersect(a: _CharSet, b: _CharSet) -> bool:
    """Whether some character is in both sets (True when unsure: both negated)."""
    if a.neg and b.neg:
        return True  # complement of two finite sets: practically never empty
    if a.neg:
        a, b = b, a
    if not b.neg:
        if any(_cs_contains(b, c) for c in a.chars) or any(_cs_contains(a, c) for c in b.chars):
            return True
        return any(max(lo1, lo2) <= min(hi1, hi2) for lo1, hi1 in a.ranges for lo2, hi2 in b.ranges)
    # a positive, b negated: need a character of a that b does not exclude.
    if any(_cs_contains(b, c) for c in a.chars):
        return True
    excluded = sorted([(c, c) for c in b.chars] + list(b.ranges))
    return any(not _interval_covered(lo, hi, excluded) for lo, hi in a.ranges)


@lru_cache(maxsize=65536)
def _seg_compatible(a: _Seg, b: _Seg) -> bool:
    """Whether some segment string could match both segment patterns."""
    if a.literal and b.literal:
        return a.raw == b.raw
    if a.literal:
        assert b.regex is not None
        return b.regex.fullmatch(a.raw) is not None
    if b.literal:
        assert a.regex is not None
        return a.regex.fullmatch(b.raw) is not None
    # Product automaton over the two token sequences.
    ta, tb = a.tokens, b.tokens
    m, n = len(ta), len(tb)
    stack = [(0, 0)]
    seen = {(0, 0)}
    while stack:
        i, j = stack.pop()
        if i == m and j == n:
            return True
        nxt: list[tuple[int, int]] = []
        if i < m and ta[i][0]:
            nxt.append((i + 1, j))
        if j < n and tb[j][0]:
            nxt.append((i, j + 1))
        if i < m and j < n and _cs_intersect(ta[i][1], tb[j][1]):
            nxt.append((i if ta[i][0] else i + 1, j if tb[j][0] else j + 1))
        for st in nxt:
            if st not in seen:
                seen.add(st)
                stack.append(st)
    return False


def _search(a: tuple[_SegOrDStar, ...], b: tuple[_SegOrDStar, ...], accept_b_end: bool) -> bool:
    """Run two segment-pattern sequences against each other.

    Returns True iff some path matched by a prefix-run of ``a`` reaches the end of ``a``
    (or, when ``accept_b_end``, the end of ``b``) while the other side is still able to
    continue. With ``accept_b_end`` this is "a and b are prefix-compatible" (overlap);
    without it and with a literal ``b`` it is "a matches a prefix of b" (coverage).
    """
    m, n = len(a), len(b)
    stack = [(0, 0)]
    seen = {(0, 0)}
    while stack:
        i, j = stack.pop()
        if i == m or (accept_b_end and j == n):
            return True
        ai = a[i]
        nxt: list[tuple[int, int]] = []
        if ai is _DSTAR:
            nxt.append((i + 1, j))
        if j < n:
            bj = b[j]
            if bj is _DSTAR:
                nxt.append((i, j + 1))
            if ai is _DSTAR or bj is _DSTAR:
                if not (ai is _DSTAR and bj is _DSTAR):
                    nxt.append((i if ai is _DSTAR else i + 1, j if bj is _DSTAR else j + 1))
            elif _seg_compatible(ai, bj):
                nxt.append((i + 1, j + 1))
        for st in nxt:
            if st not in seen:
                seen.add(st)
                stack.append(st)
    return False


# --------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, slots=True)
class _Spec:
    norm: str
    parts: tuple[str, ...]  # raw segment strings ("**" included); () for the whole repo
    segs: tuple[_SegOrDStar, ...]
    glob: bool


def _normalize_parts(spec: str) -> tuple[str, ...]:
    s = spec.strip()
    if not s:
        raise ValueError("lock path must not be empty (use '.' for the whole repo)")
    if "\x00" in s:
        raise ValueError(f"lock path must not contain NUL: {s!r}")
    if "\\" in s:
        raise ValueError(f"lock path must use '/' separators, not backslashes: {s}")
    if s.startswith("/"):
        raise ValueError(f"lock path must be repo-relative: {s}")
    parts: list[str] = []
    for p in s.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            raise ValueError(f"lock path must not contain '..': {s}")
        if p == "**" and parts and parts[-1] == "**":
            continue
        parts.append(p)
    if parts == ["**"]:
        parts = []
    return tuple(parts)


@lru_cache(maxsize=65536)
def _parse(spec: str) -> _Spec:
    parts = _normalize_parts(spec)
    segs: tuple[_SegOrDStar, ...] = tuple(_DSTAR if p == "**" else _segment(p) for p in parts)
    glob = any(not isinstance(s, _Seg) or not s.literal for s in segs)
    return _Spec("/".join(parts) or WHOLE_REPO, parts, segs, glob)


def normalize_lock(spec: str) -> str:
    """Normalize a lock spec to its canonical form.

    Strips surrounding whitespace, drops ``.`` segments, duplicate and trailing slashes,
    and collapses repeated ``**`` segments. The whole repo (``.``, ``./``, ``**``) becomes
    ``"."``. ``"src/storage/"`` and ``"src/storage"`` are the same lock.

    Args:
        spec: Repo-relative POSIX path, directory or glob.

    Returns:
        The canonical spec, e.g. ``"src/storage"`` for ``" ./src//storage/ "``.

    Raises:
        ValueError: One-line reason if the spec is empty after stripping, absolute,
            contains a ``..`` segment, a backslash or a NUL character.
    """
    return _parse(spec).norm


def is_glob(spec: str) -> bool:
    """Return whether ``spec`` contains a wildcard segment (``*``, ``?``, ``[...]``, ``**``).

    The whole repo ``"."`` (including ``"**"``) is not a glob: it is a plain path with no
    segments. Raises ``ValueError`` like :func:`normalize_lock`.
    """
    return _parse(spec).glob


@lru_cache(maxsize=131072)
def _overlap_parsed(a: _Spec, b: _Spec) -> bool:
    if not a.glob and not b.glob:
        k = min(len(a.parts), len(b.parts))
        return a.parts[:k] == b.parts[:k]
    return _search(a.segs, b.segs, accept_b_end=True)


def locks_overlap(a: str, b: str) -> bool:
    """Decide whether two lock specs may cover a common path.

    Rules (segment-wise; see docs/locks.md):

    * plain vs plain: equal, or one is a segment-wise prefix of the other
      (``src/a`` vs ``src/a/b.py`` overlap, ``src/a`` vs ``src/ab`` do not);
    * glob vs plain: the glob could match the path, an ancestor or a descendant of it;
    * glob vs glob: some path matched by one is equal to, an ancestor or a descendant of
      some path matched by the other. ``**`` matches any number of segments.

    Conservative: never False when both specs cover some common path. Segment patterns
    are compared exactly except for negated-vs-negated ``[!..]`` classes (assumed to
    intersect) and empty segments (assumed to exist).

    Args:
        a: Lock spec (normalized or raw; it is normalized internally).
        b: Lock spec.

    Returns:
        True if the specs overlap. Symmetric.

    Raises:
        ValueError: If either spec is invalid (see :func:`normalize_lock`).
    """
    return _overlap_parsed(_parse(a), _parse(b))


def _concrete_parts(path: str) -> tuple[str, ...] | None:
    """Segments of a concrete repo path, or None if it is not a sane repo-relative path."""
    if not path or path.startswith("/") or "\x00" in path:
        return None
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if not parts or ".." in parts:
        return None
    return parts


def _covers(lock: _Spec, parts: tuple[str, ...]) -> bool:
    if not lock.glob:
        return parts[: len(lock.parts)] == lock.parts
    return _search(lock.segs, tuple(_literal_segment(p) for p in parts), accept_b_end=False)


def path_covered(path: str, locks: Sequence[str]) -> bool:
    """Return whether a concrete changed file lies inside any lock.

    Covered means: equal to a plain lock, under a directory lock, matched by a glob, or
    under a directory matched by a glob (``src/*`` covers ``src/a/b.py``). The path is
    taken literally (``*?[`` in it are ordinary characters).

    Args:
        path: Repo-relative file path as printed by ``git diff --name-only``.
        locks: Lock specs (raw or normalized). Empty means nothing is covered.

    Returns:
        True if covered. Absolute paths, paths with ``..`` and empty paths are never
        covered.

    Raises:
        ValueError: If a lock spec is invalid.
    """
    parts = _concrete_parts(path)
    specs = [_parse(lk) for lk in locks]
    if parts is None:
        return False
    return any(_covers(s, parts) for s in specs)


def paths_outside(changed: Iterable[str], locks: Sequence[str]) -> list[str]:
    """List the changed paths that no lock covers.

    A ticket with no locks covers nothing, so every changed path is returned; whether
    that is an error (``reject``) or a warning (``warn``) is the caller's policy.

    Args:
        changed: Repo-relative file paths (e.g. ``git diff --name-only`` lines).
        locks: The ticket's lock specs.

    Returns:
        Sorted, de-duplicated paths (as given) not covered by any lock.

    Raises:
        ValueError: If a lock spec is invalid.
    """
    specs = [_parse(lk) for lk in locks]
    out: set[str] = set()
    for path in changed:
        parts = _concrete_parts(path)
        if parts is None or not any(_covers(s, parts) for s in specs):
            out.add(path)
    return sorted(out)


# --------------------------------------------------------------------------------------
# Lease table
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Lease:
    """A held lock on one normalized path.

    Attributes:
        path: Normalized lock spec (plain path, directory or glob).
        owner: Ticket id holding the lease (one ticket attempt).
        agent: Agent name working the ticket.
        acquired_at_s: Time of acquisition, seconds.
        renewed_at_s: Time of the last renewal (== ``acquired_at_s`` initially), seconds.
        expires_at_s: Time after which the lease is expired, seconds.
    """

    path: str
    owner: str
    agent: str
    acquired_at_s: float
    renewed_at_s: float
    expires_at_s: float

    def age_s(self, now_s: float) -> float:
        """Seconds since acquisition at time ``now_s``."""
        return now_s - self.acquired_at_s

    def remaining_s(self, now_s: float) -> float:
        """Seconds until expiry at ``now_s`` (negative once expired)."""
        return self.expires_at_s - now_s

    def is_expired(self, now_s: float) -> bool:
        """True iff ``now_s >= expires_at_s``."""
        return now_s >= self.expires_at_s


class LockConflict(ValueError):
    """Raised when locks cannot be taken because others hold or reserve overlapping paths.

    Attributes:
        conflicts: Sorted ``(path, owner)`` pairs that blocked the request.
    """

    def __init__(self, conflicts: list[tuple[str, str]]) -> None:
        self.conflicts = conflicts
        shown = ", ".join(f"{p} ({o})" for p, o in conflicts[:5])
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        super().__init__(f"lock conflict with {shown}{more}")


class _Node:
    __slots__ = ("children", "owners", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.children: dict[str, _Node] = {}
        self.owners: dict[str, int] = {}  # owner -> refcount (lease and/or reservation)


class _Index:
    """Plain paths in a segment trie; glob specs in a small dict checked linearly."""

    def __init__(self) -> None:
        self.root = _Node(WHOLE_REPO)
        self.globs: dict[str, dict[str, int]] = {}

    def add(self, spec: _Spec, owner: str) -> None:
        if spec.glob:
            owners = self.globs.setdefault(spec.norm, {})
        else:
            node = self.root
            for k, part in enumerate(spec.parts):
                child = node.children.get(part)
                if child is None:
                    child = node.children[part] = _Node("/".join(spec.parts[: k + 1]))
                node = child
            owners = node.owners
        owners[owner] = owners.get(owner, 0) + 1

    def remove(self, spec: _Spec, owner: str) -> None:
        if spec.glob:
            owners = self.globs[spec.norm]
            _decref(owners, owner)
            if not owners:
                del self.globs[spec.norm]
            return
        trail = [self.root]
        for part in spec.parts:
            trail.append(trail[-1].children[part])
        _decref(trail[-1].owners, owner)
        for k in range(len(spec.parts), 0, -1):
            node = trail[k]
            if node.owners or node.children:
                break
            del trail[k - 1].children[spec.parts[k - 1]]

    def query(self, spec: _Spec, exclude: str | None, out: set[tuple[str, str]]) -> None:
        """Add every indexed ``(path, owner)`` overlapping ``spec`` to ``out``."""

        def take(node: _Node) -> None:
            for o in node.owners:
                if o != exclude:
                    out.add((node.path, o))

        def take_subtree(node: _Node) -> None:
            stack = [node]
            while stack:
                nd = stack.pop()
                take(nd)
                stack.extend(nd.children.values())

        for gpath, owners in self.globs.items():
            if any(o != exclude for o in owners) and _overlap_parsed(spec, _parse(gpath)):
                out.update((gpath, o) for o in owners if o != exclude)

        node: _Node | None = self.root
        if not spec.glob:  # fast path: walk ancestors, then the subtree
            for part in spec.parts:
                assert node is not None
                take(node)
                node = node.children.get(part)
                if node is None:
                    return
            assert node is not None
            take_subtree(node)
            return

        segs = spec.segs
        m = len(segs)
        stack: list[tuple[_Node, int]] = [(self.root, 0)]
        seen: set[tuple[int, int]] = set()
        while stack:
            nd, i = stack.pop()
            key = (id(nd), i)
            if key in seen:
                continue
            seen.add(key)
            if i == m:  # the glob matched this node's path: it covers the whole subtree
                take_subtree(nd)
                continue
            take(nd)  # this node's path is a prefix of something the glob may match
            seg = segs[i]
            if not isinstance(seg, _Seg):  # `**`
                stack.append((nd, i + 1))
                stack.extend((child, i) for child in nd.children.values())
            elif seg.literal:
                child = nd.children.get(seg.raw)
                if child is not None:
                    stack.append((child, i + 1))
            else:
                for name, child in nd.children.items():
                    if _seg_compatible(seg, _literal_segment(name)):
                        stack.append((child, i + 1))


def _decref(owners: dict[str, int], owner: str) -> None:
    n = owners[owner] - 1
    if n:
        owners[owner] = n
    else:
        del owners[owner]


def _specs(paths: Iterable[str]) -> list[_Spec]:
    """Parse and de-duplicate specs (by normalized form), sorted by normalized form."""
    by_norm = {s.norm: s for s in (_parse(p) for p in paths)}
    return [by_norm[k] for k in sorted(by_norm)]


class LockTable:
    """Held leases and starvation reservations, indexed for fast conflict queries.

    Invariant: no two leases with different owners overlap (``locks_overlap``).
    Reservations may overlap leases of other owners (that is their purpose) but never
    reservations of other owners.

    Plain paths live in a trie keyed by segment, so a conflict query for a plain path
    costs O(depth + matches) regardless of how many paths are held; glob specs are kept
    in a separate dict and checked pairwise (they are expected to be few).

    All ``Lease`` objects returned are snapshots (copies); mutating them has no effect.
    """

    def __init__(self) -> None:
        self._leases: dict[str, dict[str, Lease]] = {}  # owner -> norm path -> lease
        self._reserved: dict[str, list[_Spec]] = {}  # owner -> reserved specs
        self._index = _Index()
        self._count = 0

    def __len__(self) -> int:
        """Number of held leases (reservations not counted)."""
        return self._count

    # -- queries -----------------------------------------------------------------------

    def conflicts(self, paths: Sequence[str], owner: str | None = None) -> list[tuple[str, str]]:
        """Find held or reserved locks of other owners overlapping any of ``paths``.

        Args:
            paths: Lock specs of the candidate (raw or normalized).
            owner: Candidate's ticket id; its own leases and reservation are ignored.
                None means nothing is ignored.

        Returns:
            Sorted, unique ``(path, owner)`` pairs; ``path`` is the held/reserved spec.
            Empty if ``paths`` is empty.

        Raises:
            ValueError: If a spec is invalid.
        """
        out: set[tuple[str, str]] = set()
        for p in paths:
            self._index.query(_parse(p), owner, out)
        return sorted(out)

    def first_conflict(self, paths: Sequence[str], owner: str | None = None
                       ) -> tuple[str, str] | None:
        """The first ``(path, owner)`` that :meth:`conflicts` would report for the first
        conflicting spec of ``paths``, or None; stops at the first overlap (a yes/no
        check for the scheduler).

        Raises:
            ValueError: If a spec is invalid.
        """
        for p in paths:
            out: set[tuple[str, str]] = set()
            self._index.query(_parse(p), owner, out)
            if out:
                return min(out)
        return None

    def leases(self) -> list[Lease]:
        """All held leases, sorted by ``(path, owner)``."""
        out = [replace(lz) for held in self._leases.values() for lz in held.values()]
        out.sort(key=lambda lz: (lz.path, lz.owner))
        return out

    def held_by(self, owner: str) -> list[Lease]:
        """Leases held by ``owner``, sorted by path (empty if none)."""
        held = self._leases.get(owner, {})
        return [replace(held[p]) for p in sorted(held)]

    def owners(self) -> list[str]:
        """Sorted ticket ids holding at least one lease."""
        return sorted(self._leases)

    def expired(self, now_s: float) -> list[str]:
        """Owners with at least one lease where ``now_s >= expires_at_s``.

        Nothing is released; the caller decides (usually: stop the attempt, then
        :meth:`release`).

        Returns:
            Sorted ticket ids.
        """
        return sorted(
            o
            for o, held in self._leases.items()
            if any(lz.is_expired(now_s) for lz in held.values())
        )

    def reservations(self) -> dict[str, list[str]]:
        """Current reservations: ``{owner: sorted normalized specs}``."""
        return {o: [s.norm for s in specs] for o, specs in sorted(self._reserved.items())}

    # -- mutations ---------------------------------------------------------------------

    def acquire(
        self, owner: str, agent: str, paths: Sequence[str], now_s: float, ttl_s: float
    ) -> list[Lease]:
        """Take leases on all ``paths`` for ``owner``, or none of them.

        Paths already held by ``owner`` are refreshed (agent, renewal and expiry updated,
        ``acquired_at_s`` kept). On success the owner's reservation is dropped. An empty
        ``paths`` acquires nothing and always succeeds.

        Args:
            owner: Ticket id (non-empty).
            agent: Agent name recorded on the leases.
            paths: Lock specs (raw or normalized; duplicates collapse).
            now_s: Current time, seconds.
            ttl_s: Lease lifetime, seconds (> 0); ``expires_at_s = now_s + ttl_s``.

        Returns:
            Snapshots of the owner's leases for ``paths``, sorted by path.

        Raises:
            LockConflict: If any path overlaps another owner's lease or reservation;
                the table is unchanged.
            ValueError: If ``owner`` is empty, ``ttl_s <= 0`` or a spec is invalid.
        """
        _check_owner(owner)
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        specs = _specs(paths)
        out: set[tuple[str, str]] = set()
        for s in specs:
            self._index.query(s, owner, out)
        if out:
            raise LockConflict(sorted(out))
        self.unreserve(owner)
        held = self._leases.setdefault(owner, {})
        result: list[Lease] = []
        for s in specs:
            lease = held.get(s.norm)
            if lease is None:
                lease = Lease(s.norm, owner, agent, now_s, now_s, now_s + ttl_s)
                held[s.norm] = lease
                self._index.add(s, owner)
                self._count += 1
            else:
                lease.agent = agent
                lease.renewed_at_s = now_s
                lease.expires_at_s = now_s + ttl_s
            result.append(replace(lease))
        if not held:
            del self._leases[owner]
        return result

    def renew(self, owner: str, now_s: float, ttl_s: float) -> int:
        """Extend every lease of ``owner`` to ``now_s + ttl_s`` (also already-expired ones).

        Returns:
            Number of leases renewed (0 if the owner holds none).

        Raises:
            ValueError: If ``ttl_s <= 0``.
        """
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        held = self._leases.get(owner, {})
        for lease in held.values():
            lease.renewed_at_s = now_s
            lease.expires_at_s = now_s + ttl_s
        return len(held)

    def release(self, owner: str) -> list[Lease]:
        """Drop all leases and the reservation of ``owner``.

        Returns:
            The released leases, sorted by path (empty if none).
        """
        self.unreserve(owner)
        held = self._leases.pop(owner, {})
        for path in held:
            self._index.remove(_parse(path), owner)
        self._count -= len(held)
        return [held[p] for p in sorted(held)]

    def reserve(self, owner: str, paths: Sequence[str]) -> None:
        """Reserve ``paths`` for a starving ticket, replacing its previous reservation.

        While reserved, no other owner can :meth:`acquire` overlapping paths (existing
        leases are unaffected), so the reserving ticket gets them once they are released.
        An empty ``paths`` is the same as :meth:`unreserve`.

        Raises:
            LockConflict: If ``paths`` overlap another owner's reservation (first
                reservation wins; this prevents two reservations blocking each other).
                The table is unchanged.
            ValueError: If ``owner`` is empty or a spec is invalid.
        """
        _check_owner(owner)
        specs = _specs(paths)
        out: set[tuple[str, str]] = set()
        for s in specs:
            self._index.query(s, owner, out)
        clash = sorted(
            (p, o) for p, o in out if any(r.norm == p for r in self._reserved.get(o, ()))
        )
        if clash:
            raise LockConflict(clash)
        self.unreserve(owner)
        if specs:
            for s in specs:
                self._index.add(s, owner)
            self._reserved[owner] = specs

    def unreserve(self, owner: str) -> bool:
        """Drop the reservation of ``owner``.

        Returns:
            True if there was one.
        """
        specs = self._reserved.pop(owner, None)
        if not specs:
            return False
        for s in specs:
            self._index.remove(s, owner)
        return True


def _check_owner(owner: str) -> None:
    if not owner:
        raise ValueError("lock owner (ticket id) must be non-empty")
