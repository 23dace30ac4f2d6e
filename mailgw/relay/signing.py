"""DKIM signing at send (RFC 6376): the body the relay streams for a message.

A message of a tenant's domain goes out as C{DKIM-Signature header(s) +
stored message}, signed with each active key of the domain recorded on it
(its From's domain, or the C{use_for_any} domain that authorised it): the
RSA key, and an Ed25519 key (RFC 8463) as a second signature when the domain
has one. A message without a recorded domain (a bounce this gateway wrote)
goes out as stored, streamed from the store piece by piece (L{StoreBody}).

Signing needs the whole message: the body hash (RFC 6376 section 3.7) covers
every byte and the signature covers the header fields. The stored message is
therefore read through the store in its pieces into memory, signed in a
thread of the reactor's pool (hashing a large body and the RSA operation are
CPU work that would stall every connection of the reactor thread), and then
handed to the SMTP client from memory. The memory this holds is one message
(bounded by the message size limit) plus its signature, for each delivery
under way, so at most C{concurrency} times the size limit.

A message that cannot be signed (its domain has no active key, is gone, or
has a key that does not load) is not sent unsigned: L{SigningFailure} tells
the relay to hold it with the reason (docs/dkim.md), for the operator to fix
the key and release it. Receivers that enforce DMARC would junk or refuse it
anyway.
"""
from __future__ import annotations

import dkim
from twisted.internet import defer, threads
from twisted.logger import Logger

from mailgw.relay.client import BytesBody
from mailgw.domains.dkim import signing_secret
from mailgw.interfaces import NotFound

log = Logger()

#: the header fields signed when present, each as often as it occurs (RFC
#: 6376 section 5.4.1 lists these as the ones a signature should cover; they
#: are the ones Postal signs). Our own Received header comes first in the
#: stored message and is not signed: later hops add theirs above it, which a
#: signature must survive.
SIGNED_HEADERS = frozenset((
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"in-reply-to",
    b"references", b"list-id", b"list-help", b"list-unsubscribe", b"list-unsubscribe-post",
    b"list-subscribe", b"list-post", b"list-owner", b"list-archive",
))
#: the signature algorithm of each key algorithm (RFC 6376 section 3.3, RFC 8463)
SIGNATURE_ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


class SigningFailure(Exception):
    """A message that must not leave unsigned cannot be signed.

    @ivar reason: what the relay holds it with (no key material in it).
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def signed_headers(message: bytes) -> list[bytes]:
    """The names for C{h=}: each field of L{SIGNED_HEADERS} as often as the
    message has it, and C{from} once more, so that a second From added in
    transit breaks the signature (over-signing, RFC 6376 section 8.15)."""
    headers, _ = dkim.rfc822_parse(message)
    names = [name.lower() for name, _ in headers if name.lower() in SIGNED_HEADERS]
    return names + [b"from"]


class StoreBody:
    """A stored body read piece by piece (never whole) for the DATA phase."""

    def __init__(self, store, message_id: int, size: int):
        self._store, self._message_id, self._size = store, message_id, size
        self._seq = self._read = 0

    @defer.inlineCallbacks
    def next_chunk(self):
        if self._read >= self._size:
            return None
        chunk = yield self._store.read_body_chunk(self._message_id, self._seq)
        if not chunk:
            raise LookupError(f"message {self._message_id} has no piece {self._seq} "
                              "(removed meanwhile?)")
        self._seq += 1
        self._read += len(chunk)
        return chunk


def sign_message(message: bytes, domain: str, selector: str, private_key: str,
                 algorithm: str = "rsa") -> bytes:
    """The C{DKIM-Signature} header field (with its CRLF) for C{message}:
    relaxed/relaxed canonicalisation, rsa-sha256 or ed25519-sha256 (RFC 6376
    sections 3.4 and 3.3, RFC 8463), with no identity of our own (dkimpy
    writes the default, C{i=@d}, RFC 6376 section 3.5). CPU work: call it in
    a thread.

    @param private_key: PEM text from L{mailgw.domains.dkim.generate_key}.
    @raise Exception: the key does not load or cannot sign (dkimpy's errors).
    """
    return dkim.sign(message, selector.encode("ascii"), domain.encode("ascii"),
                     signing_secret(private_key, algorithm),
                     include_headers=signed_headers(message),
                     canonicalize=(b"relaxed", b"relaxed"),
                     signature_algorithm=SIGNATURE_ALGORITHMS[algorithm])


def sign_with_keys(message: bytes, keys) -> bytes:
    """The signature fields of every key in C{keys}, the first key's on top
    (a verifier tries them in order, RFC 6376 section 6.1)."""
    return b"".join(sign_message(message, k.domain, k.selector, k.private_key, k.algorithm)
                    for k in keys)


class Signer:
    """Makes the body the relay sends for a queue entry: signed with the
    active DKIM keys of its sender domain (see the module docstring), or,
    for a message without one, the stored message as it is.

    The key is looked up for every message, not cached: a rotation or a
    replaced bad key then takes effect with the next message, and the look-up
    is one indexed query beside reading the whole body. dkimpy parses the PEM
    on each signature, which costs little beside the RSA operation; caching
    the parsed key would mean reaching into dkimpy's internals.

    @param reactor: its thread pool runs the signing.
    """

    def __init__(self, store, reactor):
        self.store, self.reactor = store, reactor

    @defer.inlineCallbacks
    def body_for(self, entry):
        """@return: Deferred firing with C{(body, size)} for the SMTP client:
        C{body} has C{next_chunk()}, C{size} counts its bytes; failing with
        L{SigningFailure} when the message cannot be signed."""
        if not entry.domain:
            return StoreBody(self.store, entry.message_id, entry.size), entry.size
        keys = yield self._active_keys(entry)
        message = yield self._read(entry)
        try:
            header = yield threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), sign_with_keys, message, keys)
        except Exception as e:
            # dkimpy's errors say what is wrong with a key, never the key
            raise SigningFailure(f"DKIM signing for {entry.domain} failed: "
                                 f"{type(e).__name__}: {e}"[:300]) from None
        log.info("relay: {token}: DKIM-signed for {domain} with {selectors}",
                 token=entry.token, domain=entry.domain,
                 selectors=", ".join(f"{k.selector} ({k.algorithm})" for k in keys))
        signed = header + message
        return BytesBody(signed), len(signed)

    @defer.inlineCallbacks
    def _active_keys(self, entry):
        """The active keys of the message's domain, RSA first (a verifier
        without Ed25519 then meets the signature it knows first).

        @raise SigningFailure: no domain of that name for the message's
            server any more, or no active key.
        """
        try:
            keys = yield self.store.signing_keys(entry.server_id, entry.domain)
        except NotFound:
            raise SigningFailure(f"DKIM: domain {entry.domain} no longer belongs to "
                                 f"server {entry.server}") from None
        if not any(k.algorithm == "rsa" for k in keys):
            raise SigningFailure(f"DKIM: domain {entry.domain} has no active RSA key "
                                 f"(mailgw domain rotate-dkim {entry.domain})")
        return sorted(keys, key=lambda k: k.algorithm != "rsa")

    @defer.inlineCallbacks
    def _read(self, entry) -> bytes:
        body, pieces = StoreBody(self.store, entry.message_id, entry.size), []
        while (chunk := (yield body.next_chunk())) is not None:
            pieces.append(chunk)
        return b"".join(pieces)
