"""AUTH failure throttling (docs/smtp.md §4, docs/operations.md,
[auth_throttle]): per client key (an IPv4 address, an IPv6 /64) within a
window, a lock-out that also refuses new connections, constant work per
failure and bounded memory; the notice board that shows lock-outs to the
operator and applies their clears; and the protocol's use of it."""
from __future__ import annotations

import ipaddress
import time

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from mailgw.auth.throttle import FailureThrottle, SharedLockouts, throttle_key
from mailgw.config import AuthThrottleConfig
from mailgw.interfaces import StoreUnavailable
from mailgw.store.base import ThrottleClear
from tests.helpers import HOSTNAME, Harness, b64, make_store, seed_tenancy

LOCKED = f"421 {HOSTNAME} Too many authentication failures, try again later".encode()


def ipv4(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


class FailureThrottleTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.throttle = FailureThrottle(self.clock, max_failures=3, window=60, lockout=100,
                                        exempt=["10.0.0.0/8", "2001:db8:ff::/48"])

    def fail(self, address, times=1):
        return [self.throttle.record_failure(address) for _ in range(times)]

    def test_locks_after_max_failures_within_window(self):
        self.assertEqual(self.fail("192.0.2.1", 3), [False, False, True])
        self.assertTrue(self.throttle.locked("192.0.2.1"))
        self.assertTrue(self.throttle.locked("::ffff:192.0.2.1"))
        self.assertFalse(self.throttle.locked("192.0.2.2"))
        self.clock.advance(99)
        self.assertTrue(self.throttle.locked("192.0.2.1"))
        self.clock.advance(1)
        self.assertFalse(self.throttle.locked("192.0.2.1"))

    def test_failures_outside_window_do_not_add_up(self):
        self.fail("192.0.2.1", 2)
        self.clock.advance(61)
        self.assertFalse(self.throttle.record_failure("192.0.2.1"))
        self.assertFalse(self.throttle.locked("192.0.2.1"))
        self.assertEqual(self.fail("192.0.2.1", 2), [False, True])

    def test_exempt_networks(self):
        for address in ("10.1.1.1", "::ffff:10.1.1.1", "2001:db8:ff:1::1"):
            self.assertEqual(self.fail(address, 10), [False] * 10)
            self.assertFalse(self.throttle.locked(address))
        self.assertEqual(len(self.throttle), 0)

    def test_what_is_not_an_address_is_never_counted(self):
        for text in ("", "unknown", "192.0.2.300"):
            self.assertEqual(self.fail(text, 5), [False] * 5)
            self.assertFalse(self.throttle.locked(text))
        self.assertEqual(len(self.throttle), 0)

    def test_ipv4_mapped_and_zoned_addresses_count_with_their_address(self):
        self.fail("192.0.2.1")
        self.fail("::ffff:192.0.2.1")
        self.assertEqual(self.fail("fe80::1%eth0"), [False])
        self.assertEqual(self.fail("192.0.2.1"), [True])
        self.assertEqual(len(self.throttle), 2)

    def test_ipv6_addresses_of_one_prefix_lock_together(self):
        self.fail("2001:db8:1:2::1")
        self.fail("2001:db8:1:2:ffff:ffff:ffff:ffff")
        self.assertEqual(self.fail("2001:db8:1:2::99"), [True])
        self.assertTrue(self.throttle.locked("2001:db8:1:2::abcd"))
        self.assertFalse(self.throttle.locked("2001:db8:1:3::1"))
        self.assertFalse(self.throttle.locked("2001:db8:1::1"))
        self.assertEqual(self.throttle.lockouts(), [("2001:db8:1:2::/64", 100.0, 3)])

    def test_ipv6_prefix_is_configurable(self):
        wide = FailureThrottle(self.clock, max_failures=2, ipv6_prefix=48)
        wide.record_failure("2001:db8:1:2::1")
        self.assertTrue(wide.record_failure("2001:db8:1:ffff::1"))
        self.assertFalse(wide.locked("2001:db8:2::1"))
        exact = FailureThrottle(self.clock, max_failures=2, ipv6_prefix=128)
        exact.record_failure("2001:db8::1")
        self.assertFalse(exact.record_failure("2001:db8::2"))
        self.assertTrue(exact.record_failure("2001:db8::1"))
        self.assertEqual([k for k, _, _ in wide.lockouts() + exact.lockouts()],
                         ["2001:db8:1::/48", "2001:db8::1"])

    def test_memory_is_bounded_at_max_entries(self):
        throttle = FailureThrottle(self.clock, max_failures=3, window=600, max_entries=1000)
        for i in range(5000):
            throttle.record_failure(ipv4(0xC6336400 + i))
            throttle.record_failure(f"2001:db8:{i:x}::1")
            self.assertLessEqual(len(throttle), 1000)
        self.assertEqual(len(throttle), 1000)
        self.assertTrue(all(len(times) < 3 for times in throttle._counting.values()))

    def test_the_least_recently_failed_key_is_forgotten_first(self):
        throttle = FailureThrottle(self.clock, max_failures=3, window=600, max_entries=3)
        for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.1"):
            throttle.record_failure(address)
        throttle.record_failure("192.0.2.4")  # forgets 192.0.2.2, the least recent
        self.assertEqual(len(throttle), 3)
        self.assertTrue(throttle.record_failure("192.0.2.1"))  # kept its two failures
        self.assertEqual([throttle.record_failure("192.0.2.2") for _ in range(3)],
                         [False, False, True])  # counted from nothing again

    def test_lockouts_are_forgotten_only_when_nothing_else_is_left(self):
        throttle = FailureThrottle(self.clock, max_failures=2, window=600, lockout=900,
                                   max_entries=3)
        throttle.record_failure("192.0.2.1")
        self.assertTrue(throttle.record_failure("192.0.2.1"))
        for i in range(2, 10):  # a flood of new addresses
            throttle.record_failure(f"192.0.2.{i}")
        self.assertTrue(throttle.locked("192.0.2.1"))
        for address in ("192.0.2.20", "192.0.2.21"):
            throttle.record_failure(address)
            throttle.record_failure(address)
        self.assertEqual(len(throttle), 3)
        self.assertEqual([k for k, _, _ in throttle.lockouts()],
                         ["192.0.2.1", "192.0.2.20", "192.0.2.21"])
        throttle.record_failure("192.0.2.30")  # only lock-outs left: the earliest goes
        self.assertFalse(throttle.locked("192.0.2.1"))
        self.assertTrue(throttle.locked("192.0.2.20"))

    def test_expired_keys_are_forgotten_a_few_at_a_time(self):
        for i in range(10):
            self.fail(f"192.0.2.{i}")
        self.fail("198.51.100.1", 3)
        self.assertEqual(len(self.throttle), 11)
        self.clock.advance(100)  # every failure and the lock-out have expired
        sizes = []
        for i in range(6):
            self.fail(f"203.0.113.{i}")
            sizes.append(len(self.throttle))
        # each failure forgets at most two stale keys of each table
        self.assertEqual(sizes, [9, 8, 7, 6, 5, 6])
        self.assertEqual(self.throttle.lockouts(), [])

    def test_cost_of_a_failure_does_not_grow_with_the_keys_tracked(self):
        def cost(tracked: int) -> float:
            throttle = FailureThrottle(Clock(), max_failures=5, window=600,
                                       max_entries=tracked)
            for i in range(tracked):
                throttle.record_failure(ipv4(0x0B000000 + i))
            self.assertEqual(len(throttle), tracked)
            best = float("inf")
            for run in range(5):  # new keys each run: each one evicts another
                fresh = [ipv4(0xC0000000 + run * 1000 + i) for i in range(1000)]
                start = time.perf_counter()
                for address in fresh:
                    throttle.record_failure(address)
                best = min(best, time.perf_counter() - start)
            return best
        small, large = cost(1_000), cost(100_000)
        # a sweep of the table per failure would make this a factor of about 100
        self.assertLess(large, 10 * small + 0.005, (small, large))

    def test_lockouts_in_force_with_their_failures(self):
        self.fail("192.0.2.1", 3)
        self.clock.advance(10)
        self.fail("2001:db8:1:2::7", 3)
        self.assertEqual(self.fail("192.0.2.1", 2), [True, True])  # counted, not extended
        self.assertEqual(self.throttle.lockouts(),
                         [("192.0.2.1", 100.0, 5), ("2001:db8:1:2::/64", 110.0, 3)])
        self.clock.advance(90)
        self.assertEqual(self.throttle.lockouts(), [("2001:db8:1:2::/64", 110.0, 3)])

    def test_on_lockout_hears_of_each_lockout_once(self):
        heard = []
        self.throttle.on_lockout = lambda *a: heard.append(a)
        self.fail("192.0.2.1", 5)
        self.clock.advance(5)
        self.fail("2001:db8::1", 3)
        self.assertEqual(heard, [("192.0.2.1", 100.0, 3), ("2001:db8::/64", 105.0, 3)])

    def test_clear_lifts_the_lockout_and_forgets_failures(self):
        self.fail("192.0.2.1", 3)
        self.assertTrue(self.throttle.clear("192.0.2.1"))
        self.assertFalse(self.throttle.locked("192.0.2.1"))
        self.assertEqual(self.fail("192.0.2.1", 2), [False, False])
        self.assertTrue(self.throttle.clear("::ffff:192.0.2.1"))
        self.assertEqual(self.fail("192.0.2.1", 2), [False, False])
        self.assertFalse(self.throttle.clear("192.0.2.99"))
        self.assertFalse(self.throttle.clear("10.1.1.1"))  # exempt: never tracked
        self.assertEqual(len(self.throttle), 1)

    def test_clear_by_ipv6_address_or_network(self):
        for text in ("2001:db8:1:2::/64", "2001:db8:1:2::5", "2001:db8:1:2:3::/80"):
            self.fail("2001:db8:1:2::1", 3)
            self.assertTrue(self.throttle.clear(text), text)
            self.assertFalse(self.throttle.locked("2001:db8:1:2::1"), text)

    def test_clear_refuses_what_names_no_one_key(self):
        for text in ("nonsense", "", "192.0.2.0/24", "2001:db8::/48", "::ffff:0:0/96",
                     "192.0.2.1/33"):
            self.assertRaises(ValueError, self.throttle.clear, text)

    def test_throttle_key_names_keys_as_lockouts_does(self):
        cases = {"192.0.2.1": "192.0.2.1", "::ffff:192.0.2.1": "192.0.2.1",
                 "192.0.2.1/32": "192.0.2.1", " 2001:DB8:1:2::5 ": "2001:db8:1:2::/64",
                 "2001:db8:1:2::/64": "2001:db8:1:2::/64", "::1": "::/64"}
        for text, key in cases.items():
            self.assertEqual(throttle_key(text), key, text)
        self.assertEqual(throttle_key("2001:db8:1:2::5", 48), "2001:db8:1::/48")
        self.assertEqual(throttle_key("2001:db8:1:2::5", 128), "2001:db8:1:2::5")

    def test_from_config(self):
        config = AuthThrottleConfig(max_failures=4, window=30.0, lockout=60.0,
                                    exempt=("10.0.0.0/8",), ipv6_prefix=56,
                                    anonymous_max_failures=40)
        for throttle, most in ((FailureThrottle.from_config(self.clock, config), 4),
                               (FailureThrottle.anonymous_from_config(self.clock, config), 40)):
            self.assertEqual((throttle.max_failures, throttle.window, throttle.lockout,
                              throttle.ipv6_prefix), (most, 30.0, 60.0, 56))
            self.assertFalse(any(throttle.record_failure("10.0.0.1") for _ in range(50)))


class FakeBoard:
    """The notice-board methods of the store, answered at once from lists
    (or failing with L{StoreUnavailable} while C{down})."""

    def __init__(self):
        self.recorded, self.forgotten, self.clears = [], [], []
        self.down = False
        self.pending = None

    def _answer(self, value):
        if self.down:
            return defer.fail(StoreUnavailable("database down"))
        if self.pending is not None:
            d, self.pending = self.pending, None
            return d.addCallback(lambda _: value)
        return defer.succeed(value)

    def record_lockout(self, address, node, kind, until, failures):
        self.recorded.append((address, node, kind, until, failures))
        return self._answer(None)

    def latest_throttle_clear(self):
        return self._answer(max((c.id for c in self.clears), default=0))

    def throttle_clears_after(self, clear_id):
        return self._answer([c for c in self.clears if c.id > clear_id])

    def forget_lockouts(self, node):
        self.forgotten.append(node)
        return self._answer(None)


class SharedLockoutsTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = FakeBoard()
        self.key = FailureThrottle(self.clock, max_failures=2, lockout=100)
        self.anonymous = FailureThrottle(self.clock, max_failures=3, lockout=100)
        self.board = SharedLockouts(self.store, self.clock,
                                    {"key": self.key, "anonymous": self.anonymous},
                                    node="node-a")
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def messages(self):
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.logged if e.get("log_namespace", "").startswith(
            "mailgw.auth.throttle")]

    def lock(self, throttle, address, times):
        for _ in range(times):
            throttle.record_failure(address)

    def test_lockouts_are_recorded_only_while_running(self):
        self.lock(self.key, "192.0.2.1", 2)
        self.assertEqual(self.store.recorded, [])
        self.board.startService()
        self.lock(self.key, "192.0.2.2", 2)
        self.lock(self.anonymous, "2001:db8::9", 3)
        self.assertEqual(self.store.recorded,
                         [("192.0.2.2", "node-a", "key", 100.0, 2),
                          ("2001:db8::/64", "node-a", "anonymous", 100.0, 3)])
        self.assertIn("192.0.2.2 locked out for 100 s after 2 authentication failures "
                      "(key throttle)", self.messages())

    def test_a_store_that_fails_to_record_is_logged(self):
        self.board.startService()
        self.store.down = True
        self.lock(self.key, "192.0.2.1", 2)
        self.assertTrue(self.key.locked("192.0.2.1"))  # the throttle decides alone
        self.assertIn("could not record the lock-out of 192.0.2.1 in the store: "
                      "database down", self.messages())

    def test_clears_after_start_apply_to_every_throttle(self):
        self.store.clears.append(ThrottleClear(7, "192.0.2.1", 0.0))  # before this node
        self.lock(self.key, "192.0.2.1", 2)
        self.lock(self.anonymous, "192.0.2.1", 3)
        self.board.startService()
        self.assertEqual(self.board.last_clear, 7)
        self.clock.advance(1)
        self.assertTrue(self.key.locked("192.0.2.1"))
        self.store.clears.append(ThrottleClear(8, "192.0.2.1", 1.0))
        self.clock.advance(1)
        self.assertFalse(self.key.locked("192.0.2.1"))
        self.assertFalse(self.anonymous.locked("192.0.2.1"))
        self.assertEqual(self.board.last_clear, 8)
        self.assertIn("throttle cleared for 192.0.2.1 by the operator: forgotten by the "
                      "key and anonymous throttle", self.messages())
        self.lock(self.key, "192.0.2.1", 2)
        self.clock.advance(1)  # a clear is applied once
        self.assertTrue(self.key.locked("192.0.2.1"))

    def test_ipv6_clear_by_network_text(self):
        self.board.startService()
        self.lock(self.key, "2001:db8:1:2::1", 2)
        self.store.clears += [ThrottleClear(1, "2001:db8::/32", 1.0),
                              ThrottleClear(2, "2001:db8:1:2::/64", 1.0)]
        self.clock.advance(1)
        self.assertFalse(self.key.locked("2001:db8:1:2::1"))
        self.assertEqual(self.board.last_clear, 2)
        self.assertIn("cannot clear 2001:db8::/32: 2001:db8::/32 holds several throttled "
                      "addresses: name at most a /64", self.messages())

    def test_an_outage_is_logged_once_and_polling_goes_on(self):
        self.board.startService()
        self.lock(self.key, "192.0.2.1", 2)
        self.store.down = True
        self.store.clears.append(ThrottleClear(1, "192.0.2.1", 1.0))
        self.clock.pump([1] * 5)
        self.assertTrue(self.key.locked("192.0.2.1"))
        self.store.down = False
        self.clock.advance(1)
        self.assertFalse(self.key.locked("192.0.2.1"))
        outage = [m for m in self.messages() if "throttle clears" in m]
        self.assertEqual(outage, [
            "cannot read the operator's throttle clears, trying every 1 s: database down",
            "the operator's throttle clears are readable again"])

    def test_a_bug_is_logged_with_its_traceback_and_polling_goes_on(self):
        self.board.startService()
        self.store.throttle_clears_after = lambda clear_id: defer.fail(KeyError("bug"))
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertTrue(self.board._loop.running)

    def test_stop_waits_for_the_poll_in_flight_then_forgets_this_node(self):
        self.board.startService()
        gate = self.store.pending = defer.Deferred()
        self.clock.advance(1)
        stopped = self.board.stopService()
        self.assertNoResult(stopped)
        self.assertEqual(self.store.forgotten, [])
        gate.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.store.forgotten, ["node-a"])

    def test_stop_forgets_this_nodes_rows_and_never_fails(self):
        self.board.startService()
        self.successResultOf(self.board.stopService())
        self.assertEqual(self.store.forgotten, ["node-a"])
        self.assertFalse(self.board._loop.running)
        self.board.startService()
        self.store.down = True
        self.assertIsNone(self.successResultOf(self.board.stopService()))
        self.lock(self.key, "192.0.2.1", 2)
        self.assertEqual(self.store.recorded, [])  # stopped: nothing more is recorded

    def test_default_node_names_the_machine_and_the_process(self):
        import os
        import socket
        board = SharedLockouts(self.store, self.clock, {})
        self.assertEqual(board.node, f"{socket.gethostname()}/{os.getpid()}")


class ProtocolThrottleTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self)
        yield seed_tenancy(self.store)
        self.h = Harness(self, self.store)
        self.h.guard.throttle = FailureThrottle(self.h.clock, max_failures=3, window=600,
                                                lockout=900)
        # keyless attempts (RCPT before AUTH) have their own budget
        self.h.guard.anonymous = FailureThrottle(self.h.clock, max_failures=3, window=600,
                                                 lockout=900)
        self.h.connect()

    @defer.inlineCallbacks
    def test_third_failure_locks_out_and_new_connections_are_refused(self):
        bad = "AUTH PLAIN " + b64("\0u\0" + "Z" * 24)
        replies = yield self.h.lines(bad, bad)
        self.assertEqual(replies, [b"535 Invalid credential"] * 2)
        self.assertEqual((yield self.h.lines(bad)), [LOCKED])
        self.assertTrue(self.h.transport.disconnecting)
        other = Harness(self, self.store)
        other.factory = self.h.factory
        self.assertEqual(other.connect(), [LOCKED])
        self.h.clock.advance(900)
        third = Harness(self, self.store)
        third.factory = self.h.factory
        self.assertTrue(third.connect()[0].startswith(b"220 "))

    @defer.inlineCallbacks
    def test_unauthenticated_rcpt_counts(self):
        yield self.h.lines("EHLO c", "MAIL FROM:<a@b.example>")
        replies = yield self.h.lines("RCPT TO:<x@y.example>", "RCPT TO:<x@y.example>",
                                     "RCPT TO:<x@y.example>")
        self.assertEqual(replies, [b"530 Authentication required"] * 2 + [LOCKED])

    @defer.inlineCallbacks
    def test_mixed_mechanisms_count_together(self):
        replies = yield self.h.lines("AUTH PLAIN " + b64("nonuls"), "AUTH LOGIN", b64("u"),
                                     b64("wrong"), "AUTH CRAM-MD5", b64("acme/web 00"))
        self.assertEqual(replies[0], b"501 Malformed AUTH PLAIN response")
        self.assertEqual(replies[-1], LOCKED)
