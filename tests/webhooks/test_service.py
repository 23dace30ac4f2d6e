"""The webhook sender service: its retry schedule and outcomes on a Clock
(with a scripted sender), and the real L{RequestSender} against a real
HTTPS receiver on loopback: both signatures verify, the TLS certificate is
checked, a loopback URL is refused unless private addresses are allowed,
and a receiver that does not answer in time is a failed attempt."""
from __future__ import annotations

import time

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from mailgw.config import WebhooksConfig
from mailgw.interfaces import StoreUnavailable
from mailgw.metrics import Metrics
from mailgw.webhooks.sender import Outcome, RequestSender, tls_policy
from mailgw.webhooks.service import KEY_RETRY, WebhookService, next_attempt
from mailgw.webhooks.signing import RequestSigner, generate_private_key
from tests.relay.fixtures import StoreFixture
from tests.webhooks.receiver import Receiver, verify

_KEY = []


def signing_key() -> str:
    """One key for the module's tests (generating one takes a while)."""
    if not _KEY:
        _KEY.append(generate_private_key())
    return _KEY[0]


class ScheduleTests(unittest.TestCase):
    def test_postal_schedule_then_no_retry(self):
        delays = WebhooksConfig().retry_delays
        self.assertEqual(delays, (120.0, 180.0, 360.0, 600.0, 900.0))
        self.assertEqual([next_attempt(1000, n, delays) for n in range(1, 7)],
                         [1120, 1180, 1360, 1600, 1900, None])


class ScriptedSender:
    """Answers each send with the next scripted L{Outcome}, recording it."""

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.sent = []

    def send(self, url, body):
        self.sent.append((url, body))
        return defer.succeed(self.outcomes.pop(0))


class ServiceTests(StoreFixture, unittest.TestCase):
    """The service over a real store, its time a Clock."""

    @defer.inlineCallbacks
    def setUp(self):
        yield StoreFixture.setUp(self)
        yield self.store.add_webhook(("acme", "web"), "https://hooks.example/in",
                                     events=["MessageHeld"])
        yield self.enqueue(status="held", hold_reason="credential on hold")
        self.metrics = Metrics()
        self.logged = []

        def observe(event):
            if event.get("log_namespace", "").startswith("mailgw.webhooks"):
                self.logged.append(formatEvent(event))
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def service(self, outcomes, **config):
        sender = ScriptedSender(outcomes)
        settings = WebhooksConfig(retry_delays=(10.0, 20.0), **config)
        service = WebhookService(self.store, settings, reactor, "node-1", clock=self.clock,
                                 metrics=self.metrics, sender=sender)
        return service, sender

    @defer.inlineCallbacks
    def history(self):
        [(request, attempts)] = yield self.store.list_webhook_requests()
        return request, attempts

    def counted(self, outcome):
        return self.metrics.registry.get_sample_value("mailgw_webhook_deliveries_total",
                                                      {"outcome": outcome})

    @defer.inlineCallbacks
    def test_retries_on_the_schedule_then_fails(self):
        service, sender = self.service([Outcome(503, "the receiver answered HTTP 503"),
                                        Outcome(None, "ConnectionRefusedError: refused"),
                                        Outcome(500, "the receiver answered HTTP 500")])
        start = self.clock.seconds()
        yield service.run_once()
        request, _ = yield self.history()
        self.assertEqual((request.status, request.attempts, request.next_attempt_at),
                         ("pending", 1, start + 10))
        self.clock.advance(9.9)
        yield service.run_once()
        self.assertEqual(len(sender.sent), 1)  # not due yet
        self.clock.advance(0.1)
        yield service.run_once()
        request, _ = yield self.history()
        self.assertEqual((request.attempts, request.next_attempt_at), (2, start + 30))
        self.clock.advance(20)
        yield service.run_once()
        request, attempts = yield self.history()
        self.assertEqual((request.status, request.attempts, request.last_error),
                         ("failed", 3, "the receiver answered HTTP 500"))
        self.assertEqual([(a.status_code, a.will_retry) for a in attempts],
                         [(503, True), (None, True), (500, False)])
        self.assertEqual(len({body for _, body in sender.sent}), 1)  # the same bytes
        self.assertEqual((self.counted("retry"), self.counted("failed")), (2, 1))

    @defer.inlineCallbacks
    def test_delivered_after_one_failure(self):
        service, sender = self.service([Outcome(None, "no answer within 5 s"),
                                        Outcome(204)])
        yield service.run_once()
        self.clock.advance(10)
        yield service.run_once()
        request, attempts = yield self.history()
        self.assertEqual((request.status, request.attempts), ("delivered", 2))
        self.assertEqual(self.counted("delivered"), 1)
        self.clock.advance(1000)
        yield service.run_once()
        self.assertEqual(len(sender.sent), 2)

    @defer.inlineCallbacks
    def test_a_refused_destination_fails_at_once(self):
        service, sender = self.service([Outcome(None, "webhook destination refused: "
                                                "10.0.0.1 is a private or reserved address",
                                                refused=True)])
        yield service.run_once()
        request, attempts = yield self.history()
        self.assertEqual((request.status, attempts[0].will_retry), ("failed", False))
        self.assertIn("private or reserved", request.last_error)
        self.assertEqual(self.counted("refused"), 1)
        self.assertIn("refused after attempt 1", "\n".join(self.logged))

    @defer.inlineCallbacks
    def test_the_query_string_stays_out_of_the_log(self):
        yield self.store.add_webhook(("acme", "web"), "https://hooks.example/in?token=s3cret",
                                     events=["MessageHeld"])
        yield self.enqueue(status="held", hold_reason="credential on hold")
        service, _ = self.service([Outcome(200)] * 3)
        yield service.run_once()
        logged = "\n".join(self.logged)
        self.assertIn("to https://hooks.example/in?…: delivered", logged)
        self.assertNotIn("s3cret", logged)

    @defer.inlineCallbacks
    def test_started_service_polls_and_gives_back_nothing_on_stop(self):
        service, sender = self.service([Outcome(200)], poll_interval=1.0)
        service.startService()
        yield service.started
        yield service.run_once()
        self.assertEqual(len(sender.sent), 1)
        yield service.stopService()
        request, _ = yield self.history()
        self.assertEqual(request.status, "delivered")
        gauge = self.metrics.registry.get_sample_value("mailgw_webhook_outbox",
                                                       {"status": "pending"})
        self.assertIn(gauge, (0.0, 1.0))


