"""The metrics: bounded verb labels, and L{TimedStore}, which provides every
store interface with each method written out and each operation's latency
observed under its own name when its Deferred fires."""
from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.interface import Method
from zope.interface.verify import verifyObject

from mailgw import metrics
from mailgw.interfaces import IAdmin, IDirectory, IQueue, IRelayQueue, IStore
from mailgw.metrics import Metrics, TimedStore
from mailgw.store.sqlite import SQLiteStore

STORE_METHODS = sorted(name for name, description in IStore.namesAndDescriptions(all=True)
                       if isinstance(description, Method))


class FakeClock:
    """C{perf_counter} that moves only when told."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


class RecordingStore:
    """Answers any call with a Deferred the test fires, and records it."""

    engine = "fake"

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            d = defer.Deferred()
            self.calls.append((name, args, kwargs, d))
            return d
        return call


class MetricsTests(unittest.TestCase):
    def test_unknown_verbs_count_as_other(self):
        m = Metrics()
        m.command("EHLO")
        m.command("EHLO")
        m.command("XYZZY")
        sample = m.registry.get_sample_value
        self.assertEqual(sample("mailgw_smtp_commands_total", {"verb": "EHLO"}), 2)
        self.assertEqual(sample("mailgw_smtp_commands_total", {"verb": "other"}), 1)
        self.assertIsNone(sample("mailgw_smtp_commands_total", {"verb": "XYZZY"}))


class TimedStoreTests(unittest.TestCase):
    def setUp(self):
        self.clock = FakeClock()
        self.patch(metrics, "time", self.clock)
        self.metrics = Metrics()
        self.store = RecordingStore()
        self.timed = TimedStore(self.store, self.metrics)

    def count(self, operation):
        return self.metrics.registry.get_sample_value(
            "mailgw_store_seconds_count", {"operation": operation})

    def total(self, operation):
        return self.metrics.registry.get_sample_value(
            "mailgw_store_seconds_sum", {"operation": operation})

    def test_provides_every_store_interface(self):
        store = SQLiteStore(os.path.join(self.mktemp(), "mailgw.sqlite3"), reactor)
        timed = TimedStore(store, self.metrics)
        for interface in (IStore, IDirectory, IQueue, IAdmin, IRelayQueue):
            self.assertTrue(verifyObject(interface, timed), interface)
        self.assertEqual(timed.engine, "sqlite")

    def test_every_method_is_written_out(self):
        self.assertGreater(len(STORE_METHODS), 40)
        for name in STORE_METHODS:
            self.assertIn(name, vars(TimedStore), name)
            self.assertEqual(getattr(TimedStore, name).__name__, name)
        self.assertFalse(hasattr(TimedStore, "__getattr__"))

    def test_each_method_calls_its_namesake_and_is_timed_under_its_name(self):
        for name in STORE_METHODS:
            d = getattr(self.timed, name)("argument", flag=True)
            called, args, kwargs, pending = self.store.calls.pop()
            self.assertEqual((called, args, kwargs), (name, ("argument",), {"flag": True}))
            pending.callback(name)
            self.assertEqual(self.successResultOf(d), name)
            self.assertEqual(self.count(name), 1, name)
        self.assertEqual(self.store.calls, [])

    def test_latency_until_the_deferred_fires(self):
        d = self.timed.server_by_id(3)
        self.assertEqual(self.count("server_by_id"), 0)  # not yet observed
        self.clock.now += 0.25
        self.store.calls[0][3].callback("server")
        self.assertEqual(self.successResultOf(d), "server")
        self.assertEqual(self.count("server_by_id"), 1)
        self.assertAlmostEqual(self.total("server_by_id"), 0.25)

    def test_failures_are_timed_and_passed_on(self):
        d = self.timed.enqueue("envelope", "body")
        self.clock.now += 0.5
        self.store.calls[0][3].errback(RuntimeError("down"))
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(self.count("enqueue"), 1)
        self.assertAlmostEqual(self.total("enqueue"), 0.5)

    def test_only_operations_that_ran_have_a_series(self):
        self.assertIsNone(self.count("ping"))
        d = self.timed.ping()
        self.store.calls[0][3].callback(None)
        self.successResultOf(d)
        self.assertEqual(self.count("ping"), 1)
        self.assertIsNone(self.count("queue_counts"))

    def test_each_gateway_counts_in_its_own_registry(self):
        other = Metrics()
        d = TimedStore(self.store, other).ping()
        self.store.calls.pop()[3].callback(None)
        self.successResultOf(d)
        self.assertIsNone(self.count("ping"))
        self.assertEqual(other.registry.get_sample_value(
            "mailgw_store_seconds_count", {"operation": "ping"}), 1)
