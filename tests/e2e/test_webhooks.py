"""End to end: the real ``twistd -n mailgw`` sends Postal's webhooks to a real
HTTPS receiver in the test's reactor, signed with the key ``mailgw webhook
key`` prints, for what its relay does with the mail (delivered, delayed then
delivered, failed with a bounce) and for mail held at acceptance
(development mode); a receiver that is down gets its request once it is
back, after a restart of the gateway; two nodes on one PostgreSQL send each
request once; the periodic DNS check sends DomainDNSError. With the default
settings a loopback URL is refused, at ``webhook add`` and at send; a CA file
that cannot be read stops the start.

One gateway serves all the scenarios of a class: its start is the slow part.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from mailgw.store import open_store
from tests.e2e.gateway import Gateway, ROOT, mailgw_cli, send_smtp, write_config
from tests.e2e.test_submission import MESSAGE, QUEUED, GatewayTestBase
from tests.relay.sink import Sink
from tests.relay.zone import Zone, serve
from tests.webhooks.receiver import (
    BOUNCE_KEYS, DELIVERY_KEYS, MESSAGE_KEYS, Receiver, verify,
)

#: how long a test waits for the gateway to do something
SETTLE_TIMEOUT = 30.0


class WebhookGatewayBase(GatewayTestBase):
    """A gateway relaying to the sink, whose webhooks go to the receiver."""

    retry_delays = "[1.0, 1.0, 1.0]"
    allow_private = "true"

    @defer.inlineCallbacks
    def setUp(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.receiver = Receiver(folder)
        self.receiver.listen(self)
        self.sink = Sink()
        port = self.sink.listen(self)
        self.config_tables = "\n".join([
            "[relay]", "enabled = true", f'smarthost = "127.0.0.1:{port}"', 'tls = "none"',
            "poll_interval = 0.2", "retry_base = 1.0", "retry_max = 2.0",
            "[webhooks]", f"allow_private_addresses = {self.allow_private}",
            "poll_interval = 0.2",
            f"retry_delays = {self.retry_delays}",
            f'ca_certificates = "{self.receiver.ca_path}"', self.extra_tables()])
        yield GatewayTestBase.setUp(self)
        yield self.webhooks_started(self.gateway)

    def extra_tables(self) -> str:
        """More TOML tables for the gateway's config."""
        return ""

    def cli(self, *args, raw=False):
        return threads.deferToThread(mailgw_cli, self.config, *args, raw=raw)

    def submit(self, rcpts=("user@dest.example",), key=None):
        def send():
            code, text = send_smtp(self.gateway.port(), key or self.key, MESSAGE, rcpt_to=rcpts)
            self.assertEqual(code, 250)
            return QUEUED.match(text.decode()).group(1)
        return threads.deferToThread(send)

    @defer.inlineCallbacks
    def webhooks_started(self, gateway):
        deadline = reactor.seconds() + SETTLE_TIMEOUT
        while not re.search(r"webhooks \S+ started", gateway.log()):
            self.assertLess(reactor.seconds(), deadline,
                            "the webhook service did not start:\n" + gateway.log()[-3000:])
            yield task.deferLater(reactor, 0.1, lambda: None)

    @defer.inlineCallbacks
    def add_webhook(self, *events):
        chosen = ["--events", *events] if events else ["--all-events"]
        webhook = yield self.cli("webhook", "add", "acme/web", self.receiver.url, *chosen,
                                 "--json")
        self.assertEqual((webhook["url"], webhook["enabled"]), (self.receiver.url, True))
        return webhook

    def public_key(self):
        return self.cli("webhook", "key", raw=True)

    def assert_delivery_shape(self, hit, event, status, token, rcpt):
        body = hit.json
        self.assertEqual(set(body), {"event", "timestamp", "payload", "uuid"})
        self.assertEqual(body["event"], event)
        self.assertEqual(set(body["payload"]), DELIVERY_KEYS)
        self.assertEqual(body["payload"]["status"], status)
        message = body["payload"]["message"]
        self.assertEqual(set(message), MESSAGE_KEYS)
        self.assertEqual((message["token"], message["to"], message["from"],
                          message["direction"], message["subject"]),
                         (token, rcpt, "app@good.example", "outgoing", "e2e"))
        self.assertIsInstance(message["id"], int)
        self.assertEqual(hit.header("content-type"), "application/json")


