"""The open files limit at start: raised to the hard limit, and one warning
when the connection caps and the reserve do not fit under it."""
from __future__ import annotations

import sys

from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from mailgw import descriptors, tap
from mailgw.config import (
    Config, DatabaseConfig, HTTPAPIConfig, ListenerConfig, RelayConfig,
)
from mailgw.descriptors import (
    RESERVE, SQLITE_DESCRIPTORS, DescriptorBudget, budget, check_descriptors,
    raise_open_files_limit, shortfall,
)

INFINITY = -1


class FakeResource:
    """The part of the C{resource} module the check uses."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = INFINITY

    def __init__(self, soft, hard, refuse=False):
        self.limits = (soft, hard)
        self.refuse = refuse
        self.set = []

    def getrlimit(self, which):
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which, limits):
        assert which == self.RLIMIT_NOFILE
        self.set.append(limits)
        if self.refuse:
            raise ValueError("not allowed to raise maximum limit")
        self.limits = limits


def gateway(*caps, api=None, url="postgresql://u@h/db", pool_size=4, relay=True):
    return Config(
        hostname="mx.test",
        listeners=tuple(ListenerConfig(endpoint=f"tcp:{2525 + i}", max_connections=cap)
                        for i, cap in enumerate(caps)),
        http_api=None if api is None else HTTPAPIConfig(max_connections=api),
        database=DatabaseConfig(url=url, pool_size=pool_size),
        relay=RelayConfig(enabled=relay, concurrency=10))


class BudgetTests(unittest.SynchronousTestCase):
    def test_every_cap_and_the_reserve(self):
        needed = budget(gateway(1000, 500, api=200, pool_size=4))
        self.assertEqual(needed.caps, (("listeners[0].max_connections", 1000),
                                       ("listeners[1].max_connections", 500),
                                       ("http_api.max_connections", 200)))
        self.assertEqual(needed.reserve, RESERVE + 5 + 10)
        self.assertEqual(needed.total, 1700 + RESERVE + 15)

    def test_a_postgresql_pool_of_one_is_a_reader_and_the_writers_two_sessions(self):
        """Three connections, and the duplicate of the pipeline session's
        socket."""
        self.assertEqual(budget(gateway(100, pool_size=1, relay=False)).reserve, RESERVE + 4)
        self.assertEqual(budget(gateway(100, pool_size=6, relay=False)).reserve, RESERVE + 7)

    def test_sqlite_no_api_no_relay(self):
        needed = budget(gateway(100, url="sqlite:/x.sqlite3", relay=False))
        self.assertEqual(needed.caps, (("listeners[0].max_connections", 100),))
        self.assertEqual(needed.reserve, RESERVE + SQLITE_DESCRIPTORS)

    def test_fits(self):
        needed = DescriptorBudget((("listeners[0].max_connections", 900),), 100)
        self.assertIsNone(shortfall(needed, 1000))
        self.assertIsNone(shortfall(needed, None))  # no limit at all

    def test_does_not_fit(self):
        needed = DescriptorBudget((("listeners[0].max_connections", 1000),
                                   ("http_api.max_connections", 1000)), 78)
        warning = shortfall(needed, 1024)
        self.assertEqual(
            warning, "the connection caps need up to 2078 file descriptors "
            "(listeners[0].max_connections = 1000, http_api.max_connections = 1000, and 78 "
            "for the store, logs and relay) but the open files limit is 1024: lower those "
            "max_connections by 1054 in all, or raise the hard limit (ulimit -Hn, systemd "
            "LimitNOFILE=)")


class RaiseLimitTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, level):
        return [formatEvent(e) for e in self.events
                if e.get("log_namespace") == descriptors.__name__ and e["log_level"] == level]

    def test_soft_raised_to_hard(self):
        fake = FakeResource(1024, 524288)
        self.assertEqual(raise_open_files_limit(fake), 524288)
        self.assertEqual(fake.set, [(524288, 524288)])
        self.assertEqual(self.lines(LogLevel.info),
                         ["open files limit raised from 1024 to 524288"])

    def test_already_at_the_hard_limit(self):
        fake = FakeResource(4096, 4096)
        self.assertEqual(raise_open_files_limit(fake), 4096)
        self.assertEqual(fake.set, [])

    def test_refused_keeps_the_soft_limit(self):
        fake = FakeResource(1024, INFINITY, refuse=True)
        self.assertEqual(raise_open_files_limit(fake), 1024)
        [line] = self.lines(LogLevel.warn)
        self.assertIn("could not raise the open files limit from 1024", line)

    def test_unlimited(self):
        self.assertIsNone(raise_open_files_limit(FakeResource(INFINITY, INFINITY)))

    def test_check_warns_once_with_the_numbers(self):
        fake = FakeResource(256, 1024)
        warning = check_descriptors(gateway(1000, api=50, relay=False), fake)
        self.assertEqual(self.lines(LogLevel.warn), [warning])
        self.assertIn("need up to 1119 file descriptors", warning)
        self.assertIn("open files limit is 1024", warning)
        self.assertIn("by 95 in all", warning)

    def test_check_is_quiet_when_everything_fits(self):
        self.assertIsNone(check_descriptors(gateway(100), FakeResource(4096, 4096)))
        self.assertEqual(self.lines(LogLevel.warn), [])

    def test_twistd_plugin_checks_before_building_the_service(self):
        calls = []
        config = gateway(100)
        self.patch(descriptors, "check_descriptors", lambda c: calls.append(("check", c)))
        from mailgw import service
        self.patch(service, "build_service",
                   lambda c, reactor: calls.append(("build", c)) or "the service")
        self.addCleanup(sys.setswitchinterval, sys.getswitchinterval())
        self.assertEqual(tap.makeService({"config_value": config}), "the service")
        self.assertEqual(calls, [("check", config), ("build", config)])
        # the store's writer thread gets the interpreter within half a millisecond
        self.assertAlmostEqual(sys.getswitchinterval(), tap.SWITCH_INTERVAL)
        self.assertLess(tap.SWITCH_INTERVAL, 0.005)
