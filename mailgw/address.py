"""Addresses as mailgw sees them: RFC 5321 envelope paths, RFC 5322 mailbox lists, domains.

This module owns the syntax of addresses and nothing else: it never looks anything up.
Envelope paths (``MAIL FROM``/``RCPT TO``) follow RFC 5321 with the SMTPUTF8 extension
(RFC 6531); header mailbox lists (``From:``, ``Sender:``) follow RFC 5322 with RFC 6532
UTF-8 and the obsolete forms a receiver must accept.  Domains are compared only through
:func:`normalise_domain`, which gives one ASCII spelling per name.

The header parser decides who a user may send as, so it is a strict hand-written
tokenizer and recursive-descent parser that runs in linear time: anything that is not
a well-formed list raises :class:`AddressError` instead of being guessed at.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

try:
    import idna as _idna
except ImportError:  # pragma: no cover - Twisted[tls] installs it
    _idna = None

__all__ = [
    "AddressError",
    "Mailbox",
    "normalise_domain",
    "parse_path",
    "split_mail_argument",
    "parse_mailbox_list",
]

# RFC 6531/6532 add UTF8-non-ascii to atext, qtext, ctext and dtext.  C1 controls and
# lone surrogates (what a non-UTF-8 byte becomes under 'surrogateescape') stay out.
_UTF8 = "\u00a0-\ud7ff\ue000-\U0010ffff"
_NOT_TEXT = "\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff"
_ATEXT = "A-Za-z0-9!#$%&'*+\\-/=?^_`{|}~" + _UTF8
_ATOM = re.compile(f"[{_ATEXT}]+")
# '.' is not atext, so this has one way to match and stays linear.
_DOT_ATOM = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*")
_QTEXT = re.compile(f'[^"\\\\{_NOT_TEXT}]+')
_CTEXT = re.compile(f"[^()\\\\{_NOT_TEXT}]+")
_DTEXT = re.compile(f"[^\\[\\]\\\\{_NOT_TEXT}]+")
_QUOTED_PAIR = re.compile(f"\\\\([\\t -~{_UTF8}])")
_SMTP_QUOTED = re.compile(f'"(?:[ !#-\\[\\]-~{_UTF8}]|\\\\[ -~])*"')
_ESMTP_KEYWORD = re.compile("[A-Za-z0-9][A-Za-z0-9-]*")
_ESMTP_VALUE = re.compile(f"[!-<>-~{_UTF8}]+")
_LDH_LABEL = re.compile("[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Folding is CRLF (or a bare LF from a lenient reader) before white space.
_FOLD = re.compile("\r?\n(?=[ \t])")

_MAX_PATH = 256  # RFC 5321 §4.5.3.1.3, punctuation included
_MAX_LOCAL = 64  # RFC 5321 §4.5.3.1.1
_MAX_DOMAIN = 253
# Bounds the IDNA work on hostile input; UTS #46 may drop characters, hence the slack.
_MAX_DOMAIN_INPUT = 1024
#: Results of the parsers below are kept for texts up to this long: one
#: application sends from one address to a few, message after message, and
#: every parse is pure. Longer texts (and every error) are parsed each time.
_REMEMBERED_TEXT = 512
_REMEMBERED = 4096


class AddressError(ValueError):
    """The text is not a well-formed path, parameter list or mailbox list."""


@dataclass(frozen=True)
class Mailbox:
    """One address: the local part unquoted, the domain as written ('' when absent)."""

    local: str
    domain: str

    @property
    def is_address_literal(self) -> bool:
        """Is the domain an address literal (C{[192.0.2.1]}, C{[IPv6:...]})?"""
        return self.domain.startswith("[")

    @property
    def recipient_key(self) -> tuple[str, str]:
        """What makes two recipients of one transaction the same: the local
        part as given (RFC 5321 §2.4 leaves its case to the receiver), the
        domain without case (and in its A-label form where it has one)."""
        return self.local, normalise_domain(self.domain) or self.domain.lower()

    def __str__(self) -> str:
        local = self.local
        if not _DOT_ATOM.fullmatch(local):
            escaped = local.replace("\\", "\\\\").replace('"', '\\"')
            local = f'"{escaped}"'
        return f"{local}@{self.domain}" if self.domain else local


# -- domains -----------------------------------------------------------------------


def normalise_domain(name: str) -> str | None:
    """Return the one ASCII spelling of a domain (A-labels, lower case, no trailing
    dot) or of an address literal, or ``None`` when it is not a valid mail domain."""
    if not isinstance(name, str) or not name or len(name) > _MAX_DOMAIN_INPUT:
        return None
    if len(name) <= _REMEMBERED_TEXT:
        return _remembered_domain(name)
    return _normalise_domain(name)


@functools.lru_cache(maxsize=_REMEMBERED)
def _remembered_domain(name: str) -> str | None:
    return _normalise_domain(name)


def _normalise_domain(name: str) -> str | None:
    if name.startswith("["):
        return _normalise_literal(name)
    if name.isascii():
        # Fast path: plain LDH names need no IDNA mapping (and are most names).
        plain = name.lower().removesuffix(".")
        labels = plain.split(".")
        if (len(plain) <= _MAX_DOMAIN and all(map(_LDH_LABEL.fullmatch, labels))
                and not any(label[2:4] == "--" for label in labels)):
            return plain
    ascii_name = _to_ascii(name)
    if ascii_name is None:
        return None
    ascii_name = ascii_name.lower().removesuffix(".")
    labels = ascii_name.split(".")
    if len(ascii_name) > _MAX_DOMAIN or not all(map(_LDH_LABEL.fullmatch, labels)):
        return None
    return ascii_name


def _to_ascii(name: str) -> str | None:
    # IDNA 2008 with the UTS #46 mapping folds case and full-width dots the way
    # browsers and MTAs do; the stdlib's IDNA 2003 is the fallback.
    try:
        if _idna is not None:
            return _idna.encode(name, uts46=True, transitional=False).decode("ascii")
        return name.removesuffix(".").encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return None


def _normalise_literal(text: str) -> str | None:
    if not text.endswith("]"):
        return None
    body = text[1:-1]
    if "%" in body:  # a zone index names an interface, not a host
        return None
    try:
        if body[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(body[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(body)}]"
    except ValueError:
        # General address literals (RFC 5321 §4.1.3) have no registered use in mail.
        return None


# -- RFC 5321 envelope -------------------------------------------------------------


def parse_path(text: str, *, allow_empty: bool) -> Mailbox | None:
    """Parse a Reverse-path or Forward-path.

    ``<>`` (and an empty argument) is the null path: ``None`` when *allow_empty*,
    otherwise an error.  A source route is checked and dropped.  A bare
    ``local@domain`` without brackets is tolerated because many clients send it.
    """
    if len(text) <= _REMEMBERED_TEXT:
        return _remembered_path(text, allow_empty)
    return _parse_path(text, allow_empty)


@functools.lru_cache(maxsize=_REMEMBERED)
def _remembered_path(text: str, allow_empty: bool) -> Mailbox | None:
    return _parse_path(text, allow_empty)


def _parse_path(text: str, allow_empty: bool) -> Mailbox | None:
    text = text.strip(" \t")
    if text in ("", "<>"):
        if allow_empty:
            return None
        raise AddressError("empty path")
    if text.startswith("<") and text.endswith(">") and len(text) > 1:
        inner = text[1:-1]
    elif "<" in text or ">" in text or "@" not in text:
        raise AddressError("path must be enclosed in <>")
    else:
        inner = text
    if len(_octets(inner)) + 2 > _MAX_PATH:
        raise AddressError("path longer than 256 octets")
    if inner.startswith("@"):
        inner = _drop_source_route(inner)
    return _parse_smtp_mailbox(inner)


def _octets(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _drop_source_route(inner: str) -> str:
    # A-d-l domains cannot contain ':', so the first one ends the route.
    route, colon, mailbox = inner.partition(":")
    if not colon:
        raise AddressError("source route without ':'")
    for hop in route.split(","):
        if not hop.startswith("@") or not _is_smtp_domain(hop[1:], literal=False):
            raise AddressError(f"invalid source route {route!r}")
    return mailbox


def _parse_smtp_mailbox(text: str) -> Mailbox:
    if text.startswith('"'):
        match = _SMTP_QUOTED.match(text)
        if match is None:
            raise AddressError("malformed quoted local part")
        raw_local, rest = match.group(), text[match.end() :]
        local = _QUOTED_PAIR.sub(r"\1", raw_local[1:-1])
    else:
        raw_local, at, domain = text.partition("@")
        if not _DOT_ATOM.fullmatch(raw_local):
            raise AddressError(f"malformed local part {raw_local!r}")
        local, rest = raw_local, at + domain
    if len(_octets(raw_local)) > _MAX_LOCAL:
        raise AddressError("local part longer than 64 octets")
    if not rest:
        return Mailbox(local, "")  # '<postmaster>': whether that is allowed is the caller's call
    if not rest.startswith("@") or not _is_smtp_domain(rest[1:], literal=True):
        raise AddressError(f"malformed domain in {text!r}")
    return Mailbox(local, rest[1:])


def _is_smtp_domain(domain: str, *, literal: bool) -> bool:
    # RFC 5321 has no root dot in a Domain, and routes take no address literal.
    if domain.endswith(".") or (domain.startswith("[") and not literal):
        return False
    return normalise_domain(domain) is not None


def split_mail_argument(arg: str) -> tuple[str, dict[str, str | None]]:
    """Split what follows ``MAIL FROM:``/``RCPT TO:`` into the path text and the
    ESMTP parameters (upper-cased keyword -> value, ``None`` for a bare keyword)."""
    arg = arg.lstrip(" \t")
    end = _path_end(arg)
    path, rest = arg[:end], arg[end:]
    if rest and rest[0] not in " \t":
        raise AddressError("parameters must follow the path after a space")
    params: dict[str, str | None] = {}
    for item in rest.split():
        keyword, equals, value = item.partition("=")
        if not _ESMTP_KEYWORD.fullmatch(keyword):
            raise AddressError(f"malformed parameter {item!r}")
        if equals and not _ESMTP_VALUE.fullmatch(value):
            raise AddressError(f"malformed value in {item!r}")
        if keyword.upper() in params:
            raise AddressError(f"duplicate parameter {keyword.upper()}")
        params[keyword.upper()] = value if equals else None
    return path, params


def _path_end(arg: str) -> int:
    # Quoted local parts may hold spaces and '>', so scan instead of splitting.
    bracketed = arg.startswith("<")
    quoted = False
    pos = 0
    while pos < len(arg):
        char = arg[pos]
        if quoted:
            if char == "\\":
                pos += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif bracketed and char == ">":
            return pos + 1
        elif not bracketed and char in " \t":
            return pos
        pos += 1
    if quoted or bracketed:
        raise AddressError("unterminated path")
    return pos


# -- RFC 5322 mailbox lists --------------------------------------------------------


def parse_mailbox_list(value: str) -> list[Mailbox]:
    """Return every mailbox of an RFC 5322 address list (group members included).

    Display names, comments and encoded words are read only to be skipped; anything
    that is not a valid list raises :class:`AddressError`.
    """
    if len(value) <= _REMEMBERED_TEXT:
        return list(_remembered_list(value))
    return _ListParser(_tokenize(value)).address_list()


@functools.lru_cache(maxsize=_REMEMBERED)
def _remembered_list(value: str) -> tuple[Mailbox, ...]:
    return tuple(_ListParser(_tokenize(value)).address_list())


_SPECIALS = frozenset("<>@,;:.")


def _tokenize(value: str) -> list[tuple[str, str]]:
    """Split into ('atom'|'qs'|'dlit'|special, text) tokens; CFWS is dropped."""
    value = _FOLD.sub("", value)
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(value):
        char = value[pos]
        if char in " \t":
            pos += 1
        elif char == "(":
            pos = _skip_comment(value, pos)
        elif char == '"':
            text, pos = _read_delimited(value, pos, '"', _QTEXT, "quoted string")
            tokens.append(("qs", text))
        elif char == "[":
            text, pos = _read_delimited(value, pos, "]", _DTEXT, "domain literal")
            tokens.append(("dlit", "[" + "".join(text.split()) + "]"))  # FWS is not part of it
        elif char in _SPECIALS:
            tokens.append((char, char))
            pos += 1
        else:
            match = _ATOM.match(value, pos)
            if match is None:
                raise AddressError(f"unexpected {char!r} at offset {pos}")
            tokens.append(("atom", match.group()))
            pos = match.end()
    return tokens


def _read_quoted_pair(value: str, pos: int) -> tuple[str, int]:
    match = _QUOTED_PAIR.match(value, pos)
    if match is None:
        raise AddressError(f"bad quoted-pair at offset {pos}")
    return match.group(1), match.end()


def _skip_comment(value: str, pos: int) -> int:
    # Comments nest; a counter (not recursion) keeps deep nesting cheap and safe.
    depth = 0
    while pos < len(value):
        char = value[pos]
        if char in "()":
            depth += 1 if char == "(" else -1
            pos += 1
            if depth == 0:
                return pos
        elif char == "\\":
            pos = _read_quoted_pair(value, pos)[1]
        else:
            match = _CTEXT.match(value, pos)
            if match is None:
                raise AddressError(f"unexpected {char!r} in comment")
            pos = match.end()
    raise AddressError("unbalanced parenthesis")


def _read_delimited(
    value: str, pos: int, close: str, text: re.Pattern[str], what: str
) -> tuple[str, int]:
    """Read a quoted string or domain literal starting at *pos*; return (content, end)."""
    parts = []
    pos += 1
    while pos < len(value):
        char = value[pos]
        if char == close:
            return "".join(parts), pos + 1
        if char == "\\":  # quoted-pair (obs-dtext in a literal)
            part, pos = _read_quoted_pair(value, pos)
        else:
            match = text.match(value, pos)
            if match is None:
                raise AddressError(f"unexpected {char!r} in {what}")
            part, pos = match.group(), match.end()
        parts.append(part)
    raise AddressError(f"unterminated {what}")


class _ListParser:
    """Recursive descent over the tokens; groups cannot nest, so depth is bounded."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self, kind: str) -> str:
        if self.peek() != kind:
            raise AddressError(f"expected {kind!r}, found {self.peek()!r}")
        self.pos += 1
        return self.tokens[self.pos - 1][1]

    def skip_commas(self) -> None:
        # obs-addr-list and obs-group-list allow empty elements ('a@b, , c@d').
        while self.peek() == ",":
            self.pos += 1

    def address_list(self) -> list[Mailbox]:
        mailboxes: list[Mailbox] = []
        addresses = 0
        while True:
            self.skip_commas()
            if self.peek() is None:
                break
            mailboxes.extend(self.address(allow_group=True))
            addresses += 1
            if self.peek() not in (",", None):
                raise AddressError(f"unexpected {self.peek()!r} after an address")
        if not addresses:
            raise AddressError("empty address list")
        return mailboxes

    def address(self, *, allow_group: bool) -> list[Mailbox]:
        start = self.pos
        phrase = self.phrase()
        kind = self.peek()
        if kind == "@":
            self.pos = start  # the "phrase" was a local part
            return [self.addr_spec()]
        if phrase and phrase[0] == ".":
            raise AddressError("display name starts with '.'")
        if kind == "<":
            return [self.angle_addr()]
        if kind == ":" and phrase and allow_group:
            self.pos += 1
            return self.group_members()
        raise AddressError(f"expected an address, found {kind!r}")

    def phrase(self) -> list[str]:
        # obs-phrase: words and dots; encoded words are just atoms here.
        kinds = []
        while self.peek() in ("atom", "qs", "."):
            kinds.append(self.peek())
            self.pos += 1
        return kinds

    def group_members(self) -> list[Mailbox]:
        members: list[Mailbox] = []
        while True:
            self.skip_commas()
            if self.peek() == ";":
                self.pos += 1
                return members
            if self.peek() is None:
                raise AddressError("group without ';'")
            members.extend(self.address(allow_group=False))
            if self.peek() not in (",", ";"):
                raise AddressError(f"expected ',' or ';' in group, found {self.peek()!r}")

    def angle_addr(self) -> Mailbox:
        self.take("<")
        if self.peek() in ("@", ","):
            self.obs_route()
        mailbox = self.addr_spec()
        self.take(">")
        return mailbox

    def obs_route(self) -> None:
        # The route is read for syntax only; it never names the sender.
        self.skip_commas()
        self.take("@")
        self.domain()
        while self.peek() == ",":
            self.pos += 1
            if self.peek() == "@":
                self.pos += 1
                self.domain()
        self.take(":")

    def addr_spec(self) -> Mailbox:
        words = [self.word()]
        while self.peek() == ".":
            self.pos += 1
            words.append(self.word())
        self.take("@")
        return Mailbox(".".join(words), self.domain())

    def word(self) -> str:
        if self.peek() == "qs":
            return self.take("qs")
        return self.take("atom")

    def domain(self) -> str:
        if self.peek() == "dlit":
            return self.take("dlit")
        labels = [self.take("atom")]
        while self.peek() == ".":
            self.pos += 1
            labels.append(self.take("atom"))
        return ".".join(labels)