class WebhookScenarioTests(WebhookGatewayBase):
    """Delivered, delayed then delivered, failed with a bounce, held."""

    @defer.inlineCallbacks
    def test_each_event_signed_and_shaped_as_postal(self):
        yield self.add_webhook()  # all events
        public_pem = yield self.public_key()
        self.assertTrue(public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n"), public_pem)
        key = serialization.load_pem_public_key(public_pem)
        kid = hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.PKCS1)).hexdigest()

        # delivered
        token = yield self.submit()
        [sent] = yield self.receiver.wait_for_event("MessageSent", token)
        verify(public_pem, sent)
        self.assertEqual(sent.header("x-postal-signature-kid"), kid)
        self.assert_delivery_shape(sent, "MessageSent", "Sent", token, "user@dest.example")
        self.assertEqual(sent.json["payload"]["output"], "250 2.0.0 Ok: queued")

        # a temporary failure, then delivered
        self.sink.data_replies.append(b"451 4.3.0 try again later")
        token = yield self.submit()
        [delayed] = yield self.receiver.wait_for_event("MessageDelayed", token)
        [sent] = yield self.receiver.wait_for_event("MessageSent", token)
        for hit in (delayed, sent):
            verify(public_pem, hit)
        self.assert_delivery_shape(delayed, "MessageDelayed", "SoftFail", token,
                                   "user@dest.example")
        self.assertEqual(delayed.json["payload"]["output"], "451 4.3.0 try again later")
        self.assert_delivery_shape(sent, "MessageSent", "Sent", token, "user@dest.example")
        self.assertEqual(delayed.json["payload"]["message"]["id"],
                         sent.json["payload"]["message"]["id"])

        # a permanent failure: failed, and bounced to the sender
        self.sink.rcpt_replies["gone@dest.example"] = b"550 5.1.1 no such user"
        token = yield self.submit(rcpts=("gone@dest.example",))
        [failed] = yield self.receiver.wait_for_event("MessageDeliveryFailed", token)
        [bounced] = yield self.receiver.wait_for_event("MessageBounced", token)
        verify(public_pem, failed)
        verify(public_pem, bounced)
        self.assert_delivery_shape(failed, "MessageDeliveryFailed", "HardFail", token,
                                   "gone@dest.example")
        self.assertEqual(failed.json["payload"]["output"], "550 5.1.1 no such user")
        payload = bounced.json["payload"]
        self.assertEqual(set(payload), BOUNCE_KEYS)
        self.assertEqual(set(payload["original_message"]), MESSAGE_KEYS)
        self.assertEqual(set(payload["bounce"]), MESSAGE_KEYS)
        self.assertEqual(payload["original_message"]["to"], "gone@dest.example")
        self.assertEqual((payload["bounce"]["to"], payload["bounce"]["from"]),
                         ("app@good.example", ""))

        # held at acceptance: the server is in development mode
        yield self.cli("server", "set", "acme/web", "--mode", "development", "--json")
        # a new credential: the gateway looks it (and its server) up afresh,
        # where the old one's look-up may be reused for up to a second
        fresh = yield self.cli("credential", "add", "acme/web", "--type", "smtp", "--json")
        token = yield self.submit(key=fresh["key"])
        [held] = yield self.receiver.wait_for_event("MessageHeld", token)
        verify(public_pem, held)
        self.assert_delivery_shape(held, "MessageHeld", "Held", token, "user@dest.example")
        self.assertEqual(held.json["payload"]["details"], "Server is in development mode.")

        # every request once, each with its own uuid, and all recorded
        uuids = [h.json["uuid"] for h in self.receiver.hits]
        self.assertEqual(len(uuids), len(set(uuids)))
        deliveries = yield self.cli("webhook", "deliveries", "--json")
        self.assertEqual(sorted(d["uuid"] for d in deliveries), sorted(uuids))
        self.assertEqual({d["status"] for d in deliveries}, {"delivered"})
        log = self.gateway.log()
        self.assertRegex(log, r"webhooks: MessageHeld \S+ to https://127\.0\.0\.1:\d+/hook: "
                              r"delivered \(HTTP 200, attempt 1\)")
        self.assertNotIn("PRIVATE KEY", log)
        self.assertNotIn("_HTTP11ClientFactory", log)  # one line per request is enough


