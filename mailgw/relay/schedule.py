"""The retry schedule: pure functions of the attempt count, the time now and
a random number, so that the runner keeps no state between attempts and a
test needs nothing but numbers (or a Clock to walk through them).

The delay after the n-th failed attempt is C{base * 2**(n-1)}, capped at
C{maximum}, with "equal jitter": half of it fixed, half random, so that the
retries of a burst of failures spread out but never come sooner than half the
nominal delay. A message is given up once it has been failing for
C{max_age} since its retry clock started; the last retry is pulled in to
fall exactly at that deadline, so the final verdict is not late.
"""
from __future__ import annotations


def backoff(attempts: int, base: float, maximum: float, rand: float) -> float:
    """Seconds to wait after the C{attempts}-th failed attempt (1 or more).

    @param rand: a number in [0, 1) (C{random.random()}).
    """
    exponent = min(max(attempts, 1) - 1, 64)  # 2**64 * base is past any cap
    nominal = min(base * (2.0 ** exponent), maximum)
    return nominal / 2 + rand * nominal / 2


def next_attempt(now: float, attempts: int, age_from: float, *, base: float,
                 maximum: float, max_age: float, rand: float) -> float | None:
    """When to try again after the C{attempts}-th temporary failure at C{now},
    or C{None} when the message must be failed now (it has been failing since
    C{age_from} for C{max_age} seconds or more)."""
    deadline = age_from + max_age
    if now >= deadline:
        return None
    return min(now + backoff(attempts, base, maximum, rand), deadline)
