"""From API parameters to a submission: what the two send routes accept.

C{send/message} builds a MIME message here from its fields (stdlib C{email},
CRLF line ends, 7-bit transfer encodings; raw UTF-8 headers only when an
address needs SMTPUTF8, where encoded words would break the address);
C{send/raw} takes a whole RFC 5322 message. Both end as a L{Submission}: the
envelope and the message bytes, ready for the shared commit path.

Everything here is pure (no reactor, no store), so a big request can be decoded
on a worker thread. Problems raise L{APIError} (C{status: "error"} with a code)
or L{ParameterError} (C{status: "parameter-error"}).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, UTC
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import format_datetime

from mailgw.address import AddressError, Mailbox, parse_mailbox_list, parse_path

#: Postal's limit on each of to, cc and bcc
MAX_PER_FIELD = 50

_SEVEN_BIT = email_policy.SMTP.clone(cte_type="7bit")
_UTF8 = email_policy.SMTPUTF8.clone(cte_type="7bit")
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*"
_CONTENT_TYPE = re.compile(f"({_TOKEN})/({_TOKEN})\\Z")
#: headers the API writes itself; C{headers} may not set them
RESERVED_HEADERS = frozenset((
    "from", "sender", "reply-to", "to", "cc", "bcc", "subject", "date", "message-id",
    "mime-version", "content-type", "content-transfer-encoding", "content-disposition",
    "received", "return-path",
))

ERROR_MESSAGES = {
    "AccessDenied": "Must be authenticated as a server.",
    "InvalidServerAPIKey": "The key in X-Server-API-Key is not a valid API key.",
    "ServerSuspended": "The mail server has been suspended.",
    "TooManyAuthenticationFailures":
        "Too many authentication failures from this address, try again later.",
    "NoRecipients": "The message has no recipients (to, cc, bcc or rcpt_to).",
    "NoContent": "The message has no content: give plain_body, html_body or both.",
    "TooManyToAddresses": f"There are more than {MAX_PER_FIELD} To addresses.",
    "TooManyCCAddresses": f"There are more than {MAX_PER_FIELD} CC addresses.",
    "TooManyBCCAddresses": f"There are more than {MAX_PER_FIELD} BCC addresses.",
    "FromAddressMissing": "The From address is missing; it is required.",
    "UnauthenticatedFromAddress":
        "The From address is not authorised to send mail from this server.",
    "AttachmentMissingName": "An attachment has no name.",
    "AttachmentMissingData": "An attachment has no data.",
    "LoopDetected": "The message has passed through this gateway too many times.",
    "TemporaryFailure": "Temporary failure, please try again later.",
    "RouteNotFound": "There is no such API route.",
    "MessageNotFound": "No message found matching provided ID",
}


class APIError(Exception):
    """An C{error} response: a code clients match on, and a message."""

    def __init__(self, code: str, message: str | None = None):
        super().__init__(code)
        self.code = code
        self.message = message if message is not None else ERROR_MESSAGES[code]


class ParameterError(Exception):
    """A C{parameter-error} response: the parameters are missing or malformed."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Submission:
    mail_from: str
    recipients: tuple[str, ...]
    #: the RFC 5322 message, CRLF line ends, without our Received header
    message: bytes
    #: the Message-ID without angle brackets, or None when the message has none
    #: or it is in raw bytes not parsed yet
    message_id: str | None


# -- parameters ---------------------------------------------------------------------

def parse_params(content_type: str, body: bytes, form_value: bytes | None) -> dict:
    """The parameters: a JSON body (C{application/json}), else the JSON in the
    C{params} form field; none at all is an empty object (as in Postal)."""
    if content_type.lower().startswith("application/json"):
        text, where = body, "The request body"
    elif form_value is not None:
        text, where = form_value, "The `params` field"
    else:
        return {}
    if not text.strip():
        return {}
    try:
        params = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ParameterError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(params, dict):
        raise ParameterError(f"{where} must be a JSON object")
    return params


def _string(params: dict, name: str) -> str | None:
    value = params.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ParameterError(f"`{name}` must be a string")


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


def _flag(params: dict, name: str) -> bool:
    value = params.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ParameterError(f"`{name}` must be true or false")


def _mailboxes(text: str, name: str) -> list[Mailbox]:
    try:
        found = parse_mailbox_list(text)
    except AddressError as e:
        raise ParameterError(f"`{name}` has an invalid address {text!r}: {e}") from None
    for mailbox in found:
        if not mailbox.domain:
            raise ParameterError(f"`{name}` has an address without a domain: {text!r}")
    return found