class KeyOnceUnavailable:
    """The store, except that its first C{webhook_signing_key} fails."""

    def __init__(self, store):
        self._store = store
        self.asked = 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def webhook_signing_key(self):
        self.asked += 1
        if self.asked == 1:
            return defer.fail(StoreUnavailable("database away"))
        return self._store.webhook_signing_key()


class KeyTests(StoreFixture, unittest.TestCase):
    @defer.inlineCallbacks
    def test_the_key_is_read_again_after_a_failure(self):
        store = KeyOnceUnavailable(self.store)
        service = WebhookService(store, WebhooksConfig(), reactor, "node-1", clock=self.clock)
        service.startService()
        self.assertFalse(service.started.called)
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)
        self.clock.advance(KEY_RETRY)
        yield service.started
        self.assertEqual(store.asked, 2)
        self.assertEqual(service.signer.public_pem, RequestSigner(
            (yield self.store.webhook_signing_key())).public_pem)
        yield service.stopService()


class SenderTests(unittest.TestCase):
    """The real sender, over real sockets and TLS, to the receiver."""

    def setUp(self):
        self.receiver = Receiver(self.mktemp_folder())
        self.receiver.listen(self)
        self.signer = RequestSigner(signing_key())

    def mktemp_folder(self):
        import os
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        return folder

    def sender(self, allow_private=True, timeout=10.0, policy=None):
        return RequestSender(reactor, self.signer, allow_private=allow_private,
                             timeout=timeout,
                             policy=policy or tls_policy(self.receiver.ca_path))

    @defer.inlineCallbacks
    def test_signed_request_verifies_with_the_public_key(self):
        body = b'{"event":"MessageSent","timestamp":1.0,"payload":{},"uuid":"u"}'
        self.receiver.codes.append(202)
        outcome = yield self.sender().send(self.receiver.url, body)
        self.assertEqual((outcome.status_code, outcome.delivered), (202, True))
        [hit] = self.receiver.hits
        self.assertEqual((hit.method, hit.path, hit.body), (b"POST", b"/hook", body))
        verify(self.signer.public_pem.encode(), hit)
        self.assertEqual(hit.header("x-postal-signature-kid"), self.signer.kid)
        self.assertEqual(hit.header("content-type"), "application/json")

    @defer.inlineCallbacks
    def test_a_host_name_reaches_the_address_that_answers(self):
        """localhost may resolve to ::1 first; the receiver listens on
        127.0.0.1 only: each checked address is tried in turn."""
        url = self.receiver.url.replace("127.0.0.1", "localhost")
        outcome = yield self.sender().send(url, b"{}")
        self.assertEqual(outcome.status_code, 200, outcome.error)
        [hit] = self.receiver.hits
        self.assertEqual(hit.header("host"), f"localhost:{self.receiver.port}")

    @defer.inlineCallbacks
    def test_an_error_status_is_not_delivered(self):
        self.receiver.codes.append(500)
        outcome = yield self.sender().send(self.receiver.url, b"{}")
        self.assertEqual((outcome.status_code, outcome.delivered, outcome.refused),
                         (500, False, False))

    @defer.inlineCallbacks
    def test_a_redirect_is_an_answer_not_followed(self):
        self.receiver.codes.append(302)
        outcome = yield self.sender().send(self.receiver.url, b"{}")
        self.assertEqual((outcome.status_code, outcome.delivered), (302, False))
        self.assertEqual(len(self.receiver.hits), 1)

    @defer.inlineCallbacks
    def test_loopback_refused_unless_allowed(self):
        outcome = yield self.sender(allow_private=False).send(self.receiver.url, b"{}")
        self.assertTrue(outcome.refused)
        self.assertIn("127.0.0.1 is a local address", outcome.error)
        self.assertEqual(self.receiver.hits, [])

    @defer.inlineCallbacks
    def test_untrusted_certificate_fails(self):
        outcome = yield self.sender(policy=tls_policy()).send(self.receiver.url, b"{}")
        self.assertFalse(outcome.delivered)
        self.assertFalse(outcome.refused)
        self.assertIsNone(outcome.status_code)
        self.assertEqual(self.receiver.hits, [])

    @defer.inlineCallbacks
    def test_no_answer_within_the_timeout(self):
        from twisted.internet import protocol
        silent = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol),
                                   interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        started = time.monotonic()
        outcome = yield self.sender(timeout=0.5).send(
            f"http://127.0.0.1:{silent.getHost().port}/", b"{}")
        self.assertEqual(outcome.error, "no answer within 0.5 s")
        self.assertLess(time.monotonic() - started, 5)
