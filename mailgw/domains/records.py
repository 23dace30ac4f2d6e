"""What a domain's owner publishes, and the ownership check: shared by the
command line (C{mailgw domain dns}, C{domain verify}) and the web pages.

No output formatting here: each caller words the records its own way.
"""
from __future__ import annotations

from mailgw.domains import checks, dkim
from mailgw.domains.checks import spf_value


async def records_to_publish(store, dns_config, domain):
    """The records of C{domain} (an id, or a name with one owner): the
    ownership TXT, SPF, each DKIM key's TXT (active and retiring) and, when
    C{[dns] return_path_domain} is set, the return-path CNAME.

    @return: C{(domain name, records, keys)}, each record a dict with
        C{purpose}, C{name}, C{type} and C{value} (DKIM ones also with
        C{selector} and C{retiring}).
    @raise NotFound: no such domain. @raise Conflict: a name with several owners.
    """
    # the token first: it fails for an unknown or ambiguous name
    token = await store.domain_verification_token(domain)
    found, _ = await store.dns_check_result(domain)
    keys = await store.dkim_keys(found.id)
    name = found.name
    records = [
        {"purpose": "verification", "name": name, "type": "TXT",
         "value": f"mailgw-verification {token}"},
        {"purpose": "spf", "name": name, "type": "TXT",
         "value": spf_value(dns_config.spf_include)},
    ]
    for key in keys:
        records.append({"purpose": "dkim", "name": key.dns_name, "type": "TXT",
                        "value": dkim.dns_value(key.private_key), "selector": key.selector,
                        "retiring": key.retiring})
    if dns_config.return_path_domain:
        records.append({"purpose": "return_path", "name": f"psrp.{name}", "type": "CNAME",
                        "value": dns_config.return_path_domain})
    return name, records, keys


async def verify_through_dns(store, lookup, domain):
    """Mark C{domain} verified if its ownership TXT record is published (as
    Postal verifies domains).

    @return: the updated L{mailgw.model.Domain}.
    @raise ValueError: the record is not there; the message names it.
    @raise mailgw.domains.lookup.DNSLookupError: the look-up failed.
    """
    token = await store.domain_verification_token(domain)
    found, _ = await store.dns_check_result(domain)
    txt = await lookup.txt(found.name)
    check = checks.verification_status(txt, token)
    if check.status != checks.OK:
        seen = (f"found {', '.join(repr(v) for v in check.found)}" if check.found
                else "not found")
        raise ValueError(f"{found.name} is not verified: publish the TXT record "
                         f"\"{check.expected}\" at {found.name} ({seen})")
    return await store.set_domain_verified(found.id, True)
