"""The lease table: held path locks and starvation reservations, indexed for conflict queries.

The lock spec language (normalization, overlap, coverage) is :mod:`orchestrator.shared.lockspec`;
this module only keeps who holds what. It is pure: no I/O and no clock reads. Times are float
seconds (``now_s``) supplied by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from orchestrator.shared.lockspec import (
    WHOLE_REPO,
    Seg,
    Spec,
    literal_segment,
    parse_spec,
    seg_compatible,
    specs_overlap,
)

__all__ = ["Lease", "LockConflict", "LockTable"]


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

    def add(self, spec: Spec, owner: str) -> None:
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

    def remove(self, spec: Spec, owner: str) -> None:
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

    def query(self, spec: Spec, exclude: str | None, out: set[tuple[str, str]]) -> None:
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
            if any(o != exclude for o in owners) and specs_overlap(spec, parse_spec(gpath)):
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
            if not isinstance(seg, Seg):  # `**`
                stack.append((nd, i + 1))
                stack.extend((child, i) for child in nd.children.values())
            elif seg.literal:
                child = nd.children.get(seg.raw)
                if child is not None:
                    stack.append((child, i + 1))
            else:
                for name, child in nd.children.items():
                    if seg_compatible(seg, literal_segment(name)):
                        stack.append((child, i + 1))


def _decref(owners: dict[str, int], owner: str) -> None:
    n = owners[owner] - 1
    if n:
        owners[owner] = n
    else:
        del owners[owner]


def _specs(paths: Iterable[str]) -> list[Spec]:
    """Parse and de-duplicate specs (by normalized form), sorted by normalized form."""
    by_norm = {s.norm: s for s in (parse_spec(p) for p in paths)}
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
        self._reserved: dict[str, list[Spec]] = {}  # owner -> reserved specs
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
            self._index.query(parse_spec(p), owner, out)
        return sorted(out)

    def first_conflict(
        self, paths: Sequence[str], owner: str | None = None
    ) -> tuple[str, str] | None:
        """The first ``(path, owner)`` that :meth:`conflicts` would report for the first
        conflicting spec of ``paths``, or None; stops at the first overlap (a yes/no
        check for the scheduler).

        Raises:
            ValueError: If a spec is invalid.
        """
        for p in paths:
            out: set[tuple[str, str]] = set()
            self._index.query(parse_spec(p), owner, out)
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
            self._index.remove(parse_spec(path), owner)
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
