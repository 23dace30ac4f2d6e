"""The retry schedule: exponential backoff with equal jitter, capped, and a
deadline that turns the last temporary failure into a permanent one. Pure
functions; a Clock walks a message through its whole schedule."""
from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from mailgw.relay.schedule import backoff, next_attempt

BASE, MAXIMUM, MAX_AGE = 60.0, 3600.0, 5 * 86400.0


class BackoffTests(unittest.SynchronousTestCase):
    def test_doubles_then_caps(self):
        highest = [backoff(n, BASE, MAXIMUM, rand=0.999999) for n in range(1, 10)]
        self.assertEqual([round(x) for x in highest],
                         [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600])

    def test_equal_jitter_bounds(self):
        for attempts in (1, 3, 8, 500):
            nominal = min(BASE * 2 ** (attempts - 1), MAXIMUM)
            self.assertEqual(backoff(attempts, BASE, MAXIMUM, rand=0.0), nominal / 2)
            self.assertEqual(backoff(attempts, BASE, MAXIMUM, rand=0.5), nominal * 0.75)
            self.assertLess(backoff(attempts, BASE, MAXIMUM, rand=0.999), nominal)

    def test_huge_attempt_counts_do_not_overflow(self):
        self.assertEqual(backoff(10 ** 6, BASE, MAXIMUM, rand=0.0), MAXIMUM / 2)
        self.assertEqual(backoff(0, BASE, MAXIMUM, rand=0.0), BASE / 2)


class ScheduleWithClockTests(unittest.SynchronousTestCase):
    def walk(self, rand):
        """Fail every attempt, waiting on a Clock for each retry; the times of
        the attempts and the time the message was given up."""
        clock = Clock()
        clock.advance(1_000_000)
        queued_at = clock.seconds()
        attempts, times = 0, []
        while True:
            times.append(clock.seconds())
            attempts += 1
            when = next_attempt(clock.seconds(), attempts, queued_at, base=BASE,
                                maximum=MAXIMUM, max_age=MAX_AGE, rand=rand)
            if when is None:
                return times, clock.seconds() - queued_at
            self.assertGreater(when, clock.seconds())
            clock.advance(when - clock.seconds())

    def test_gives_up_exactly_at_max_age(self):
        for rand in (0.0, 0.3, 0.99):
            times, age = self.walk(rand)
            self.assertEqual(age, MAX_AGE)
            gaps = [b - a for a, b in zip(times, times[1:])]
            self.assertTrue(all(0 < g <= MAXIMUM for g in gaps), gaps)

    def test_number_of_attempts_over_five_days(self):
        times, _ = self.walk(rand=0.999999)
        # the first attempt; 60+120+...+1920 s (6 retries, 3780 s); hourly
        # retries while a whole hour fits before the 5-day deadline; and a
        # last one pulled in to fall on the deadline itself
        hourly = (int(MAX_AGE) - 3780) // 3600
        self.assertEqual(len(times), 1 + 6 + hourly + 1)
        self.assertEqual(times[-1] - times[0], MAX_AGE)
        self.assertAlmostEqual(times[1] - times[0], 60, places=3)

    def test_retry_clock_restarted_by_release(self):
        # failing for longer than max_age since the enqueue, but released an
        # hour ago: retries continue
        now = 10 * 86400.0
        self.assertIsNone(next_attempt(now, 40, 0.0, base=BASE, maximum=MAXIMUM,
                                       max_age=MAX_AGE, rand=0.5))
        self.assertEqual(next_attempt(now, 40, now - 3600, base=BASE, maximum=MAXIMUM,
                                      max_age=MAX_AGE, rand=0.5), now + 2700)

    def test_last_retry_pulled_in_to_the_deadline(self):
        when = next_attempt(MAX_AGE - 100, 30, 0.0, base=BASE, maximum=MAXIMUM,
                            max_age=MAX_AGE, rand=0.5)
        self.assertEqual(when, MAX_AGE)