def _address_field(params: dict, name: str) -> tuple[list[str], list[Mailbox]]:
    """The entries as given (for the header) and every mailbox in them. A
    string is taken as one comma-separated address list, as Postal does."""
    value = params.get(name)
    if value is None:
        return [], []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ParameterError(f"`{name}` must be an array of e-mail addresses")
    entries = [v.strip() for v in value if v.strip()]
    return entries, [m for entry in entries for m in _mailboxes(entry, name)]


def _unique(mailboxes, allow_address_literals: bool) -> tuple[str, ...]:
    """The recipients, each once (L{Mailbox.recipient_key}), as SMTP merges them."""
    seen = {}
    for mailbox in mailboxes:
        if mailbox.is_address_literal and not allow_address_literals:
            raise ParameterError(f"{mailbox} has an address literal as its domain; "
                                 "address literals are not accepted")
        seen.setdefault(mailbox.recipient_key, str(mailbox))
    return tuple(seen.values())


# -- send/message ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Attachment:
    name: str
    maintype: str
    subtype: str
    data: bytes


def _attachments(params: dict) -> list[_Attachment]:
    value = params.get("attachments")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(a, dict) for a in value):
        raise ParameterError("`attachments` must be an array of objects "
                             "(name, content_type, data)")
    result = []
    for number, item in enumerate(value, 1):
        name = _string(item, "name")
        data = _string(item, "data")
        content_type = _string(item, "content_type") or "application/octet-stream"
        if _blank(name):
            raise APIError("AttachmentMissingName")
        if _blank(data):
            raise APIError("AttachmentMissingData")
        match = _CONTENT_TYPE.match(content_type.strip())
        if match is None or match.group(1).lower() == "multipart":
            raise ParameterError(
                f"attachment {number}: `content_type` must be type/subtype")
        try:
            raw = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ParameterError(
                f"attachment {number}: `data` is not valid base64") from None
        result.append(_Attachment(name.strip(), match.group(1).lower(),
                                  match.group(2).lower(), raw))
    return result


def _custom_headers(params: dict) -> list[tuple[str, str]]:
    value = params.get("headers")
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ParameterError("`headers` must be an object of header names and values")
    result = []
    for name, text in value.items():
        if text is None:
            continue
        if not _FIELD_NAME.match(name):
            raise ParameterError(f"`headers`: {name!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise ParameterError(f"`headers` may not set {name}: it is written by the API "
                                 "(use the parameter of that name where there is one)")
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            raise ParameterError(f"`headers`: the value of {name} must be a string")
        result.append((name, str(text)))
    return result


@dataclass(frozen=True)
class _MessageFields:
    """The validated C{send/message} parameters."""
    to: str
    cc: str
    recipients: tuple[str, ...]
    envelope: str
    author: str
    sender: str | None
    reply_to: str | None
    subject: str | None
    plain: str | None
    html: str | None
    headers: list[tuple[str, str]]
    attachments: list[_Attachment]
    utf8: bool


def compose_message(params: dict, *, hostname: str, now: float,
                    max_recipients: int, allow_address_literals: bool = False) -> Submission:
    """Validate the C{send/message} fields (in Postal's order) and build the
    message. The From/Sender authorisation is the commit's job."""
    fields = _message_fields(params, max_recipients, allow_address_literals)
    message_id = f"{uuid.uuid4()}@{hostname}"
    return Submission(fields.envelope, fields.recipients,
                      _build(fields, message_id, now), message_id)


def _message_fields(params: dict, max_recipients: int,
                    allow_address_literals: bool) -> _MessageFields:
    to, to_boxes = _address_field(params, "to")
    cc, cc_boxes = _address_field(params, "cc")
    _, bcc_boxes = _address_field(params, "bcc")
    sender, from_ = _string(params, "sender"), _string(params, "from")
    reply_to, subject = _string(params, "reply_to"), _string(params, "subject")
    plain, html = _string(params, "plain_body"), _string(params, "html_body")
    _string(params, "tag")  # accepted for compatibility, not stored
    bounce = _flag(params, "bounce")
    headers = _custom_headers(params)
    if not (to_boxes or cc_boxes or bcc_boxes):
        raise APIError("NoRecipients")
    for boxes, code in ((to_boxes, "TooManyToAddresses"), (cc_boxes, "TooManyCCAddresses"),
                        (bcc_boxes, "TooManyBCCAddresses")):
        if len(boxes) > MAX_PER_FIELD:
            raise APIError(code)
    recipients = _unique(to_boxes + cc_boxes + bcc_boxes, allow_address_literals)
    _check_recipient_count(recipients, max_recipients)
    if _blank(plain) and _blank(html):
        raise APIError("NoContent")
    author = [] if _blank(from_) else _mailboxes(from_.strip(), "from")
    if not author:  # missing, or an empty group ("undisclosed:;")
        raise APIError("FromAddressMissing")
    sender_boxes = [] if _blank(sender) else _mailboxes(sender.strip(), "sender")
    if len(sender_boxes) > 1:
        raise ParameterError("`sender` must be one address")
    if not _blank(reply_to):
        _mailboxes(reply_to.strip(), "reply_to")
    attachments = _attachments(params)
    shown = author + sender_boxes + to_boxes + cc_boxes
    return _MessageFields(
        to=", ".join(to), cc=", ".join(cc), recipients=recipients,
        envelope="" if bounce else str((sender_boxes or author)[0]),
        author=from_, sender=sender, reply_to=reply_to, subject=subject, plain=plain,
        html=html, headers=headers, attachments=attachments,
        utf8=not all(str(m).isascii() for m in shown))


