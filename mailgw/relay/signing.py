"""DKIM signing at send (RFC 6376): the body the relay streams for a message.

A message whose sender domain has an active DKIM key goes out as
C{DKIM-Signature header + stored message}; any other message goes out as
stored, streamed from the store piece by piece (L{StoreBody}).

Signing needs the whole message: the body hash (RFC 6376 section 3.7) covers
every byte and the signature covers the header fields. The stored message is
therefore read through the store in its pieces into memory, signed in a
thread of the reactor's pool (hashing a large body and the RSA operation are
CPU work that would stall every connection of the reactor thread), and then
handed to the SMTP client from memory. The memory this holds is one message
(bounded by the message size limit) plus its signature, for each delivery
under way, so at most C{concurrency} times the size limit.

A signing failure (a key that does not load, an algorithm this node cannot
sign with) never loses or delays mail: the message is sent unsigned and an
error is logged. An unsigned message is what a domain without a key sends,
and receivers treat it as such (RFC 6376 section 6.1: a missing or failing
signature is no worse than none); holding the mail back would turn a key
problem into an outage of the domain's mail.
"""
from __future__ import annotations

import dkim
from twisted.internet import defer, threads
from twisted.logger import Logger

from mailgw.relay.client import BytesBody
from mailgw.interfaces import Conflict, NotFound

log = Logger()

#: the header fields signed (RFC 6376 section 5.4.1 lists these as the ones
#: a signature should cover). dkimpy names them all in h=, present or not: a
#: field named but absent signs as empty, so one added later in transit (a
#: second From, a Cc) breaks the signature (RFC 6376 sections 5.4 and 8.15).
#: Our own Received header comes first in the stored message and is not
#: signed: later hops add theirs above it, which a signature must survive.
SIGNED_HEADERS = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"sender",
    b"mime-version", b"content-type", b"content-transfer-encoding",
)


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


def sign_message(message: bytes, domain: str, selector: str, private_key: str) -> bytes:
    """The C{DKIM-Signature} header field (with its CRLF) for C{message}:
    relaxed/relaxed canonicalisation, rsa-sha256 (RFC 6376 sections 3.4 and
    3.3), with no identity of our own (dkimpy writes the default, C{i=@d},
    RFC 6376 section 3.5). CPU work: call it in a thread.

    @raise Exception: the key does not load or cannot sign (dkimpy's errors).
    """
    return dkim.sign(message, selector.encode("ascii"), domain.encode("ascii"),
                     private_key.encode("ascii"), include_headers=list(SIGNED_HEADERS),
                     canonicalize=(b"relaxed", b"relaxed"),
                     signature_algorithm=b"rsa-sha256")


class Signer:
    """Makes the body the relay sends for a queue entry: signed with the
    sender domain's active DKIM key when it has one (see the module
    docstring), else the stored message as it is.

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
        C{body} has C{next_chunk()}, C{size} counts its bytes."""
        key = yield self._active_key(entry.domain)
        if key is None:
            return StoreBody(self.store, entry.message_id, entry.size), entry.size
        if key.algorithm != "rsa":
            # Ed25519 (RFC 8463) needs PyNaCl in dkimpy, which this node does
            # not require: such a domain's mail goes out unsigned
            log.error("relay: {token}: DKIM key {selector} of {domain} is {algorithm}, which "
                      "this node cannot sign with; sending unsigned", token=entry.token,
                      selector=key.selector, domain=key.domain, algorithm=key.algorithm)
            return StoreBody(self.store, entry.message_id, entry.size), entry.size
        message = yield self._read(entry)
        try:
            header = yield threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), sign_message, message,
                key.domain, key.selector, key.private_key)
        except Exception as e:
            log.error("relay: {token}: DKIM signing for {domain} (selector {selector}) "
                      "failed, sending unsigned: {error}", token=entry.token,
                      domain=key.domain, selector=key.selector, error=repr(e))
            return BytesBody(message), len(message)
        log.info("relay: {token}: DKIM-signed for {domain} with selector {selector}",
                 token=entry.token, domain=key.domain, selector=key.selector)
        signed = header + message
        return BytesBody(signed), len(signed)

    @defer.inlineCallbacks
    def _active_key(self, domain):
        """The domain's active key, or C{None}: no domain, no key, only
        retiring ones (a rotation signs with the new key only), or a name
        with several owners (whose key would be a guess)."""
        if not domain:
            return None
        try:
            keys = yield self.store.dkim_keys(domain)
        except Conflict as e:
            log.warn("relay: not DKIM-signing for {domain}: {error}", domain=domain,
                     error=str(e))
            return None
        except (NotFound, ValueError):  # no such domain (any more), or no domain name
            return None
        if not keys or keys[0].retiring:
            return None
        return keys[0]

    @defer.inlineCallbacks
    def _read(self, entry) -> bytes:
        body, pieces = StoreBody(self.store, entry.message_id, entry.size), []
        while (chunk := (yield body.next_chunk())) is not None:
            pieces.append(chunk)
        return b"".join(pieces)