class ReceiverDownTests(WebhookGatewayBase):
    """The receiver is down; the gateway restarts; the receiver comes back."""

    retry_delays = "[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]"

    @defer.inlineCallbacks
    def failed_attempts(self, count):
        deadline = reactor.seconds() + SETTLE_TIMEOUT
        while True:
            found = yield self.cli("webhook", "deliveries", "--json")
            if found and found[0]["attempts"] >= count:
                return found[0]
            self.assertLess(reactor.seconds(), deadline, f"no {count} attempts: {found}")
            yield task.deferLater(reactor, 0.2, lambda: None)

    @defer.inlineCallbacks
    def test_delivered_once_after_a_restart(self):
        yield self.add_webhook("MessageSent")
        yield self.receiver.stop()
        token = yield self.submit()
        request = yield self.failed_attempts(1)
        self.assertEqual((request["status"], request["event"]), ("pending", "MessageSent"))
        attempt = request["delivery_attempts"][0]
        self.assertIsNone(attempt["status_code"])
        self.assertTrue(attempt["will_retry"])
        self.assertIn("ConnectionRefused", attempt["error"])
        self.assertRegex(self.gateway.log(), r"webhooks: MessageSent \S+ to \S+: attempt 1 "
                                             r"failed \(.*ConnectionRefused")

        yield threads.deferToThread(self.gateway.stop)
        self.receiver.listen()
        restarted = Gateway(self.folder, self.config)
        self.addCleanup(restarted.stop)
        yield threads.deferToThread(restarted.start, len(self.listeners))
        self.gateway = restarted
        [hit] = yield self.receiver.wait_for_event("MessageSent", token)
        self.assertEqual(hit.json["uuid"], request["uuid"])
        delivered = yield self.cli("webhook", "deliveries", "--json")
        self.assertEqual([(d["uuid"], d["status"]) for d in delivered],
                         [(request["uuid"], "delivered")])
        # nothing more comes: the outbox has nothing pending
        self.assertEqual(len(self.receiver.events("MessageSent", token)), 1)



class PrivateAddressTests(WebhookGatewayBase):
    """The default: webhooks to private addresses are refused, at `webhook
    add` and, for a webhook that got into the store anyway, at send."""

    allow_private = "false"

    @defer.inlineCallbacks
    def test_refused_at_add_and_at_send(self):
        failure = yield self.assertFailure(
            self.cli("webhook", "add", "acme/web", self.receiver.url, "--all-events"),
            AssertionError)
        self.assertIn("mailgw: webhook destination refused: 127.0.0.1 is a local address",
                      str(failure))
        store = open_store(self.url, reactor)
        yield store.start()
        try:
            yield store.add_webhook(("acme", "web"), self.receiver.url, all_events=True)
        finally:
            yield store.close()
        yield self.submit()
        deadline = reactor.seconds() + SETTLE_TIMEOUT
        while True:
            found = yield self.cli("webhook", "deliveries", "--status", "failed", "--json")
            if found:
                break
            self.assertLess(reactor.seconds(), deadline, self.gateway.log()[-3000:])
            yield task.deferLater(reactor, 0.2, lambda: None)
        [request] = found
        self.assertEqual((request["event"], request["attempts"]), ("MessageSent", 1))
        self.assertIn("127.0.0.1 is a local address", request["last_error"])
        self.assertEqual(self.receiver.hits, [])
        self.assertRegex(self.gateway.log(), r"webhooks: MessageSent \S+ to \S+: refused after "
                                             r"attempt 1 \(webhook destination refused: "
                                             r"127\.0\.0\.1 is a local address")
        metrics = yield threads.deferToThread(_metrics, self.gateway.metrics_port)
        self.assertIn('mailgw_webhook_deliveries_total{outcome="refused"} 1.0', metrics)


