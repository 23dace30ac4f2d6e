"""End to end, as an application uses Postal: send with curl through the HTTP
API, poll the message's status with curl (``messages/message`` and
``messages/deliveries``) until the relay has delivered it, and receive the
signed ``MessageSent`` webhook about the same message (same id and token).

Postal's Node client (``@atech/postal``, installed under ``tests/e2e/node``
by ``.ci/run``) has only the send calls: it sends over HTTPS, then the status
is polled with curl and the webhook received as above.
"""
from __future__ import annotations

import json
import os
import subprocess

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import SkipTest

from mailgw.admin.devsetup import make_certificate
from tests.e2e.gateway import require_tool
from tests.e2e.test_webhooks import SETTLE_TIMEOUT, WebhookGatewayBase
from tests.webhooks.receiver import verify


class MessageAPIWithCurlTests(WebhookGatewayBase):
    """The HTTP API on, relaying to the sink, webhooks to the receiver."""

    @defer.inlineCallbacks
    def setUp(self):
        self.curl = require_tool("curl")
        yield WebhookGatewayBase.setUp(self)

    def extra_tables(self):
        return '[http_api]\nendpoint = "tcp:0:interface=127.0.0.1"\n'

    scheme = "http"

    def call(self, route, params):
        """POST C{params} as JSON to C{route} with curl; the decoded answer."""
        def run():
            trust = ["--cacert", self.cert_path] if self.scheme == "https" else []
            result = subprocess.run(
                [self.curl, "-sS", "--fail-with-body", "-X", "POST", *trust,
                 f"{self.scheme}://127.0.0.1:{self.gateway.api_port}/api/v1/{route}",
                 "-H", f"X-Server-API-Key: {self.api_key}",
                 "-H", "Content-Type: application/json", "--data-binary", json.dumps(params)],
                capture_output=True, timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            answer = json.loads(result.stdout)
            self.assertEqual(answer["status"], "success", answer)
            return answer["data"]
        return threads.deferToThread(run)

    subject = "e2e"

    def send(self):
        """Send one message; C{(its ids, its Message-ID or None)}."""
        d = self.call("send/message", {
            "to": ["user@dest.example"], "from": "App <app@good.example>",
            "subject": self.subject, "plain_body": "Hello from curl."})

        def ids(sent):
            [(rcpt, found)] = sent["messages"].items()
            self.assertEqual(rcpt, "user@dest.example")
            return found, sent["message_id"]
        return d.addCallback(ids)

    @defer.inlineCallbacks
    def test_send_poll_and_webhook(self):
        credential = yield self.cli("credential", "add", "acme/web", "--type", "api",
                                    "--json")
        self.api_key = credential["key"]
        yield self.add_webhook("MessageSent")
        public_pem = yield self.public_key()
        ids, message_id = yield self.send()

        deadline = reactor.seconds() + SETTLE_TIMEOUT
        while True:
            message = yield self.call("messages/message",
                                      {"id": ids["id"], "_expansions": ["status", "details"]})
            if message["status"]["status"] == "Sent":
                break
            self.assertIn(message["status"]["status"], ("Pending", "SoftFail"))
            self.assertLess(reactor.seconds(), deadline, message)
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual((message["id"], message["token"]), (ids["id"], ids["token"]))
        self.assertEqual(message["details"]["subject"], self.subject)
        [delivery] = yield self.call("messages/deliveries", {"id": ids["id"]})
        self.assertEqual((delivery["status"], delivery["output"]),
                         ("Sent", "250 2.0.0 Ok: queued"))

        [hit] = yield self.receiver.wait_for_event("MessageSent", ids["token"])
        verify(public_pem, hit)
        webhook_message = hit.json["payload"]["message"]
        self.assertEqual((webhook_message["id"], webhook_message["token"],
                          webhook_message["subject"]), (ids["id"], ids["token"], self.subject))
        if message_id is not None:
            self.assertEqual(webhook_message["message_id"], message_id)


#: where .ci/run installs Postal's Node client (npm install in that folder)
NODE_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")


class MessageAPIWithNodeClientTests(MessageAPIWithCurlTests):
    """The same round trip, sent with Postal's Node client over HTTPS."""

    scheme = "https"
    subject = "from node"

    @defer.inlineCallbacks
    def setUp(self):
        self.node = require_tool("node")
        if not os.path.isdir(os.path.join(NODE_FOLDER, "node_modules", "@atech", "postal")):
            message = "@atech/postal is not installed (npm install in tests/e2e/node)"
            if os.environ.get("CI") == "true":
                raise AssertionError(message + " (CI=true: a missing tool fails the test)")
            raise SkipTest(message)
        yield MessageAPIWithCurlTests.setUp(self)

    def tls_settings(self):
        self.cert_path = os.path.join(self.folder, "cert.pem")
        key_path = os.path.join(self.folder, "key.pem")
        cert, key = make_certificate("localhost")
        with open(self.cert_path, "wb") as f:
            f.write(cert)
        with open(key_path, "wb") as f:
            f.write(key)
        return {"certificate": self.cert_path, "private_key": key_path}

    def extra_tables(self):
        return '[http_api]\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = true\n'

    def send(self):
        def run():
            result = subprocess.run(
                [self.node, os.path.join(NODE_FOLDER, "postal_send.js")],
                capture_output=True, timeout=60, cwd=NODE_FOLDER,
                env=dict(os.environ, MAILGW_API_PORT=str(self.gateway.api_port),
                         MAILGW_API_KEY=self.api_key, NODE_EXTRA_CA_CERTS=self.cert_path))
            self.assertEqual(result.returncode, 0, result.stderr)
            [(rcpt, ids)] = json.loads(result.stdout).items()
            self.assertEqual(rcpt, "user@dest.example")
            return ids, None  # the client does not show the Message-ID
        return threads.deferToThread(run)
