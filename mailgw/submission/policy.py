"""The From/Sender rule (the wire contract's §7): may this message's author
addresses be sent by this server? Pure functions over parsed header fields.
"""
from __future__ import annotations

from dataclasses import dataclass

from mailgw.address import AddressError, normalise_domain, parse_mailbox_list

__all__ = ["AuthorisedDomains", "check_sender_fields"]


@dataclass(frozen=True)
class AuthorisedDomains:
    """What a server may send as.

    @ivar names: the L{normalise_domain} forms of the I{verified} domains
        owned by the server or its organization.
    @ivar any_domain: the name of a verified C{use_for_any} domain the server
        owns (it authorises every From address), or C{None}.
    """

    names: frozenset[str]
    any_domain: str | None


def check_sender_fields(
    fields: list[tuple[str, str]], *, allow_sender_header: bool,
    authorised: AuthorisedDomains,
) -> str | None:
    """The domain to record with the message, or C{None} when no header passes.

    C{From:} is tried first (every C{From:} field together), then C{Sender:}
    only when C{allow_sender_header}. A header passes when it parses, names at
    least one mailbox, and every mailbox's domain is authorised; there is no
    parent or sub-domain matching. The domain recorded is the first mailbox's,
    or the C{use_for_any} domain when that alone authorised the header (as
    Postal records it: that domain's DKIM key signs the message).

    @param fields: C{(lower-cased name, unfolded value)} pairs, as
        L{mailgw.submission.headers.parse_fields} gives them.
    """
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
    if authorised.names.issuperset(domains):
        return domains[0]
    return authorised.any_domain
