"""The queue runner on a real store, delivering to the sink over loopback:
as a smarthost and as an MX host found through a twisted.names server; and
refusing MX hosts and address literals at local addresses unless allowed.

It runs on SQLite, and again on PostgreSQL when the test run has one
(C{MAILGW_TEST_POSTGRES_ADMIN}; skipped otherwise, failed under CI=true).
Time is a Clock set to the wall clock, so nothing sleeps: a retry "an hour
later" is C{clock.advance(3600)}.
"""
from __future__ import annotations

import email
import email.policy
import random
from dataclasses import replace

from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailgw.config import RelayConfig
from mailgw.model import DeliveryAttempt
from mailgw.relay.mx import MXResolver
from mailgw.relay.service import RelayService
from mailgw.store.base import CHUNK_SIZE
from tests.relay.fixtures import BODY, PostgresFixture, StoreFixture
from tests.relay.sink import Sink, text_body
from tests.relay.zone import Zone, a, aaaa, mx, serve


def parse(body: bytes):
    return email.message_from_bytes(body, policy=email.policy.default)


class RelayContract(StoreFixture):
    """The service end to end over loopback, on every engine."""

    @defer.inlineCallbacks
    def setUp(self):
        yield StoreFixture.setUp(self)
        self.sink = Sink()
        self.port = self.sink.listen(self)
        self.services = []

    def relay(self, node_id="node-a", **overrides):
        settings = dict(smarthost=f"127.0.0.1:{self.port}", tls="none", retry_base=60.0,
                        retry_max=600.0, max_queue_age=3600.0, lease=300.0,
                        poll_interval=5.0, concurrency=4)
        settings.update(overrides)
        service = RelayService(self.store, RelayConfig(**settings), reactor, node_id,
                               "relay.mailgw.test", clock=self.clock,
                               rand=random.Random(1), stop_grace=10.0)
        self.services.append(service)
        self.addCleanup(self._stop, service)
        return service

    def _stop(self, service):
        if service.running:
            d = service.stopService()
            self.clock.advance(service.stop_grace)
            return d

    def mx_relay(self, records, **overrides):
        """A relay to MX hosts found in C{records}; the sink is on loopback,
        so local destinations are allowed unless a test says otherwise."""
        server = serve(self, Zone(records))
        overrides.setdefault("allow_local_destinations", True)
        return self.relay(smarthost="", resolver=server, mx_port=self.port, **overrides)

    @defer.inlineCallbacks
    def entry(self, entry_id):
        return (yield self.store.get_entry(entry_id))

    # -- delivery ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_delivers_byte_exact_and_records_the_attempt(self):
        ids = yield self.enqueue()
        yield self.relay().run_once()
        [message] = self.sink.messages
        self.assertEqual((message.mail_from, message.rcpts), ("app@good.example",
                                                              ["to@dest.test"]))
        self.assertEqual(message.data, BODY)
        entry = yield self.entry(ids["to@dest.test"])
        self.assertEqual((entry.status, entry.attempts, entry.last_error), ("sent", 1, None))
        [attempt] = yield self.store.get_attempts(entry.id)
        self.assertEqual((attempt.code, attempt.text, attempt.node, attempt.attempted_at),
                         (250, "250 2.0.0 Ok: queued", "node-a", self.clock.seconds()))
        self.assertEqual(attempt.remote_host, "127.0.0.1")
        self.assertEqual(self.sink.connections[0].commands[-1], b"QUIT")

    @defer.inlineCallbacks
    def test_one_connection_carries_several_messages(self):
        yield self.enqueue(rcpts=("a@one.test", "b@two.test"))
        yield self.enqueue(rcpts=("c@three.test",))
        large = b"From: app@good.example\r\n\r\n" + text_body(3 * CHUNK_SIZE, seed=3)
        yield self.enqueue(body=large)
        yield self.relay().run_once()
        self.assertEqual(len(self.sink.connections), 1)
        self.assertEqual([m.rcpts for m in self.sink.messages],
                         [["a@one.test", "b@two.test"], ["c@three.test"], ["to@dest.test"]])
        self.assertEqual(self.sink.messages[2].data, large)
        verbs = [c.split(b" ")[0] for c in self.sink.connections[0].commands]
        self.assertEqual(verbs.count(b"RSET"), 2)
        self.assertEqual({e.status for e in (yield self.store.list_entries())}, {"sent"})

    @defer.inlineCallbacks
    def test_temporary_failure_then_success(self):
        ids = yield self.enqueue()
        self.sink.data_replies = [b"451 4.3.0 try again later"]
        relay = self.relay()
        yield relay.run_once()
        entry = yield self.entry(ids["to@dest.test"])
        self.assertEqual((entry.status, entry.attempts, entry.last_error),
                         ("queued", 1, "451 4.3.0 try again later"))
        delay = entry.next_attempt_at - self.clock.seconds()
        self.assertTrue(30 <= delay < 60, delay)
        yield relay.run_once()  # not due yet
        self.assertEqual(len(self.sink.messages), 1)
        self.clock.advance(delay)
        yield relay.run_once()
        entry = yield self.entry(entry.id)
        self.assertEqual((entry.status, entry.attempts), ("sent", 2))
        self.assertEqual([a.code for a in (yield self.store.get_attempts(entry.id))],
                         [451, 250])
        self.assertEqual(len(self.sink.accepted), 1)

    @defer.inlineCallbacks
    def test_permanent_failure_bounces_to_the_sender(self):
        ids = yield self.enqueue(rcpts=("gone@dest.test", "ok@dest.test"))
        self.sink.rcpt_replies["gone@dest.test"] = b"550 5.1.1 <gone@dest.test>: no such user"
        relay = self.relay()
        yield relay.run_once()
        gone = yield self.entry(ids["gone@dest.test"])
        self.assertEqual((gone.status, gone.attempts), ("failed", 1))
        self.assertEqual((yield self.entry(ids["ok@dest.test"])).status, "sent")
        [bounce] = [e for e in (yield self.store.list_entries()) if e.mail_from == ""]
        self.assertEqual((bounce.rcpt_to, bounce.server, bounce.credential_id, bounce.status),
                         ("app@good.example", "acme/web", None, "queued"))
        report = parse((yield self.store.read_body(bounce.message_id)))
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        recipient = list(report.iter_parts())[1].get_payload()[1]
        self.assertEqual((recipient["Final-Recipient"], recipient["Status"]),
                         ("rfc822; gone@dest.test", "5.1.1"))
        yield relay.run_once()  # the bounce itself goes out, from <>
        self.assertEqual(self.sink.messages[-1].mail_from, "")
        self.assertEqual(self.sink.messages[-1].rcpts, ["app@good.example"])
        self.assertEqual((yield self.entry(bounce.id)).status, "sent")

    @defer.inlineCallbacks
    def test_null_sender_fails_without_a_bounce(self):
        ids = yield self.enqueue(mail_from="")
        self.sink.data_replies = [b"554 5.7.1 rejected"]
        yield self.relay().run_once()
        self.assertEqual((yield self.entry(ids["to@dest.test"])).status, "failed")
        self.assertEqual(len((yield self.store.list_entries())), 1)

    @defer.inlineCallbacks
    def test_gives_up_after_max_queue_age(self):
        ids = yield self.enqueue()
        self.sink.greeting = b"421 4.3.2 busy"
        relay = self.relay(max_queue_age=600.0)
        for _ in range(30):
            entry = yield self.entry(ids["to@dest.test"])
            if entry.status != "queued":
                break
            self.clock.advance(max(0, entry.next_attempt_at - self.clock.seconds()))
            yield relay.run_once()
        self.assertEqual(entry.status, "failed")
        self.assertLessEqual(entry.created_at + 600, self.clock.seconds())
        self.assertGreater(entry.attempts, 3)
        [bounce] = [e for e in (yield self.store.list_entries()) if e.mail_from == ""]
        report = parse((yield self.store.read_body(bounce.message_id)))
        recipient = list(report.iter_parts())[1].get_payload()[1]
        self.assertEqual(recipient["Status"], "4.4.7")

    @defer.inlineCallbacks
    def test_hold_then_release_delivers(self):
        ids = yield self.enqueue(status="held", hold_reason="send limit reached")
        relay = self.relay()
        yield relay.run_once()
        self.assertEqual(self.sink.messages, [])
        held = yield self.store.list_entries(status="held")
        self.assertEqual([e.id for e in held], [ids["to@dest.test"]])
        yield self.store.release_entry(ids["to@dest.test"])
        yield relay.run_once()
        self.assertEqual(len(self.sink.accepted), 1)
        self.assertEqual((yield self.entry(ids["to@dest.test"])).status, "sent")

    # -- MX delivery ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_mx_delivery_tries_the_next_host(self):
        ids = yield self.enqueue(rcpts=("a@dest.test", "b@dest.test"))
        relay = self.mx_relay({
            "dest.test": [mx(5, "dead.dest.test"), mx(10, "mx.dest.test")],
            "dead.dest.test": [a("127.0.0.2")],  # nothing listens there
            "mx.dest.test": [a("127.0.0.1")],
        })
        yield relay.run_once()
        [message] = self.sink.messages
        self.assertEqual(message.rcpts, ["a@dest.test", "b@dest.test"])
        [attempt] = yield self.store.get_attempts(ids["a@dest.test"])
        self.assertEqual(attempt.remote_host, "mx.dest.test [127.0.0.1]")

    @defer.inlineCallbacks
    def test_mx_starttls_is_opportunistic(self):
        """STARTTLS when the MX offers it (certificate not checked); a failed
        handshake is retried at once in plain text."""
        from tests.relay.sink import certificate
        self.sink.tls_options = certificate("mx.elsewhere.test")[0]
        yield self.enqueue(rcpts=("a@dest.test",))
        relay = self.mx_relay({"dest.test": [mx(10, "mx.dest.test")],
                               "mx.dest.test": [a("127.0.0.1")]})
        yield relay.run_once()
        self.assertTrue(self.sink.connections[0].tls)
        self.sink.broken_tls = True
        ids = yield self.enqueue(rcpts=("b@dest.test",))
        yield relay.run_once()
        self.assertEqual([c.tls for c in self.sink.connections], [True, False, False])
        self.assertIn(b"STARTTLS", self.sink.connections[1].commands)
        self.assertNotIn(b"STARTTLS", self.sink.connections[2].commands)
        self.assertEqual(len(self.sink.accepted), 2)
        [attempt] = yield self.store.get_attempts(ids["b@dest.test"])
        self.assertEqual(attempt.code, 250)

    @defer.inlineCallbacks
    def test_smarthost_starttls_verified_with_auth(self):
        from twisted.internet import ssl
        from tests.relay.sink import certificate
        server_options, public = certificate("localhost")
        self.sink.tls_options = server_options
        self.sink.users = {"relay": "s3cret"}
        yield self.enqueue()
        relay = self.relay(smarthost=f"localhost:{self.port}", tls="starttls",
                           username="relay", password="s3cret")
        relay.router.smarthost_tls = lambda host: ssl.optionsForClientTLS(
            host, trustRoot=public)
        yield relay.run_once()
        self.assertEqual((self.sink.connections[0].tls, self.sink.connections[0].user),
                         (True, "relay"))
        self.assertEqual(len(self.sink.accepted), 1)

    @defer.inlineCallbacks
    def test_smarthost_implicit_tls(self):
        from twisted.internet import ssl
        from tests.relay.sink import certificate
        server_options, public = certificate("localhost")
        implicit = Sink()
        port = implicit.listen(self, implicit_tls=server_options)
        yield self.enqueue()
        relay = self.relay(smarthost=f"localhost:{port}", tls="implicit")
        relay.router.smarthost_tls = lambda host: ssl.optionsForClientTLS(
            host, trustRoot=public)
        yield relay.run_once()
        self.assertEqual(implicit.accepted[0].data, BODY)

    @defer.inlineCallbacks
    def test_smarthost_certificate_not_trusted_is_a_temporary_failure(self):
        from tests.relay.sink import certificate
        self.sink.tls_options = certificate("localhost")[0]
        ids = yield self.enqueue()
        yield self.relay(smarthost=f"localhost:{self.port}", tls="starttls").run_once()
        entry = yield self.entry(ids["to@dest.test"])
        self.assertEqual(entry.status, "queued")
        self.assertTrue(entry.last_error.startswith("TLS failed"), entry.last_error)
        self.assertEqual(self.sink.messages, [])

    @defer.inlineCallbacks
    def test_null_mx_fails_at_once(self):
        ids = yield self.enqueue(rcpts=("x@nomail.test",))
        yield self.mx_relay({"nomail.test": [mx(0, "")]}).run_once()
        entry = yield self.entry(ids["x@nomail.test"])
        self.assertEqual((entry.status, entry.last_error),
                         ("failed", "nomail.test accepts no mail (null MX)"))
        self.assertEqual(self.sink.connections, [])
        self.assertEqual(len([e for e in (yield self.store.list_entries())
                              if e.mail_from == ""]), 1)

    # -- local destinations -------------------------------------------------------------

    @defer.inlineCallbacks
    def assertRefusedLocal(self, entry_id, address):
        """The entry failed for good, naming C{address}, with a bounce, and
        nothing connected to the sink (which listens there)."""
        entry = yield self.entry(entry_id)
        self.assertEqual(entry.status, "failed")
        self.assertEqual(entry.last_error, f"refused to connect to a local address {address} "
                                           "(relay.allow_local_destinations is off)")
        [attempt] = yield self.store.get_attempts(entry_id)
        self.assertEqual((attempt.code, attempt.remote_host), (None, None))
        self.assertEqual(self.sink.connections, [])
        self.assertEqual(len([e for e in (yield self.store.list_entries())
                              if e.mail_from == ""]), 1)

    @defer.inlineCallbacks
    def test_address_literal_on_loopback_is_refused(self):
        ids = yield self.enqueue(rcpts=("x@[127.0.0.1]",))
        yield self.mx_relay({}, allow_local_destinations=False).run_once()
        yield self.assertRefusedLocal(ids["x@[127.0.0.1]"], "127.0.0.1")

    @defer.inlineCallbacks
    def test_mx_on_loopback_is_refused_unless_allowed(self):
        records = {"dest.test": [mx(10, "mx.dest.test")], "mx.dest.test": [a("127.0.0.1")]}
        ids = yield self.enqueue(rcpts=("a@dest.test",))
        yield self.mx_relay(records, allow_local_destinations=False).run_once()
        yield self.assertRefusedLocal(ids["a@dest.test"], "127.0.0.1 of mx.dest.test")
        ids = yield self.enqueue(rcpts=("b@dest.test",))
        yield self.mx_relay(records, allow_local_destinations=True).run_once()
        self.assertEqual((yield self.entry(ids["b@dest.test"])).status, "sent")
        self.assertEqual([m.rcpts for m in self.sink.accepted], [["b@dest.test"]])

    @defer.inlineCallbacks
    def test_ipv4_mapped_loopback_is_refused(self):
        ids = yield self.enqueue(rcpts=("a@dest.test",))
        yield self.mx_relay({"dest.test": [mx(10, "mx.dest.test")],
                             "mx.dest.test": [aaaa("::ffff:127.0.0.1")]},
                            allow_local_destinations=False).run_once()
        yield self.assertRefusedLocal(ids["a@dest.test"], "::ffff:127.0.0.1 of mx.dest.test")

    @defer.inlineCallbacks
    def test_mx_host_reached_at_its_address_that_is_not_local(self):
        """Of an MX host's addresses, the local one is skipped and the other
        used (reached here through the sink: nothing listens at the address
        from the documentation range that the DNS gives)."""
        ids = yield self.enqueue(rcpts=("a@dest.test",))
        relay = self.mx_relay({"dest.test": [mx(10, "mx.dest.test")],
                               "mx.dest.test": [a("127.0.0.1"), a("198.51.100.25")]},
                              allow_local_destinations=False)
        asked, endpoint = [], relay.router.endpoint

        def to_the_sink(target):
            asked.append(target.label)
            return endpoint(replace(target, address="127.0.0.1"))
        relay.router.endpoint = to_the_sink
        yield relay.run_once()
        self.assertEqual(asked, ["mx.dest.test [198.51.100.25]"])
        self.assertEqual((yield self.entry(ids["a@dest.test"])).status, "sent")
        [attempt] = yield self.store.get_attempts(ids["a@dest.test"])
        self.assertEqual(attempt.remote_host, "mx.dest.test [198.51.100.25]")

    @defer.inlineCallbacks
    def test_the_smarthost_may_be_local(self):
        ids = yield self.enqueue()
        yield self.relay(allow_local_destinations=False).run_once()
        self.assertEqual((yield self.entry(ids["to@dest.test"])).status, "sent")

    # -- nodes, restarts, leases --------------------------------------------------------------

    @defer.inlineCallbacks
    def test_restart_in_the_middle_of_a_retry_schedule(self):
        ids = yield self.enqueue()
        entry_id = ids["to@dest.test"]
        self.sink.data_replies = [b"452 4.3.1 insufficient storage"]
        first = self.relay("node-a")
        first.startService()
        yield first.run_once()
        yield first.stopService()
        second = self.relay("node-b")
        second.startService()
        yield second.run_once()
        self.assertEqual(len(self.sink.messages), 1)  # not due yet
        entry = yield self.entry(entry_id)
        self.clock.advance(entry.next_attempt_at - self.clock.seconds())
        yield second.run_once()
        self.clock.advance(3600)
        yield second.run_once()
        self.assertEqual(len(self.sink.accepted), 1)
        entry = yield self.entry(entry_id)
        self.assertEqual((entry.status, entry.attempts), ("sent", 2))
        self.assertEqual([a.node for a in (yield self.store.get_attempts(entry_id))],
                         ["node-a", "node-b"])

    @defer.inlineCallbacks
    def test_stop_mid_delivery_gives_the_entry_back(self):
        ids = yield self.enqueue()
        entry_id = ids["to@dest.test"]
        self.sink.silent_at = b"DATA"
        relay = self.relay("node-a")
        data = self.sink.wait_for_command(b"DATA")
        relay.startService()  # polls at once
        yield data  # and the sink never answers
        self.clock.advance(100)  # lease renewal runs every lease / 3
        yield relay.last_renewal
        lock = yield self.lock_of(entry_id)
        self.assertEqual(lock[:2], ("node-a", self.clock.seconds() + 300))
        stopping = relay.stopService()
        self.assertNoResult(stopping)
        self.clock.advance(10)  # the stop grace passes: the connection is dropped
        yield stopping
        entry = yield self.entry(entry_id)
        self.assertEqual((entry.status, entry.attempts), ("queued", 0))
        self.assertEqual((yield self.lock_of(entry_id))[:2], (None, None))
        self.sink.silent_at = None
        yield self.relay("node-b").run_once()
        self.assertEqual(len(self.sink.accepted), 1)
        self.assertEqual((yield self.entry(entry_id)).status, "sent")

    @defer.inlineCallbacks
    def assertGivenBack(self, entry_id):
        entry = yield self.entry(entry_id)
        self.assertEqual((entry.status, entry.attempts), ("queued", 0))
        self.assertEqual((yield self.lock_of(entry_id))[:2], (None, None))

    @defer.inlineCallbacks
    def test_stop_grace_counts_from_the_stop_while_a_claim_is_under_way(self):
        """A poll's claim still under way when the stop begins does not
        postpone the grace (it once was armed only after that claim, so a
        clock advanced meanwhile never aborted the job: the stop hung)."""
        ids = yield self.enqueue()
        self.sink.silent_at = b"DATA"
        relay = self.relay("node-a")
        data = self.sink.wait_for_command(b"DATA")
        relay.startService()
        yield data
        gate, store = defer.Deferred(), self.store

        class Gated:
            def __getattr__(self, name):
                return getattr(store, name)

            def claim_due(self, *args):
                return gate.addCallback(lambda _: store.claim_due(*args))
        relay.store = Gated()
        self.clock.advance(5)  # the next poll: its claim waits at the gate
        stopping = relay.stopService()
        self.clock.advance(10)  # the grace passes, the claim still under way
        self.assertNoResult(stopping)
        gate.callback(None)
        yield stopping
        yield self.assertGivenBack(ids["to@dest.test"])
        self.assertEqual(len(self.sink.connections), 1)

    @defer.inlineCallbacks
    def test_stop_while_the_connection_opens(self):
        """A job still waiting for the greeting is stopped at the end of the
        grace (not after the command timeout), and sends nothing after."""
        ids = yield self.enqueue()
        self.sink.silent_at = b"GREETING"
        relay = self.relay()
        connected = self.sink.wait_for_connection()
        relay.startService()
        yield connected
        stopping = relay.stopService()
        self.clock.advance(10)
        yield stopping
        yield self.assertGivenBack(ids["to@dest.test"])
        yield defer.DeferredList([p.closed for p in self.sink.live])  # dropped
        self.assertEqual([c.commands for c in self.sink.connections], [[]])

    @defer.inlineCallbacks
    def test_stop_while_looking_up_the_mx(self):
        """A job waiting for DNS is stopped at the end of the grace, even
        though the look-up goes on after its cancellation (the resolver
        tries the next MX host, which never answers either)."""
        from twisted.names import dns

        class Silent:
            asked = defer.Deferred()

            def lookupMailExchange(self, name, timeout=None):
                answers = [dns.RRHeader(name=name, type=dns.MX, payload=mx(pref, host))
                           for pref, host in ((10, "a.dest.test"), (20, "b.dest.test"))]
                return defer.succeed((answers, [], []))

            def lookupAddress(self, name, timeout=None):
                if not self.asked.called:
                    self.asked.callback(name)
                return defer.Deferred()  # never answered

            lookupIPV6Address = lookupAddress
        resolver = Silent()
        ids = yield self.enqueue(rcpts=("a@dest.test",))
        relay = self.relay(smarthost="", resolver="127.0.0.1:53", mx_port=self.port)
        relay.router.mx = MXResolver(resolver, self.port)
        relay.startService()
        yield resolver.asked
        stopping = relay.stopService()
        self.clock.advance(10)
        yield stopping
        yield self.assertGivenBack(ids["a@dest.test"])
        self.assertEqual(self.sink.connections, [])

    @defer.inlineCallbacks
    def test_expired_lease_is_taken_over(self):
        ids = yield self.enqueue()
        entry_id = ids["to@dest.test"]
        now = self.clock.seconds()
        yield self.store.claim_due("dead-node", now, 300, 10)  # and then it died
        relay = self.relay("node-b")
        yield relay.run_once()
        self.assertEqual(self.sink.messages, [])
        self.clock.advance(300)
        yield relay.run_once()
        self.assertEqual(len(self.sink.accepted), 1)
        late = DeliveryAttempt(entry_id, now + 400, "x", 250, "250 late", "dead-node")
        self.assertFalse((yield self.store.mark_sent(entry_id, "dead-node", late)))
        self.assertEqual((yield self.entry(entry_id)).status, "sent")

    @defer.inlineCallbacks
    def test_store_failure_while_settling_loses_nothing(self):
        """The store fails as the 250 is to be recorded: the job ends (its
        connection closed, the failure logged) and the entry, still leased,
        is delivered again once the lease has passed (at least once)."""
        from mailgw.interfaces import StoreUnavailable

        class Failing:
            def __init__(self, store):
                self._store = store

            def __getattr__(self, name):
                return getattr(self._store, name)

            def mark_sent(self, *args):
                return defer.fail(StoreUnavailable("database down"))

        ids = yield self.enqueue()
        relay = self.relay()
        relay.store = relay.settler.store = Failing(self.store)
        yield relay.run_once()
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)
        yield defer.DeferredList([p.closed for p in self.sink.live])  # it was closed
        self.assertNotIn(b"QUIT", self.sink.connections[0].commands)  # dropped, at once
        self.assertEqual((yield self.entry(ids["to@dest.test"])).status, "queued")
        self.clock.advance(300)
        yield self.relay("node-b").run_once()
        self.assertEqual((yield self.entry(ids["to@dest.test"])).status, "sent")
        self.assertEqual(len(self.sink.accepted), 2)

    @defer.inlineCallbacks
    def test_polls_and_wakes(self):
        relay = self.relay(poll_interval=30.0)
        relay.startService()
        yield relay.run_once()
        yield self.enqueue()
        self.clock.advance(30)  # the poll
        yield self.sink.wait_for(1)
        yield self.enqueue()
        relay.wake()
        self.clock.advance(0)
        yield self.sink.wait_for(2)
        self.assertEqual(len(self.sink.accepted), 2)


class SQLiteRelayTests(RelayContract, unittest.TestCase):
    pass


class PostgresRelayTests(PostgresFixture, RelayContract, unittest.TestCase):
    pass
