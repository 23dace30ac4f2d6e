"""C{mailgw domain dns} and C{mailgw domain rotate-dkim}, run for real as
subprocesses (see L{tests.admin.test_cli}). Each DKIM record printed is read
back as a verifier would and matched with the private key the store holds."""
from __future__ import annotations

import base64
import re

from cryptography.hazmat.primitives import serialization

from tests.admin.test_cli import CLITestCase

DNS = '[dns]\nspf_include = "spf.mail.example.net"\nreturn_path_domain = "rp.example.net"\n'
#: a zone file line: name, class, type, data
LINE_RE = re.compile(r"^(\S+)\.  IN  (TXT|CNAME)  (.+)$")


def public_key_of(value: str):
    """The public key of a DKIM key record (RFC 6376 section 3.6.1)."""
    tags = dict(t.strip().split("=", 1) for t in value.split(";") if t.strip())
    assert (tags["v"], tags["k"]) == ("DKIM1", "rsa"), tags
    return serialization.load_der_public_key(base64.b64decode(tags["p"]))


def private_key_of(key):
    return serialization.load_pem_private_key(key.private_key.encode(), password=None)


class DomainDNSTests(CLITestCase):
    def configure_dns(self):
        with open(self.config, "a") as f:
            f.write(DNS)

    async def test_every_record_as_json(self):
        self.configure_dns()
        store, _ = await self.seed()
        domain = await store.add_domain("example.com", server=("acme", "web"))
        [key] = await store.dkim_keys(domain.id)
        token = await store.domain_verification_token(domain.id)
        records = await self.json("domain", "dns", "Example.COM")
        self.assertEqual([r["purpose"] for r in records],
                         ["verification", "spf", "dkim", "return_path"])
        verification, spf, dkim, return_path = records
        self.assertEqual(verification, {"purpose": "verification", "name": "example.com",
                                        "type": "TXT",
                                        "value": f"mailgw-verification {token}"})
        self.assertEqual(spf, {"purpose": "spf", "name": "example.com", "type": "TXT",
                               "value": "v=spf1 a mx include:spf.mail.example.net ~all"})
        self.assertEqual((dkim["name"], dkim["type"], dkim["selector"], dkim["retiring"]),
                         (f"{key.selector}._domainkey.example.com", "TXT", key.selector,
                          False))
        self.assertEqual(public_key_of(dkim["value"]).public_numbers(),
                         private_key_of(key).public_key().public_numbers())
        self.assertEqual(return_path, {"purpose": "return_path", "name": "psrp.example.com",
                                       "type": "CNAME", "value": "rp.example.net"})
        # by ID, the same records
        self.assertEqual(await self.json("domain", "dns", str(domain.id)), records)

    async def test_text_is_zone_file_lines_with_txt_split_into_255_byte_strings(self):
        self.configure_dns()
        store, _ = await self.seed()
        await store.add_domain("example.com", organization="acme")
        [key] = await store.dkim_keys("example.com")
        records = await self.json("domain", "dns", "example.com")
        text = await self.ok("domain", "dns", "example.com")
        lines = [LINE_RE.match(ln) for ln in text.splitlines() if not ln.startswith(";")]
        self.assertTrue(all(lines), text)
        self.assertEqual([(m[1], m[2]) for m in lines], [(r["name"], r["type"]) for r in records])
        dkim = lines[2][3]
        strings = re.findall(r'"([^"]*)"', dkim)
        self.assertEqual(len(strings), 2)
        self.assertTrue(all(len(s.encode()) <= 255 for s in strings), strings)
        self.assertEqual("".join(strings), records[2]["value"])
        self.assertEqual(public_key_of("".join(strings)).public_numbers(),
                         private_key_of(key).public_key().public_numbers())
        self.assertEqual(lines[0][3], f'"{records[0]["value"]}"')
        self.assertEqual(lines[3][3], "rp.example.net.")
        self.assertIn(f"selector {key.selector} (active)", text)
        self.assertNotIn("PRIVATE", text)

    async def test_without_a_dns_table(self):
        store, _ = await self.seed()
        await store.add_domain("example.com", organization="acme")
        records = await self.json("domain", "dns", "example.com")
        self.assertEqual([r["purpose"] for r in records], ["verification", "spf", "dkim"])
        self.assertEqual(records[1]["value"], "v=spf1 a mx ~all")

    async def test_domain_add_prints_the_selector(self):
        store, _ = await self.seed()
        text = await self.ok("domain", "add", "example.com", "--org", "acme")
        selector = re.search(r"^dkim_selector: +(mailgw-[a-z0-9]{6})$", text, re.M)[1]
        [key] = await store.dkim_keys("example.com")
        self.assertEqual(key.selector, selector)

    async def test_rotate_and_finish(self):
        store, _ = await self.seed()
        await store.add_domain("example.com", organization="acme")
        [first] = await store.dkim_keys("example.com")
        new = await self.json("domain", "rotate-dkim", "example.com")
        self.assertEqual((new["domain"], new["retiring"], new["algorithm"], new["type"]),
                         ("example.com", False, "rsa", "TXT"))
        self.assertEqual(new["name"], f"{new['selector']}._domainkey.example.com")
        self.assertNotIn("private_key", new)
        keys = await store.dkim_keys("example.com")
        self.assertEqual([(k.selector, k.retiring) for k in keys],
                         [(new["selector"], False), (first.selector, True)])
        self.assertEqual(public_key_of(new["value"]).public_numbers(),
                         private_key_of(keys[0]).public_key().public_numbers())
        records = await self.json("domain", "dns", "example.com")
        self.assertEqual([(r["selector"], r["retiring"]) for r in records
                          if r["purpose"] == "dkim"],
                         [(new["selector"], False), (first.selector, True)])
        text = await self.ok("domain", "rotate-dkim", "example.com")
        self.assertIn("rotate-dkim example.com --finish", text)
        self.assertIn("._domainkey.example.com.  IN  TXT  \"v=DKIM1; k=rsa; p=", text)
        self.assertEqual(len(await store.dkim_keys("example.com")), 3)
        finished = await self.json("domain", "rotate-dkim", "example.com", "--finish")
        self.assertEqual(len(finished["removed"]), 2)
        self.assertIn(first.selector, [k["selector"] for k in finished["removed"]])
        self.assertEqual(await self.ok("domain", "rotate-dkim", "example.com", "--finish"),
                         "no retiring DKIM keys\n")
        [left] = await store.dkim_keys("example.com")
        self.assertFalse(left.retiring)

    async def test_errors(self):
        store, _ = await self.seed()
        web = await store.add_domain("example.com", server=("acme", "web"))
        org = await store.add_domain("example.com", organization="acme")
        unknown, ambiguous, rotate = await self.error("domain", "dns", "nope.example"), \
            await self.error("domain", "dns", "example.com"), \
            await self.error("domain", "rotate-dkim", "example.com")
        self.assertEqual(unknown, "mailgw: no domain nope.example")
        self.assertEqual(ambiguous, "mailgw: domain example.com has several owners: "
                                    f"acme/web (ID {web.id}), acme (ID {org.id}); give the ID")
        self.assertEqual(rotate, ambiguous)
        self.assertEqual(await self.error("domain", "dns", "999"), "mailgw: no domain 999")
        self.assertEqual(len(await self.json("domain", "dns", str(org.id))), 3)

    async def test_dns_settings_are_checked(self):
        with open(self.config, "a") as f:
            f.write('[dns]\nspf_include = "not a domain"\n')
        self.assertEqual(await self.error("domain", "dns", "example.com"),
                         "mailgw: config error: dns.spf_include: must be a domain name")