class DomainDNSErrorTests(WebhookGatewayBase):
    """The gateway's periodic DNS check, against a DNS server on loopback
    where good.example publishes nothing, sends DomainDNSError."""

    def extra_tables(self):
        self.zone = Zone({})
        return f'[dns]\nresolver = "{serve(self, self.zone)}"\ncheck_interval = 1\n'

    @defer.inlineCallbacks
    def test_signed_and_shaped_as_postal(self):
        yield self.add_webhook("DomainDNSError")
        public_pem = yield self.public_key()
        hits = yield self.receiver.wait_for_event("DomainDNSError")
        verify(public_pem, hits[0])
        payload = hits[0].json["payload"]
        self.assertEqual(set(payload), {
            "server", "domain", "uuid", "dns_checked_at", "spf_status", "spf_error",
            "dkim_status", "dkim_error", "mx_status", "mx_error", "return_path_status",
            "return_path_error"})
        self.assertEqual((payload["domain"], payload["server"]["permalink"],
                          payload["server"]["organization"], payload["spf_status"],
                          payload["dkim_status"], payload["mx_status"]),
                         ("good.example", "web", "acme", "Missing", "Missing", "Missing"))


class TwoNodeWebhookTests(WebhookGatewayBase):
    """Two gateway nodes on one PostgreSQL, both relaying and sending webhooks."""

    engine = "postgresql"
    messages = 20

    @defer.inlineCallbacks
    def setUp(self):
        yield WebhookGatewayBase.setUp(self)
        folder = os.path.join(self.folder, "node2")
        os.makedirs(folder)
        config = write_config(folder, database_url=self.url, listeners=self.listeners,
                              tables=self.config_tables)
        self.node2 = Gateway(folder, config)
        self.addCleanup(self.node2.stop)
        yield threads.deferToThread(self.node2.start, 1)
        yield self.webhooks_started(self.node2)

    @defer.inlineCallbacks
    def test_each_request_delivered_once(self):
        yield self.add_webhook("MessageSent")
        nodes = [self.gateway, self.node2]
        tokens = []
        for i in range(self.messages):
            self.gateway = nodes[i % 2]  # submit() uses self.gateway's port
            tokens.append((yield self.submit()))
        self.gateway = nodes[0]
        yield self.receiver.wait_until(
            lambda hits: len({h.json["payload"]["message"]["token"] for h in hits})
            >= self.messages)
        # both nodes have polled since: a request sent twice would be here by now
        yield self.both_polled()
        sent = self.receiver.events("MessageSent")
        self.assertEqual(sorted(h.json["payload"]["message"]["token"] for h in sent),
                         sorted(tokens))
        uuids = [h.json["uuid"] for h in sent]
        self.assertEqual(len(uuids), len(set(uuids)))
        deliveries = yield self.cli("webhook", "deliveries", "--json", "--limit", "100")
        self.assertEqual(len(deliveries), self.messages)
        self.assertEqual({(d["status"], d["attempts"]) for d in deliveries},
                         {("delivered", 1)})

    @defer.inlineCallbacks
    def both_polled(self):
        """Wait until each node's gauge of pending requests, refreshed after
        each of its polls, reads 0: both have looked at the outbox since every
        request was delivered, and found nothing left to send."""
        for gateway in (self.gateway, self.node2):
            deadline = reactor.seconds() + SETTLE_TIMEOUT
            while True:
                text = yield threads.deferToThread(_metrics, gateway.metrics_port)
                if 'mailgw_webhook_outbox{status="pending"} 0.0' in text:
                    break
                self.assertLess(reactor.seconds(), deadline, text[-2000:])
                yield task.deferLater(reactor, 0.2, lambda: None)


def _metrics(port: int) -> str:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


class FailedStartTests(unittest.TestCase):
    def test_unreadable_ca_certificates_stop_the_start_with_one_line(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        config = write_config(folder, database_url="sqlite:" + os.path.join(folder, "db"),
                              listeners=[{"endpoint": "tcp:0:interface=127.0.0.1"}],
                              tables='[webhooks]\nca_certificates = "missing.pem"\n')
        result = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "mailgw", "--config", config], cwd=folder, capture_output=True,
            timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        self.assertNotEqual(result.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertIn(f"mailgw: config error: webhooks.ca_certificates: cannot read "
                      f"{folder}/missing.pem: No such file or directory", output)
