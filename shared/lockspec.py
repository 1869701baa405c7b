"""The lock spec language: normalization, overlap rules and path coverage.

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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

__all__ = [
    "WHOLE_REPO",
    "Seg",
    "Spec",
    "is_glob",
    "literal_segment",
    "locks_overlap",
    "normalize_lock",
    "path_covered",
    "parse_spec",
    "paths_outside",
    "seg_compatible",
    "specs_overlap",
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
class Seg:
    """One path segment of a spec (never ``**``; that is the ``_DSTAR`` sentinel)."""

    raw: str
    literal: bool
    tokens: tuple[_Token, ...]


class _DStar:
    """Sentinel for a ``**`` segment (zero or more whole segments)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "**"


_DSTAR = _DStar()
_SegOrDStar = Seg | _DStar


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


def _glob_match(tokens: tuple[_Token, ...], text: str) -> bool:
    """Whether ``text`` (one segment) matches the token sequence, like fnmatchcase.

    A Thompson-style NFA simulation over a bitset of live token indices (a star
    token loops on itself and may match nothing). Time O(len(tokens) * len(text))
    by construction, with no backtracking; ``re`` backtracks exponentially on
    ``*a*a*...*b``.
    """
    m = len(tokens)
    stars = sum(1 << i for i, t in enumerate(tokens) if t[0])

    def closure(live: int) -> int:
        while True:  # a live star also makes the token after it live
            add = ((live & stars) << 1) & ~live
            if not add:
                return live
            live |= add

    live = closure(1)
    masks: dict[str, int] = {}
    for c in text:
        mask = masks.get(c)
        if mask is None:
            mask = sum(1 << i for i, t in enumerate(tokens) if _cs_contains(t[1], c))
            masks[c] = mask
        hit = live & mask
        if not hit:
            return False
        live = closure((hit & stars) | ((hit & ~stars) << 1))
    return bool(live >> m & 1)


@lru_cache(maxsize=16384)
def _segment(raw: str) -> Seg:
    tokens, literal = _tokenize(raw)
    return Seg(raw, literal, tokens)


@lru_cache(maxsize=16384)
def literal_segment(raw: str) -> Seg:
    """A segment of a concrete path: always literal, even if it contains ``*?[``."""
    return Seg(raw, True, ())


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


@lru_cache(maxsize=4096)
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
def seg_compatible(a: Seg, b: Seg) -> bool:
    """Whether some segment string could match both segment patterns."""
    if a.literal and b.literal:
        return a.raw == b.raw
    if a.literal:
        return _glob_match(b.tokens, a.raw)
    if b.literal:
        return _glob_match(a.tokens, b.raw)
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
            elif seg_compatible(ai, bj):
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
class Spec:
    norm: str
    parts: tuple[str, ...]  # raw segment strings ("**" included); () for the whole repo
    segs: tuple[_SegOrDStar, ...]
    glob: bool


#: Longest lock spec accepted (characters).
MAX_SPEC_CHARS = 1024
#: Most segments in one lock spec.
MAX_SPEC_SEGMENTS = 64
#: Most wildcards (``*``, ``?``, ``[``) in one lock spec. Matching and overlap are
#: polynomial whatever the pattern (an NFA simulation and a product automaton, no
#: backtracking); these limits keep the polynomial small.
MAX_SPEC_WILDCARDS = 32


def _normalize_parts(spec: str) -> tuple[str, ...]:
    s = spec.strip()
    if not s:
        raise ValueError("lock path must not be empty (use '.' for the whole repo)")
    if len(s) > MAX_SPEC_CHARS:
        raise ValueError(f"lock path is {len(s)} characters, more than {MAX_SPEC_CHARS}")
    wildcards = sum(s.count(c) for c in "*?[")
    if wildcards > MAX_SPEC_WILDCARDS:
        raise ValueError(
            f"lock pattern has {wildcards} wildcards, more than {MAX_SPEC_WILDCARDS}: "
            f"{s[:60]}{'...' if len(s) > 60 else ''}"
        )
    if s.count("/") >= MAX_SPEC_SEGMENTS:
        raise ValueError(f"lock path has more than {MAX_SPEC_SEGMENTS} segments")
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
def parse_spec(spec: str) -> Spec:
    parts = _normalize_parts(spec)
    segs: tuple[_SegOrDStar, ...] = tuple(_DSTAR if p == "**" else _segment(p) for p in parts)
    glob = any(not isinstance(s, Seg) or not s.literal for s in segs)
    return Spec("/".join(parts) or WHOLE_REPO, parts, segs, glob)


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
            contains a ``..`` segment, a backslash or a NUL character, or exceeds
            :data:`MAX_SPEC_CHARS`, :data:`MAX_SPEC_SEGMENTS` or
            :data:`MAX_SPEC_WILDCARDS`.
    """
    return parse_spec(spec).norm


def is_glob(spec: str) -> bool:
    """Return whether ``spec`` contains a wildcard segment (``*``, ``?``, ``[...]``, ``**``).

    The whole repo ``"."`` (including ``"**"``) is not a glob: it is a plain path with no
    segments. Raises ``ValueError`` like :func:`normalize_lock`.
    """
    return parse_spec(spec).glob


@lru_cache(maxsize=131072)
def specs_overlap(a: Spec, b: Spec) -> bool:
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
    return specs_overlap(parse_spec(a), parse_spec(b))


def _concrete_parts(path: str) -> tuple[str, ...] | None:
    """Segments of a concrete repo path, or None if it is not a sane repo-relative path."""
    if not path or path.startswith("/") or "\x00" in path:
        return None
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if not parts or ".." in parts:
        return None
    return parts


def _covers(lock: Spec, parts: tuple[str, ...]) -> bool:
    if not lock.glob:
        return parts[: len(lock.parts)] == lock.parts
    return _search(lock.segs, tuple(literal_segment(p) for p in parts), accept_b_end=False)


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
    specs = [parse_spec(lk) for lk in locks]
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
    specs = [parse_spec(lk) for lk in locks]
    out: set[str] = set()
    for path in changed:
        parts = _concrete_parts(path)
        if parts is None or not any(_covers(s, parts) for s in specs):
            out.add(path)
    return sorted(out)
