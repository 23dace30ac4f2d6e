"""One message while DATA arrives: the body streams to a spool file (in memory
while small, on disk beyond), the header block is kept for the end-of-data
checks, and nothing past the size limit is kept at all.

At the final dot L{SubmissionMessage.finish} runs the checks of spec §6 in
order (size, loop, From/Sender) and commits the message through the queue;
only when that commit has happened does it fire with the queue id.
"""
from __future__ import annotations

import functools
import re
import tempfile

from twisted.internet import defer

from mailgw.smtp import replies
from mailgw.smtp.sender_policy import AuthorisedDomains, check_sender_fields, header_fields

#: bodies up to this size never touch the disk before the commit
SPOOL_MEMORY = 256 * 1024
#: the header block kept for the checks; a longer one is cut (and then fails
#: the From check unless From came early)
MAX_HEADER_BLOCK = 1024 * 1024
MAX_OWN_RECEIVED = 4


class SubmissionMessage:
    def __init__(self, delivery, token: str, mail_from: str, recipients,
                 max_size: int, spool_directory: str | None):
        self._delivery = delivery
        self.token = token
        self.mail_from = mail_from
        self.recipients = tuple(recipients)
        self._max_size = max_size
        self._spool = tempfile.SpooledTemporaryFile(
            max_size=SPOOL_MEMORY, dir=spool_directory, prefix="mailgw-")
        self.size = 0
        self._headers = bytearray()
        self._headers_done = False

    def write(self, chunk: bytes) -> None:
        """Append body bytes (already unstuffed, CRLF line ends)."""
        self.size += len(chunk)
        if not self._headers_done:
            self._collect_headers(chunk)
        if self.size <= self._max_size:
            self._spool.write(chunk)

    def _collect_headers(self, chunk: bytes) -> None:
        start = max(0, len(self._headers) - 3)
        self._headers += chunk
        end = self._headers.find(b"\r\n\r\n", start)
        if end >= 0:
            del self._headers[end + 2:]
            self._headers_done = True
        elif self._headers.startswith(b"\r\n"):
            # The body starts with an empty line: there are no headers.
            self._headers.clear()
            self._headers_done = True
        elif len(self._headers) > MAX_HEADER_BLOCK:
            del self._headers[MAX_HEADER_BLOCK:]
            self._headers_done = True

    def abort(self) -> None:
        self._spool.close()

    @defer.inlineCallbacks
    def finish(self):
        try:
            if self.size > self._max_size:
                raise replies.too_large(self._max_size)
            fields = header_fields(bytes(self._headers))
            if own_received_count(fields, self._delivery.hostname) > MAX_OWN_RECEIVED:
                raise replies.LOOP_DETECTED
            token = yield self._delivery.commit(self, fields, self._spool)
            return token
        finally:
            self._spool.close()


@functools.lru_cache(maxsize=8)
def _by_host(hostname: str):
    # One pattern per host name, not one per message.
    return re.compile(r"(?:^|[\s;(])by\s+" + re.escape(hostname) + r"(?![\w.-])",
                      re.IGNORECASE)


def own_received_count(fields, hostname: str) -> int:
    """How many Received fields name C{by <hostname>}."""
    pattern = _by_host(hostname)
    return sum(1 for name, value in fields if name == "received" and pattern.search(value))


def sender_domain(fields, server, names, any_domain) -> str:
    """The From/Sender check of spec §7 on the parsed header fields; raises the
    530 reply when it fails."""
    domain = check_sender_fields(
        fields, allow_sender_header=server.allow_sender_header,
        authorised=AuthorisedDomains(frozenset(names), any_domain))
    if domain is None:
        raise replies.SENDER_NOT_VALID
    return domain
