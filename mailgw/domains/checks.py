"""What a domain's published DNS records say, checked against what mailgw
asks for (as Postal's DNS page does): pure functions over the answers of
L{mailgw.domains.lookup}, each giving a L{Check}.

A TXT record is given as one string: its character-strings joined with
nothing between them, as SPF (RFC 7208 section 3.3) and DKIM (RFC 6376
section 3.6.2.2) read them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

OK = "OK"
MISSING = "Missing"
INVALID = "Invalid"

#: the prefix of the ownership record: C{mailgw-verification <token>}
VERIFICATION_PREFIX = "mailgw-verification"

_SPF_RE = re.compile(r"v=spf1(\s|$)", re.IGNORECASE)


@dataclass(frozen=True)
class Check:
    """One record's state: C{status} is L{OK}, L{MISSING} or L{INVALID};
    C{expected} the value to publish; C{found} the values seen."""
    status: str
    expected: str
    found: tuple[str, ...] = ()


def spf_value(include: str) -> str:
    """The SPF record a domain publishes (RFC 7208): the domain's own A and MX
    hosts, and the platform's include when configured; C{~all} (softfail)
    rather than C{-all}, as Postal advises, so that mail sent through other
    services during a move is marked rather than refused."""
    return f"v=spf1 a mx{f' include:{include}' if include else ''} ~all"


def verification_value(token: str) -> str:
    """The ownership TXT record's value for C{token}."""
    return f"{VERIFICATION_PREFIX} {token}"


def verification_status(txt_records, token: str) -> Check:
    """OK when a TXT record at the domain is the ownership record with
    C{token}; Invalid when ownership records are there with other tokens."""
    expected = verification_value(token)
    records = tuple(" ".join(r.split()) for r in txt_records)
    if expected in records:
        return Check(OK, expected, (expected,))
    ours = tuple(r for r in records if r.split(" ", 1)[0] == VERIFICATION_PREFIX)
    return Check(INVALID if ours else MISSING, expected, ours)


def spf_status(txt_records, spf_include: str = "") -> Check:
    """OK when the domain has exactly one SPF record (two or more are a
    permanent error, RFC 7208 section 4.5) and it includes C{spf_include}
    when that is set (C{include:}, any qualifier, RFC 7208 section 5.2)."""
    expected = spf_value(spf_include)
    records = tuple(r for r in txt_records if _SPF_RE.match(r.strip()))
    if not records:
        return Check(MISSING, expected)
    if len(records) > 1:
        return Check(INVALID, expected, records)
    if spf_include:
        wanted = f"include:{spf_include}".lower()
        terms = [t.lower().lstrip("+") for t in records[0].split()]
        if wanted not in terms:
            return Check(INVALID, expected, records)
    return Check(OK, expected, records)


def _dkim_tags(value: str) -> dict | None:
    """The tags of a DKIM key record, whitespace removed (it is not
    significant around tags, nor within base64 values: RFC 6376 sections
    3.2 and 3.6.1); C{None} when it is not a tag list."""
    tags = {}
    for part in value.split(";"):
        part = "".join(part.split())
        if not part:
            continue
        name, sep, tag_value = part.partition("=")
        if not sep or not name:
            return None
        tags[name] = tag_value
    return tags


def dkim_status(txt_records, expected_value: str) -> Check:
    """OK when the selector's name has one TXT record and it is the key
    record C{expected_value}, compared tag by tag with whitespace ignored;
    several records at one selector leave the verifier's choice undefined
    (RFC 6376 section 3.6.2.2), so they are Invalid."""
    records = tuple(txt_records)
    if not records:
        return Check(MISSING, expected_value)
    wanted = _dkim_tags(expected_value)
    if len(records) == 1 and _dkim_tags(records[0]) == wanted:
        return Check(OK, expected_value, records)
    return Check(INVALID, expected_value, records)


def _host(name: str) -> str:
    return name.strip().rstrip(".").lower()


def return_path_status(cname_targets, return_path_domain: str) -> Check:
    """OK when C{psrp.<domain>} is a CNAME to C{return_path_domain}."""
    found = tuple(_host(t) for t in cname_targets)
    if not found:
        return Check(MISSING, return_path_domain)
    status = OK if found == (_host(return_path_domain),) else INVALID
    return Check(status, return_path_domain, found)


def mx_status(mx_records) -> Check:
    """OK when the domain has at least one MX record (so that replies and
    bounces to its addresses have somewhere to go)."""
    found = tuple(mx_records)
    return Check(OK if found else MISSING, "at least one MX record", found)