class Ed25519Tests(CLITestCase):
    """An Ed25519 key (RFC 8463) signs beside the RSA one and rotates on its own."""

    async def test_domain_add_with_ed25519_has_both_keys_and_records(self):
        store, _ = await self.seed()
        added = await self.json("domain", "add", "example.com", "--org", "acme", "--ed25519")
        keys = await store.dkim_keys("example.com")
        self.assertEqual(sorted((k.algorithm, k.selector) for k in keys),
                         sorted([("rsa", added["dkim_selector"]),
                                 ("ed25519", added["dkim_ed25519_selector"])]))
        records = [r for r in await self.json("domain", "dns", "example.com")
                   if r["purpose"] == "dkim"]
        by_selector = {r["selector"]: r["value"] for r in records}
        ed = by_selector[added["dkim_ed25519_selector"]]
        self.assertTrue(ed.startswith("v=DKIM1; k=ed25519; p="), ed)
        self.assertEqual(len(base64.b64decode(ed.split("p=")[1])), 32)

    async def test_rotating_one_algorithm_keeps_the_other_active(self):
        store, _ = await self.seed()
        await store.add_domain("example.com", organization="acme")
        [rsa_key] = await store.dkim_keys("example.com")
        ed = await self.json("domain", "rotate-dkim", "example.com", "--algorithm", "ed25519")
        self.assertEqual(ed["algorithm"], "ed25519")
        keys = {k.selector: (k.algorithm, k.retiring)
                for k in await store.dkim_keys("example.com")}
        self.assertEqual(keys, {rsa_key.selector: ("rsa", False),
                                ed["selector"]: ("ed25519", False)})
        again = await self.json("domain", "rotate-dkim", "example.com", "--algorithm", "ed25519")
        keys = {k.selector: (k.algorithm, k.retiring)
                for k in await store.dkim_keys("example.com")}
        self.assertEqual(keys, {rsa_key.selector: ("rsa", False),
                                ed["selector"]: ("ed25519", True),
                                again["selector"]: ("ed25519", False)})
