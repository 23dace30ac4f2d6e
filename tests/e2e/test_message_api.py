"""End to end, as an application uses Postal: send with curl through the HTTP
API, poll the message's status with curl (``messages/message`` and
``messages/deliveries``) until the relay has delivered it, and receive the
signed ``MessageSent`` webhook about the same message (same id and token).

Postal's Node client (``@atech/postal``) is not used: it has only the send
calls, and it always connects to port 443 of the host it is given.
"""
from __future__ import annotations

import json
import subprocess

from twisted.internet import defer, reactor, task, threads

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

    def call(self, route, params):
        """POST C{params} as JSON to C{route} with curl; the decoded answer."""
        def run():
            result = subprocess.run(
                [self.curl, "-sS", "--fail-with-body", "-X", "POST",
                 f"http://127.0.0.1:{self.gateway.api_port}/api/v1/{route}",
                 "-H", f"X-Server-API-Key: {self.api_key}",
                 "-H", "Content-Type: application/json", "--data-binary", json.dumps(params)],
                capture_output=True, timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            answer = json.loads(result.stdout)
            self.assertEqual(answer["status"], "success", answer)
            return answer["data"]
        return threads.deferToThread(run)

    @defer.inlineCallbacks
    def test_send_poll_and_webhook(self):
        credential = yield self.cli("credential", "add", "acme/web", "--type", "api",
                                    "--json")
        self.api_key = credential["key"]
        yield self.add_webhook("MessageSent")
        public_pem = yield self.public_key()
        sent = yield self.call("send/message", {
            "to": ["user@dest.example"], "from": "App <app@good.example>",
            "subject": "e2e", "plain_body": "Hello from curl."})
        [(rcpt, ids)] = sent["messages"].items()
        self.assertEqual(rcpt, "user@dest.example")

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
        self.assertEqual(message["details"]["subject"], "e2e")
        [delivery] = yield self.call("messages/deliveries", {"id": ids["id"]})
        self.assertEqual((delivery["status"], delivery["output"]),
                         ("Sent", "250 2.0.0 Ok: queued"))

        [hit] = yield self.receiver.wait_for_event("MessageSent", ids["token"])
        verify(public_pem, hit)
        webhook_message = hit.json["payload"]["message"]
        self.assertEqual((webhook_message["id"], webhook_message["token"],
                          webhook_message["subject"], webhook_message["message_id"]),
                         (ids["id"], ids["token"], "e2e", sent["message_id"]))
