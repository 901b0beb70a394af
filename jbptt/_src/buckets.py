"""The compile-tuning policy of online training: which static segment
lengths ("buckets") the training step is compiled for.

Everything here changes compilation and speed only, never which segments
are trained or their gradients beyond round-off: a segment runs in the
smallest bucket that holds it (its extra steps masked out), and a segment
longer than the top bucket is split into blocks of it (the same gradient,
see :mod:`jbptt._src.segment_rules`). The policy is one value,
:class:`Buckets`, read in one place (:func:`ladder`), with the documented
default ``Buckets()``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from jbptt._src import validation

tree_map = jax.tree_util.tree_map


class Buckets(NamedTuple):
    """How many static segment lengths the training step compiles, and which.

    Attributes:
      min_bucket: the smallest length compiled (default ``None``: the
        estimator's own buckets as they are; 8 for rules without buckets,
        whose buckets are powers of two capped at the call's longest segment).
      max_buckets: how many lengths an estimator with a cut law may compile
        (``None``: the estimator's own choice, 6 for the built-in laws). More
        buckets pad less and compile more (once each; the first call pays
        for the buckets its segments need, less when ``ahead`` finds idle
        cores). The loops stop at each segment's real length, so padding
        costs only the GEMMs outside them; fewer buckets shorten the first
        call (e.g. 2 or 3 in a notebook) and slow long runs at small depths.
      top: the longest length compiled: an int, ``None`` (the law's own,
        its 0.99 quantile) or ``"auto"`` (default). Longer segments are split
        into blocks without changing their gradient. ``"auto"``, on the CPU
        backend only, drops the buckets whose step would need more than
        ``cpu_temp_bytes`` of temporaries (read from the compiled steps of
        the middle and the top bucket, extrapolated linearly; never below
        the middle bucket), since XLA:CPU maps large temporaries afresh on
        every call (docs/performance.md).
      cpu_temp_bytes: the temporaries limit of ``top="auto"``.
      step_arrays: a generous count of step-sized arrays a step keeps per
        time step: a model whose top bucket fits ``cpu_temp_bytes`` at that
        count skips the probe (and its compilations).
      ahead: compile the buckets a call's plan needs in background threads
        (one per spare core, at most 4) while the first segments run (the
        plan is known before the loop: the same buckets, only sooner). Off
        by default: on the 2-core CPU it measured no gain, both cores being
        busy compiling anyway (docs/performance.md); try it where cores idle.
      warmup: how many steps from the start of the stream train in two
        buckets of the ladder only, its middle and its top (default 4096;
        0: the whole ladder from the start). A short run then compiles two
        gradient passes, not the ladder's six, and pays for it with some
        padding; a long run compiles the rest once it is past these steps,
        where the compilations pay for themselves. Which bucket a segment
        runs in depends only on where it starts in the stream, so chunked
        calls train as one call; the segments and their gradients are the
        same in any bucket (up to round-off, the padding being zeros).

    Examples:
      >>> from jbptt import train
      >>> train.Buckets(max_buckets=6, top=None).max_buckets
      6
    """

    min_bucket: int | None = None
    max_buckets: int | None = None
    top: int | str | None = "auto"
    cpu_temp_bytes: int = 32 << 20
    step_arrays: int = 32
    ahead: bool = False
    warmup: int = 4096


def check(policy) -> Buckets:
    """``policy`` (``None`` for the default) checked, as a :class:`Buckets`."""
    if policy is None:
        return Buckets()
    if not isinstance(policy, Buckets):
        raise TypeError(
            f"buckets must be a jbptt.train.Buckets, got {type(policy).__name__}."
        )
    mb = policy.min_bucket
    is_int = isinstance(mb, int | np.integer) and not isinstance(mb, bool)
    if mb is not None and (not is_int or mb <= 0):
        raise ValueError(f"min_bucket must be a positive int, got {mb!r}.")
    if policy.max_buckets is not None:
        validation.positive_int("max_buckets", policy.max_buckets)
    validation.integer(
        "warmup", policy.warmup, minimum=0, what="a non-negative int of steps"
    )
    if policy.top not in (None, "auto"):
        validation.positive_int(
            "top_bucket", policy.top, 'a positive int, "auto" or None'
        )
    return policy


def bucket_length(n: int, min_bucket: int, n_max: int) -> int:
    """Static length a segment of ``n`` steps runs in when the rule has no
    buckets of its own: a power of two ≥ n, at least ``min_bucket``, at most
    ``n_max`` (the longest segment).

    Examples:
      >>> from jbptt._src import buckets
      >>> [buckets.bucket_length(n, 4, 50) for n in (1, 5, 16, 17, 40)]
      [4, 8, 16, 32, 50]
    """
    b = max(min_bucket, 1 << max(0, int(n) - 1).bit_length())
    return int(min(b, n_max))


def ladder(policy: Buckets, rule_buckets, name: str) -> tuple[int, ...] | None:
    """The sorted static lengths of a rule with a bucket law
    (``rule_buckets(min_bucket, max_buckets=...)``), ``None`` without one."""
    if rule_buckets is None:
        return None
    lo = 1 if policy.min_bucket is None else policy.min_bucket
    if policy.max_buckets is None:
        return tuple(sorted(rule_buckets(lo)))
    try:
        return tuple(sorted(rule_buckets(lo, max_buckets=policy.max_buckets)))
    except TypeError as err:
        raise TypeError(
            f"max_buckets: estimator {name}'s OnlineRule.buckets takes no "
            f"max_buckets= ({err})."
        ) from None


def warmup_ladder(ladder) -> tuple[int, ...] | None:
    """The buckets of ``ladder`` a stream's first ``Buckets.warmup`` steps
    train in: its middle and its top bucket (the ladder itself when it has
    two buckets or fewer, ``None`` without one).

    Examples:
      >>> from jbptt._src import buckets
      >>> buckets.warmup_ladder((10, 24, 44, 75, 127, 230))
      (44, 230)
    """
    if ladder is None or len(ladder) <= 2:
        return ladder
    return (ladder[(len(ladder) - 1) // 2], ladder[-1])


def capped(ladder, top: int, split: bool, name: str) -> tuple[int, ...]:
    """The ladder's buckets up to ``top`` (``(top,)`` when none is); longer
    segments are then split."""
    if ladder is None or not split:
        raise ValueError(
            f"top_bucket: estimator {name} has no bucket ladder whose long "
            "segments can be split (an OnlineRule with buckets, advance and "
            "block, as the cut-law estimators have)."
        )
    return tuple(b for b in ladder if b <= top) or (top,)


def may_page_fault(policy: Buckets, ladder, split, step_leaves) -> bool:
    """Whether ``top="auto"`` probes the ladder: on CPU, for a ladder of over
    two buckets whose long segments can be split, unless its top bucket fits
    in ``cpu_temp_bytes`` even at ``step_arrays`` arrays of one step's input,
    target and state (``step_leaves``) per time step."""
    if not split or ladder is None or len(ladder) <= 2:
        return False
    if jax.default_backend() != "cpu":
        return False
    step_bytes = sum(np.dtype(a.dtype).itemsize * np.size(a) for a in step_leaves)
    return policy.step_arrays * step_bytes * ladder[-1] > policy.cpu_temp_bytes


def temp_bytes(executable) -> int | None:
    """Temporary bytes of a compiled step (``None`` where XLA does not say)."""
    try:
        return int(executable.memory_analysis().temp_size_in_bytes)
    except (AttributeError, NotImplementedError, TypeError):
        return None


def auto_top(ladder, compiled, limit: int) -> int:
    """The longest bucket of ``ladder`` whose step needs at most ``limit``
    bytes of temporaries, never below the ladder's middle bucket (shorter
    blocks re-run more forward steps than the page faults cost). The
    temporaries grow linearly with the bucket, so the compiled steps of the
    middle and the top bucket (``compiled(b)``) give the line: the two
    buckets a run trains in first (``Buckets.warmup``), so a short run
    compiles nothing for the probe alone."""
    top = b0 = ladder[(len(ladder) - 1) // 2]
    b1 = ladder[-1]
    t0, t1 = (temp_bytes(compiled(b)) for b in (b0, b1))
    if t0 is not None and t1 is not None and b1 > b0:
        slope = max(t1 - t0, 0) / (b1 - b0)
        fits = [b for b in ladder if t0 + slope * (b - b0) <= limit]
        top = max([top, *fits])
    return top
