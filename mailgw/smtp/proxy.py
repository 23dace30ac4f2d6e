"""The HAProxy PROXY protocol header, version 1 (text) and 2 (binary), as a
pure parser (spec SMTP.md §2; HAProxy's proxy-protocol.txt).

This module owns only the bytes-to-L{ProxyHeader} step: it is fed the first
bytes of a connection, says whether it needs more, and reports how many bytes
the header took.  Deciding whether the peer may speak PROXY at all (trusted
proxy networks), replying C{502 Proxy Error} and normalising IPv4-mapped
addresses belong to the caller.  Standard library only, so it can be tested
and fuzzed without a reactor.
"""
from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (proxy-protocol.txt §2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, ver/cmd, fam/proto, 2-byte length
V2_MAX_LENGTH = 1024  # bounds what we buffer; real headers with TLVs are far smaller

# Ports are decimal without leading zeros (the spec forbids them; a lenient
# parse would let "080" and "80" name the same thing in two ways).
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
# Characters a TCP4/TCP6 line may contain after "PROXY TCPx ": checking them as
# they arrive rejects garbage before the 107-byte limit.  No '%': ipaddress
# accepts scoped IPv6 ("fe80::1%eth0"), which is no client address.
_TCP_CHARS = re.compile(rb"[0-9A-Fa-f.: ]*")


class ProxyError(ValueError):
    """The bytes cannot be a valid PROXY header; the message says why."""


@dataclass(frozen=True)
class ProxyHeader:
    version: int  # 1 or 2
    command: str  # "PROXY" or "LOCAL" (v1 UNKNOWN and v2 AF_UNSPEC are LOCAL)
    source: tuple[str, int] | None  # (address text, port); None when LOCAL
    destination: tuple[str, int] | None


def parse_proxy_header(data: bytes) -> tuple[ProxyHeader, int] | None:
    """Parse the PROXY header at the start of C{data}.

    @return: C{None} when more bytes are needed to decide, else
        C{(header, consumed)}; C{data[consumed:]} belongs to SMTP.
    @raise ProxyError: as soon as C{data} cannot start a valid header.
    """
    if not data:
        return None
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    raise ProxyError("not a PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    head = data[:V1_MAX]
    end = head.find(b"\r\n")
    complete = end >= 0
    # Validate the partial line too, so a peer cannot make us wait for bytes
    # that could never complete a header.  A trailing CR may be half a CRLF.
    text = head[:end] if complete else head.removesuffix(b"\r")
    if not text.startswith(V1_PREFIX):
        if complete or not V1_PREFIX.startswith(text):
            raise ProxyError("v1 header must start with 'PROXY '")
        return None
    rest = text[len(V1_PREFIX):]
    if rest.startswith(b"UNKNOWN"):
        # "PROXY UNKNOWN", optionally a space and anything up to CRLF (§2.1)
        if rest[7:8] not in (b"", b" "):
            raise ProxyError("v1 protocol must be TCP4, TCP6 or UNKNOWN")
        kind = b"UNKNOWN"
    elif rest[:5] in (b"TCP4 ", b"TCP6 "):
        kind = rest[:4]
        if not _TCP_CHARS.fullmatch(rest[5:]):
            raise ProxyError("v1 addresses contain invalid characters")
    elif complete or not any(p.startswith(rest) for p in (b"UNKNOWN", b"TCP4 ", b"TCP6 ")):
        raise ProxyError("v1 protocol must be TCP4, TCP6 or UNKNOWN")
    else:
        return None
    if not complete:
        if len(data) >= V1_MAX:
            raise ProxyError(f"v1 header longer than {V1_MAX} bytes")
        return None
    consumed = end + 2
    if kind == b"UNKNOWN":
        return ProxyHeader(1, "LOCAL", None, None), consumed
    fields = rest[5:].split(b" ")
    if len(fields) != 4:
        raise ProxyError("v1 header needs exactly: source dest sport dport, single spaces")
    family = ipaddress.IPv4Address if kind == b"TCP4" else ipaddress.IPv6Address
    src, dst = (_v1_address(f, family, kind) for f in fields[:2])
    sport, dport = (_v1_port(f) for f in fields[2:])
    return ProxyHeader(1, "PROXY", (src, sport), (dst, dport)), consumed


def _v1_address(raw: bytes, family, kind: bytes) -> str:
    try:
        # str() gives the canonical text, so callers compare like with like
        return str(family(raw.decode("ascii")))
    except ValueError:
        raise ProxyError(f"v1 {kind.decode()} address is invalid: {raw[:45]!r}") from None


def _v1_port(raw: bytes) -> int:
    if not _PORT.fullmatch(raw) or int(raw) > 65535:
        raise ProxyError(f"v1 port is invalid: {raw[:8]!r}")
    return int(raw)


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    sig = data[:len(V2_SIGNATURE)]
    if sig != V2_SIGNATURE[:len(sig)]:
        raise ProxyError("bad v2 signature")
    # Check each fixed byte as soon as it is there (fail early, no waiting).
    if len(data) > 12:
        if data[12] >> 4 != 2:
            raise ProxyError(f"unsupported v2 version {data[12] >> 4}")
        if data[12] & 0x0F not in (0, 1):
            raise ProxyError(f"unknown v2 command {data[12] & 0x0F}")
    local = len(data) > 12 and data[12] & 0x0F == 0
    family = transport = None
    if len(data) > 13 and not local:
        # LOCAL: the receiver must ignore the family and address block
        # (proxy-protocol.txt §2.2), so only PROXY is checked here.
        family, transport = data[13] >> 4, data[13] & 0x0F
        if family == 3:
            raise ProxyError("unsupported v2 family AF_UNIX")
        if family > 3:
            raise ProxyError(f"unknown v2 family {family}")
        if transport == 2:
            raise ProxyError("unsupported v2 transport DGRAM (UDP)")
        if transport > 2 or (transport == 0 and family != 0):
            raise ProxyError(f"unknown v2 transport {transport}")
    if len(data) < V2_FIXED:
        return None
    (length,) = struct.unpack_from("!H", data, 14)
    if length > V2_MAX_LENGTH:
        raise ProxyError(f"v2 header length {length} exceeds {V2_MAX_LENGTH}")
    needed = {1: 12, 2: 36}.get(family, 0)
    if length < needed:
        raise ProxyError(f"v2 length {length} too short for the address block")
    consumed = V2_FIXED + length
    if len(data) < consumed:
        return None
    if local or family == 0:
        # AF_UNSPEC under PROXY: no usable addresses, so the real endpoints apply.
        return ProxyHeader(2, "LOCAL", None, None), consumed
    # Whatever follows the addresses is TLVs, which we do not use: skipped.
    if family == 1:
        s, d, sp, dp = struct.unpack_from("!4s4sHH", data, V2_FIXED)
        src, dst = ipaddress.IPv4Address(s), ipaddress.IPv4Address(d)
    else:
        s, d, sp, dp = struct.unpack_from("!16s16sHH", data, V2_FIXED)
        src, dst = ipaddress.IPv6Address(s), ipaddress.IPv6Address(d)
    return ProxyHeader(2, "PROXY", (str(src), sp), (str(dst), dp)), consumed