def _build(fields: _MessageFields, message_id: str, now: float) -> bytes:
    """The message bytes: our headers, the custom ones, then the MIME body."""
    message = EmailMessage(policy=_UTF8 if fields.utf8 else _SEVEN_BIT)
    ours = [("Date", format_datetime(datetime.fromtimestamp(now, UTC))),
            ("From", fields.author), ("Sender", fields.sender),
            ("Reply-To", fields.reply_to), ("To", fields.to), ("Cc", fields.cc)]
    ours = [(name, text.strip()) for name, text in ours if not _blank(text)]
    if fields.subject is not None:
        ours.append(("Subject", fields.subject))
    ours.append(("Message-ID", f"<{message_id}>"))
    try:
        for name, text in ours + fields.headers:
            message[name] = text
        _set_body(message, fields.plain, fields.html, fields.attachments)
        return message.as_bytes()
    except (ValueError, TypeError) as e:
        raise ParameterError(f"The message cannot be built: {e}") from None


def _set_body(message: EmailMessage, plain, html, attachments) -> None:
    if not _blank(plain):
        message.set_content(plain)
        if not _blank(html):
            message.add_alternative(html, subtype="html")
    else:
        message.set_content(html, subtype="html")
    for a in attachments:
        message.add_attachment(a.data, maintype=a.maintype, subtype=a.subtype,
                               filename=a.name)
    for part in message.walk():
        if part is not message:
            del part["MIME-Version"]  # the email package repeats it in every part


def _check_recipient_count(recipients, max_recipients: int) -> None:
    if len(recipients) > max_recipients:
        raise APIError("TooManyRecipients",
                       f"There are more than {max_recipients} recipients.")


# -- send/raw --------------------------------------------------------------------------

def raw_submission(params: dict, *, max_size: int, max_recipients: int,
                   allow_address_literals: bool = False) -> Submission:
    """Validate C{send/raw}: C{mail_from}, C{rcpt_to} and base64 C{data}."""
    rcpt_to, mail_from = params.get("rcpt_to"), params.get("mail_from")
    data = params.get("data")
    if not isinstance(rcpt_to, list) or not all(isinstance(r, str) for r in rcpt_to):
        raise ParameterError("`rcpt_to` is required: an array of e-mail addresses")
    if not isinstance(mail_from, str) or not mail_from.strip():
        raise ParameterError("`mail_from` is required: the envelope sender address")
    if not isinstance(data, str) or not data.strip():
        raise ParameterError("`data` is required: the message, base64-encoded")
    bounce = _flag(params, "bounce")
    recipients = _unique([_envelope_address(r, "rcpt_to", allow_empty=False)
                          for r in rcpt_to if r.strip()], allow_address_literals)
    sender = _envelope_address(mail_from, "mail_from", allow_empty=True)
    sender = str(sender) if sender is not None else ""
    if not recipients:
        raise APIError("NoRecipients")
    _check_recipient_count(recipients, max_recipients)
    compact = "".join(data.split())
    if len(compact) // 4 * 3 > max_size + 3:
        raise too_large(max_size)
    try:
        message = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ParameterError("`data` is not valid base64") from None
    # Line ends, the header section and the From are the submission core's job.
    return Submission("" if bounce else sender, recipients, message, None)


def _envelope_address(text: str, name: str, *, allow_empty: bool) -> Mailbox | None:
    try:
        mailbox = parse_path(text, allow_empty=allow_empty)
    except AddressError as e:
        raise ParameterError(f"`{name}` has an invalid address {text!r}: {e}") from None
    if mailbox is not None and not mailbox.domain:
        raise ParameterError(f"`{name}` has an address without a domain: {text!r}")
    return mailbox


def too_large(max_size: int) -> APIError:
    return APIError("MessageTooLarge",
                    f"Message too large (maximum size {max_size // (1024 * 1024)}MB)")
