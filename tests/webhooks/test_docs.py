"""The example receiver of docs/webhooks.md, run as written (its port the
only change): it accepts a request the gateway's sender signs and refuses one
whose body was changed on the way."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailgw.webhooks.sender import RequestSender
from mailgw.webhooks.signing import RequestSigner
from tests.webhooks.test_service import signing_key

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "docs", "webhooks.md")


def example_receiver() -> str:
    with open(DOCS, encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    [receiver] = [b for b in blocks if "HTTPServer" in b]
    return receiver


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ForgingSigner:
    """Signs the body, then the body is changed: what an attacker sends."""

    def __init__(self, signer):
        self.signer = signer

    def headers(self, body):
        return self.signer.headers(body.replace(b"MessageSent", b"MessageHeld"))


class ExampleReceiverTests(unittest.TestCase):
    def setUp(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.signer = RequestSigner(signing_key())
        with open(os.path.join(folder, "mailgw-webhooks.pem"), "w") as f:
            f.write(self.signer.public_pem)
        self.port = free_port()
        code = example_receiver().replace('("0.0.0.0", 8080)', f'("127.0.0.1", {self.port})')
        self.assertIn(str(self.port), code)
        self.process = subprocess.Popen([sys.executable, "-u", "-c", code], cwd=folder,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.addCleanup(self.stop)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                self.assertIsNone(self.process.poll(), "the example receiver exited")
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.05)

    def stop(self):
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()

    @defer.inlineCallbacks
    def test_signed_accepted_forged_refused(self):
        body = b'{"event":"MessageSent","timestamp":1.0,"payload":{"status":"Sent"},"uuid":"u1"}'
        url = f"http://127.0.0.1:{self.port}/hook"
        sender = RequestSender(reactor, self.signer, allow_private=True, timeout=10)
        self.assertEqual((yield sender.send(url, body)).status_code, 200)
        forger = RequestSender(reactor, ForgingSigner(self.signer), allow_private=True,
                               timeout=10)
        self.assertEqual((yield forger.send(url, body)).status_code, 403)
        self.process.kill()
        printed = self.process.stdout.read().decode()
        self.assertEqual(printed, "MessageSent u1 Sent\n")
