"""End to end: the real ``twistd -n mailgw`` relays what it accepted to a
smarthost, here the sink SMTP server running in the test's own reactor.

A message submitted with smtplib arrives at the sink byte-exact (the
gateway's Received header and the body as submitted), ``mailgw queue show``
lists the attempt; a held message goes out once the operator releases it;
a recipient the smarthost refuses for good gets its sender a bounce.

The test methods return Deferreds: the reactor must keep running for the
sink to answer, so blocking clients (smtplib, the ``mailgw`` command) run in
threads.
"""
from __future__ import annotations

import re

from twisted.internet import defer, reactor, task, threads

from tests.e2e.gateway import mailgw_cli, send_smtp
from tests.e2e.test_submission import MESSAGE, QUEUED, GatewayTestBase
from tests.relay.sink import Sink

#: how long a test waits for the gateway's relay to settle an entry
SETTLE_TIMEOUT = 30.0


class RelayGatewayTests(GatewayTestBase):
    """A gateway whose [relay] smarthost is the sink, polling often."""

    @defer.inlineCallbacks
    def setUp(self):
        self.sink = Sink()
        port = self.sink.listen(self)
        self.config_tables = "\n".join([
            "[relay]", "enabled = true", f'smarthost = "127.0.0.1:{port}"', 'tls = "none"',
            "poll_interval = 0.2", "retry_base = 1.0", "retry_max = 2.0"])
        yield GatewayTestBase.setUp(self)
        yield self.relay_started()

    @defer.inlineCallbacks
    def relay_started(self):
        """Wait for the gateway's "relay ... started" log line."""
        deadline = reactor.seconds() + SETTLE_TIMEOUT
        while not re.search(r"relay \S+ started: smarthost", self.gateway.log()):
            self.assertLess(reactor.seconds(), deadline,
                            "twistd mailgw did not start the relay (mailgw/service.py "
                            "must run a RelayService when [relay] enabled):\n"
                            + self.gateway.log()[-3000:])
            yield task.deferLater(reactor, 0.1, lambda: None)

    def arrived(self, count):
        """The sink's messages once C{count} have arrived (bounded wait)."""
        return self.sink.wait_for(count).addTimeout(SETTLE_TIMEOUT, reactor)

    def cli(self, *args, raw=False):
        return threads.deferToThread(mailgw_cli, self.config, *args, raw=raw)

    def submit(self, rcpts=("user@dest.example",)):
        def send():
            code, text = send_smtp(self.gateway.port(), self.key, MESSAGE, rcpt_to=rcpts)
            self.assertEqual(code, 250)
            return QUEUED.match(text.decode()).group(1)
        return threads.deferToThread(send)

    @defer.inlineCallbacks
    def settled(self, token, rcpt="user@dest.example", status="sent"):
        """The entry of C{token} for C{rcpt} once it has C{status} (polled
        through the real command line)."""
        deadline = reactor.seconds() + SETTLE_TIMEOUT
        while True:
            entries = yield self.cli("queue", "list", "--json")
            found = [e for e in entries if e["token"] == token and e["rcpt_to"] == rcpt]
            if found and found[0]["status"] == status:
                return found[0]
            self.assertLess(reactor.seconds(), deadline,
                            f"{token} to {rcpt} never became {status}: {found}\n"
                            + self.gateway.log()[-3000:])
            yield task.deferLater(reactor, 0.2, lambda: None)

    @defer.inlineCallbacks
    def test_delivered_byte_exact_with_attempt_history(self):
        token = yield self.submit()
        [message] = yield self.arrived(1)
        entry = yield self.settled(token)
        stored = yield self.cli("queue", "show", str(entry["id"]), "--raw", raw=True)
        received, rest = stored.split(b"\r\n", 1)
        self.assertTrue(received.startswith(b"Received: from "), received)
        self.assertEqual(rest, MESSAGE)
        self.assertEqual(message.data, stored)  # the Received header and the body, exactly
        self.assertEqual((message.mail_from, message.rcpts),
                         ("app@good.example", ["user@dest.example"]))
        shown = yield self.cli("queue", "show", str(entry["id"]), "--json")
        self.assertEqual(shown["attempts"], 1)
        [attempt] = shown["delivery_attempts"]
        self.assertEqual((attempt["code"], attempt["text"], attempt["remote_host"]),
                         (250, "250 2.0.0 Ok: queued", "127.0.0.1"))
        self.assertEqual(self.sink.connections[0].commands[0], b"EHLO mx.e2e.test")

    @defer.inlineCallbacks
    def test_held_message_goes_out_when_released(self):
        [credential] = yield self.cli("credential", "list", "acme/web", "--json")
        yield self.cli("credential", "hold", str(credential["id"]), "--json")
        token = yield self.submit()
        entry = yield self.settled(token, status="held")
        self.assertEqual(entry["hold_reason"], "credential on hold")
        self.assertEqual(self.sink.messages, [])
        released = yield self.cli("queue", "release", str(entry["id"]), "--json")
        self.assertEqual(released["status"], "queued")
        yield self.arrived(1)
        yield self.settled(token)

    @defer.inlineCallbacks
    def test_refused_recipient_bounces_to_the_sender(self):
        self.sink.rcpt_replies["gone@dest.example"] = b"550 5.1.1 no such user"
        token = yield self.submit(rcpts=("gone@dest.example", "user@dest.example"))
        failed = yield self.settled(token, rcpt="gone@dest.example", status="failed")
        self.assertEqual(failed["last_error"], "550 5.1.1 no such user")
        yield self.settled(token)
        messages = yield self.arrived(2)
        bounce = messages[1]
        self.assertEqual((bounce.mail_from, bounce.rcpts), ("", ["app@good.example"]))
        self.assertIn(b"report-type=delivery-status", bounce.data)
        self.assertIn(b"Final-Recipient: rfc822; gone@dest.example", bounce.data)
