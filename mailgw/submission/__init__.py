"""The protocol-neutral end of a submission, shared by SMTP and the HTTP API.

Both adapters hand the message bytes to an L{IncomingMessage} (which makes
every line end in CRLF and keeps the header section whole), then ask the
L{SubmissionCore} to finish it: the header section is parsed once, strictly;
size, loop and From/Sender are checked in the wire contract's order; holds
are decided; the body and one queue entry per recipient are committed. Every
refusal is a L{Refusal} subclass, which each adapter words for its own wire.

The invariant (see C{docs/submission.md}): the bytes the policy parsed are
exactly the bytes stored and relayed, and every stored line ends in CRLF.
"""
from mailgw.submission.core import (
    CoreSettings, QUEUE_ID_LENGTH, SubmissionCore, received_header,
)
from mailgw.submission.message import IncomingMessage
from mailgw.submission.refusals import (
    CredentialGone, HeaderSectionTooLarge, LoopDetected, MalformedBody,
    MalformedHeaderSection, MessageTooLarge, Refusal, SenderNotAuthorised, ServerSuspended,
    SpoolFailure,
)

__all__ = [
    "CoreSettings", "CredentialGone", "HeaderSectionTooLarge", "IncomingMessage",
    "LoopDetected", "MalformedBody", "MalformedHeaderSection", "MessageTooLarge",
    "QUEUE_ID_LENGTH", "Refusal", "SenderNotAuthorised", "ServerSuspended",
    "SpoolFailure", "SubmissionCore", "received_header",
]
