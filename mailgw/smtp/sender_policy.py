"""The From/Sender rule (spec §7): may this message's author addresses be sent by this server?

Pure functions over the raw header block and the set of domains the server may use.
The caller (the message sink) looks up the verified domains, calls :func:`check_sender`
at the final dot and answers ``530 From/Sender name is not valid`` when it returns
``None``; the domain it returns is recorded with the message and later picks the DKIM key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgw.address import AddressError, parse_mailbox_list, normalise_domain

__all__ = ["AuthorisedDomains", "header_fields", "check_sender", "check_sender_fields"]

# field-name is printable ASCII except ':'; obs-optional allows WSP before the colon.
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:(.*)", re.DOTALL)
_LINE_END = re.compile(rb"\r?\n")


@dataclass(frozen=True)
class AuthorisedDomains:
    """What a server may send as.

    ``names`` holds :func:`~mailgw.address.normalise_domain` forms of the *verified*
    domains owned by the server or its organization; ``any_domain`` is true when the
    server owns a verified ``use_for_any`` domain.
    """

    names: frozenset[str]
    any_domain: bool


def header_fields(header_block: bytes) -> list[tuple[str, str]]:
    """Return ``(lower-cased name, unfolded value)`` for each header field, in order.

    The block ends at the first empty line.  Values are decoded as UTF-8 with
    ``surrogateescape``, so a stray non-UTF-8 byte survives as a lone surrogate that the
    address parser rejects rather than a character it might accept.  Lines that are
    neither a field nor a continuation are not fields, and end the field before them.
    """
    fields: list[tuple[str, list[bytes]]] = []
    current: list[bytes] | None = None
    for line in _LINE_END.split(header_block):
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)  # unfolding keeps the white space, drops the CRLF
            continue
        match = _FIELD.fullmatch(line)
        if match is None:
            current = None
            continue
        current = [match.group(2)]
        fields.append((match.group(1).decode("ascii").lower(), current))
    return [(name, _decode(b"".join(parts))) for name, parts in fields]


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape").strip(" \t")


def check_sender(
    header_block: bytes, *, allow_sender_header: bool, authorised: AuthorisedDomains
) -> str | None:
    """Return the normalised domain of the first passing header, or ``None``.

    ``From:`` is tried first (every ``From:`` field together), then ``Sender:`` only when
    *allow_sender_header*.  A header passes when it parses, names at least one mailbox,
    and every mailbox's domain is authorised.  There is no parent/sub-domain matching.
    """
    return check_sender_fields(header_fields(header_block),
                               allow_sender_header=allow_sender_header, authorised=authorised)


def check_sender_fields(
    fields: list[tuple[str, str]], *, allow_sender_header: bool, authorised: AuthorisedDomains
) -> str | None:
    """L{check_sender} on fields already split by L{header_fields} (the end of
    DATA has them for the loop check, so the block is parsed once)."""
    from_values = [value for name, value in fields if name == "from"]
    domain = _passing_domain(from_values, authorised)
    if domain is None and allow_sender_header:
        sender_values = [value for name, value in fields if name == "sender"]
        # RFC 5322 allows one Sender:; several are ambiguous, so none of them counts.
        if len(sender_values) == 1:
            domain = _passing_domain(sender_values, authorised)
    return domain


def _passing_domain(values: list[str], authorised: AuthorisedDomains) -> str | None:
    try:
        mailboxes = [mailbox for value in values for mailbox in parse_mailbox_list(value)]
    except AddressError:
        return None
    domains = [normalise_domain(mailbox.domain) for mailbox in mailboxes]
    if not domains or None in domains:
        return None
    if not authorised.any_domain and not authorised.names.issuperset(domains):
        return None
    return domains[0]
