"""The header section, parsed once and strictly (RFC 5322 §2.2, §3.6).

Whatever a later parser might read differently from us is refused rather than
guessed at: a bare CR (Python's C{email} package and several MTAs end lines
on it, RFC 5321 §2.3.8 lets a server refuse it), a NUL byte, a field name
that is not printable ASCII, a line that is neither a field nor a
continuation (a name with white space before its colon is one: RFC 5322 calls
it obsolete and common parsers disagree on it), and a continuation of white
space only (some parsers take it for the empty line that ends the section),
and a From or Sender field folded inside a quoted string or a comment (Python's
C{email} with its compat32 policy then reads the address list differently: a
display name C{"<fold> ceo@foreign.test, "} becomes a mailbox). Bare LF line
ends are the one fault normalised: they become CRLF, as in the body.

See C{docs/submission.md} for the whole list of refusals.
"""
from __future__ import annotations

import re

from mailgw.submission.refusals import MalformedHeaderSection

# field-name is printable ASCII except ':'. RFC 5322's obs-optional WSP before
# the colon is refused: Python's email and others do not read such a line as a field.
_FIELD = re.compile(rb"([!-9;-~]+):(.*)", re.DOTALL)
_ANY_NAME = re.compile(rb"([^ \t:]+)[ \t]*:")
#: the end of the header section in bytes not yet canonicalised
HEAD_END = re.compile(rb"\n\r?\n")


def canonical_header_section(raw: bytes) -> bytes:
    """C{raw} (the header section up to and including its empty line, as it
    arrived) with every line ending in CRLF.

    @raise MalformedHeaderSection: a NUL byte or a bare CR.
    """
    if b"\0" in raw:
        raise MalformedHeaderSection(MalformedHeaderSection.NUL)
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf:
        raise MalformedHeaderSection(MalformedHeaderSection.BARE_CR)
    if raw.count(b"\n") != crlf:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return raw


def parse_fields(section: bytes) -> list[tuple[str, str]]:
    """C{(lower-cased name, unfolded value)} for each field of a canonical
    (CRLF-only) header section, in order, up to its empty line.

    Values are decoded as UTF-8 with C{surrogateescape}: a stray non-UTF-8
    byte survives as a lone surrogate, which the address parser rejects
    rather than a character it might accept.

    @raise MalformedHeaderSection: a line that is not a field or a proper
        continuation, or a field name that is not printable ASCII.
    """
    fields: list[tuple[str, list[bytes]]] = []
    current: list[bytes] | None = None
    for line in section.split(b"\r\n"):
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if current is None:
                raise MalformedHeaderSection(MalformedHeaderSection.NOT_A_FIELD)
            if not line.strip(b" \t"):
                raise MalformedHeaderSection(MalformedHeaderSection.BLANK_CONTINUATION)
            current.append(line)  # unfolding keeps the white space, drops the CRLF
            continue
        match = _FIELD.fullmatch(line)
        if match is None:
            fault = (MalformedHeaderSection.NAME if _ANY_NAME.match(line)
                     else MalformedHeaderSection.NOT_A_FIELD)
            raise MalformedHeaderSection(fault)
        current = [match.group(2)]
        fields.append((match.group(1).decode("ascii").lower(), current))
    for name, parts in fields:
        if len(parts) > 1 and name in _SENDER_FIELDS and _folded_inside_quote(parts):
            raise MalformedHeaderSection(MalformedHeaderSection.FOLD_IN_QUOTE)
    return [(name, _decode(b"".join(parts))) for name, parts in fields]


#: the fields the sender policy reads (mailgw.submission.policy)
_SENDER_FIELDS = frozenset(("from", "sender"))


def _folded_inside_quote(lines: list[bytes]) -> bool:
    """Whether a fold of the field whose lines are C{lines} falls inside a
    quoted string or a comment (RFC 5322 §3.2.4, §3.2.2), a backslash
    escaping the next character in either."""
    quoted, depth = False, 0
    for number, line in enumerate(lines):
        if number and (quoted or depth):
            return True
        i, n = 0, len(line)
        while i < n:
            c = line[i]
            if (quoted or depth) and c == 0x5C:  # backslash: the next is literal
                i += 2
                continue
            if quoted:
                quoted = c != 0x22
            elif depth:
                depth += (c == 0x28) - (c == 0x29)
            elif c == 0x22:
                quoted = True
            elif c == 0x28:
                depth = 1
            i += 1
    return False


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape").strip(" \t")
