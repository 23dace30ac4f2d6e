"""A webhook receiver for the tests: a real twisted.web HTTPS site on
loopback, with a self-signed certificate for localhost and 127.0.0.1 (its PEM
written for the gateway's C{[webhooks] ca_certificates}).

It records every request (method, path, headers, body), answers with the
scripted status codes (then 200), and can stop listening and listen again on
the same port, to play a receiver that is down for a while. The signature
checks are written independently of the gateway's signer, from Postal's
documentation (docs/webhooks.md): RSASSA-PKCS1-v1_5 over the body.
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from twisted.internet import defer, reactor
from twisted.web import resource, server

from tests.relay.sink import certificate

#: the keys of Postal's payloads, per event (lib/postal/message_db/delivery.rb
#: and message.rb in Postal)
MESSAGE_KEYS = {"id", "token", "direction", "message_id", "to", "from", "subject",
                "timestamp", "spam_status", "tag"}
DELIVERY_KEYS = {"message", "status", "details", "output", "sent_with_ssl", "timestamp",
                 "time"}
BOUNCE_KEYS = {"original_message", "bounce"}


@dataclass
class Hit:
    """One request the receiver got."""
    method: bytes
    path: bytes
    headers: dict
    body: bytes
    answered: int

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class _Hook(resource.Resource):
    isLeaf = True

    def __init__(self, receiver):
        super().__init__()
        self.receiver = receiver

    def render(self, request):
        code = self.receiver.codes.pop(0) if self.receiver.codes else 200
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        hit = Hit(request.method, request.path, headers, request.content.read(), code)
        request.setResponseCode(code)
        if 300 <= code < 400:
            request.setHeader(b"location", b"http://169.254.169.254/latest/meta-data/")
        self.receiver.record(hit)
        return b"ok\n"


class Receiver:
    """The HTTPS receiver; C{url} once listening."""

    def __init__(self, folder: str):
        self.codes = []
        self.hits = []
        self._waiters = []
        self.port = None
        self._listening = None
        options, public = certificate("localhost")
        self._options = options
        self.ca_path = os.path.join(folder, "receiver-ca.pem")
        with open(self.ca_path, "wb") as f:
            f.write(public.dumpPEM())
        site = server.Site(_Hook(self))
        site.noisy = False
        self._site = site

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hook"

    def listen(self, testcase=None):
        self._listening = reactor.listenSSL(self.port or 0, self._site, self._options,
                                            interface="127.0.0.1")
        self.port = self._listening.getHost().port
        if testcase is not None:
            testcase.addCleanup(self.stop)
        return self.port

    def stop(self):
        """Stop listening (the port stays ours to listen on again)."""
        listening, self._listening = self._listening, None
        if listening is not None:
            return listening.stopListening()
        return defer.succeed(None)

    def record(self, hit: Hit):
        self.hits.append(hit)
        for waiter in list(self._waiters):
            test, d = waiter
            if test(self.hits):
                self._waiters.remove(waiter)
                d.callback(list(self.hits))

    def wait_until(self, test, timeout: float = 30.0):
        """Fires with the hits once C{test(hits)} holds (bounded)."""
        if test(self.hits):
            return defer.succeed(list(self.hits))
        d = defer.Deferred()
        self._waiters.append((test, d))
        return d.addTimeout(timeout, reactor)

    def events(self, name: str, token: str | None = None) -> list[Hit]:
        """The hits of event C{name} (about the message C{token})."""
        found = [h for h in self.hits if h.json["event"] == name]
        if token is not None:
            found = [h for h in found if _token_of(h.json) == token]
        return found

    def wait_for_event(self, name: str, token: str | None = None, count: int = 1):
        return self.wait_until(lambda hits: len(self.events(name, token)) >= count).addCallback(
            lambda _: self.events(name, token))


def _token_of(body: dict) -> str | None:
    payload = body["payload"]
    message = payload.get("message") or payload.get("original_message") or {}
    return message.get("token")


def verify(public_pem: bytes, hit: Hit) -> None:
    """Check both of Postal's signatures of C{hit} with C{public_pem}.

    @raise AssertionError: one is missing or wrong.
    """
    key = serialization.load_pem_public_key(public_pem)
    for header, algorithm in (("X-Postal-Signature", hashes.SHA1()),
                              ("X-Postal-Signature-256", hashes.SHA256())):
        value = hit.header(header)
        if value is None:
            raise AssertionError(f"{header} missing")
        try:
            key.verify(base64.b64decode(value), hit.body, padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise AssertionError(f"{header} does not verify with the printed key") from None
