"""Lock patterns: the worst case of glob matching and overlap (issue 10).

The pattern ``*a*a*...*a*b`` with the most wildcards a lock may have
(:data:`shared.lockspec.MAX_SPEC_WILDCARDS`) against a name of ``a`` repeated
up to the longest file-name segment (255 characters): a backtracking matcher
(Python ``re``, ``fnmatch``) needs exponential time here; the NFA simulation in
shared/lockspec.py needs O(pattern x name). Three figures, each the median over
the samples (the maximum is in the note; on a shared machine it measures the
scheduler more than the code), with caches cleared before each sample so every
call computes from scratch:

* ``patterns.match_worst``: ``path_covered`` of that name by that pattern;
* ``patterns.overlap_worst``: ``locks_overlap`` of that pattern with the name,
  and with a second worst-case pattern (``*b*b*...*a``);
* ``patterns.old_regex_40``: for context, the time the old regex matcher took
  on a 40-character name with a 14-star pattern, cut off at 2 s (a lower bound).
"""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.harness import Figure, median
from orchestrator.shared import lockspec

#: Our own bound: well under one heartbeat tick, so no pattern can stall the loop.
TARGET_MS = 20.0


def _clear() -> None:
    lockspec.parse_spec.cache_clear()
    lockspec._segment.cache_clear()
    lockspec.seg_compatible.cache_clear()
    lockspec.specs_overlap.cache_clear()
    lockspec._cs_intersect.cache_clear()


def _times_ms(fn: object, samples: int) -> tuple[float, float]:
    """(median, max) over ``samples`` runs, caches cleared before each."""
    times = []
    for _ in range(samples):
        _clear()
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1000)
    return median(times), max(times)


def _old_regex_ms(limit_s: float) -> tuple[float, bool]:
    """The old matcher (``.*a.*a...`` regex, as the old ``_segment`` compiled): time for
    15 wildcards vs 40 characters, in a child process killed at ``limit_s``
    (``re`` holds the GIL, so it cannot be timed out in a thread)."""
    code = "import re; re.compile('.*a' * 14 + '.*b', re.DOTALL).fullmatch('a' * 40)"
    t0 = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-c", code], timeout=limit_s, check=True)
    except subprocess.TimeoutExpired:
        return limit_s * 1000, True
    return (time.perf_counter() - t0) * 1000, False


def run(quick: bool) -> list[Figure]:
    n = lockspec.MAX_SPEC_WILDCARDS
    pattern = "*a" * (n - 1) + "*b"
    other = "*b" * (n - 1) + "*a"
    name = "a" * 255
    samples = 5 if quick else 20
    match_ms, match_max = _times_ms(lambda: lockspec.path_covered(name, [pattern]), samples)
    overlap_ms, overlap_max = _times_ms(
        lambda: (lockspec.locks_overlap(pattern, name), lockspec.locks_overlap(pattern, other)),
        samples,
    )
    old_ms, cut = _old_regex_ms(0.5 if quick else 2.0)
    return [
        Figure(
            "patterns.match_worst",
            match_ms,
            "ms",
            TARGET_MS,
            samples=samples,
            note=f"path_covered: {n}-wildcard pattern vs a 255-char segment, median "
            f"(max {match_max:.1f} ms)",
        ),
        Figure(
            "patterns.overlap_worst",
            overlap_ms,
            "ms",
            TARGET_MS,
            samples=samples,
            note=f"locks_overlap: {n}-wildcard pattern vs the name and vs another, median "
            f"(max {overlap_max:.1f} ms)",
        ),
        Figure(
            "patterns.old_regex_40",
            old_ms,
            "ms",
            None,
            samples=1,
            note="the old regex matcher, 15 wildcards vs 40 chars (context)",
            lower_bound=cut,
        ),
    ]
