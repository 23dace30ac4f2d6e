"""C{mailgw domain verify} and C{mailgw domain check}, run for real as
subprocesses (see L{tests.admin.test_cli}) against twisted.names' own server
on loopback (L{tests.relay.zone}), named by C{[dns] resolver}."""
from __future__ import annotations

from twisted.internet import protocol, reactor
from twisted.names import dns

from mailgw.domains.dkim import dns_value
from tests.admin.test_cli import CLITestCase
from tests.relay.zone import Zone, mx, serve


def txt(value: str, size: int = 255):
    """A TXT record of C{value}, cut into character-strings of C{size}."""
    data = value.encode()
    return dns.Record_TXT(*[data[i:i + size] for i in range(0, len(data), size)])


class DomainCheckTestCase(CLITestCase):
    def serve(self, records: dict, dns_table: str = ""):
        """Serve C{records}; the config's C{[dns] resolver} points at them."""
        self.zone = Zone(records)
        with open(self.config, "a") as f:
            f.write(f'[dns]\nresolver = "{serve(self, self.zone)}"\n{dns_table}')

    async def domain(self):
        store, _ = await self.seed()
        domain = await store.add_domain("example.com", server=("acme", "web"))
        token = await store.domain_verification_token(domain.id)
        return store, domain, token

    async def verified(self, store) -> bool:
        [domain] = await store.list_domains()
        return domain.verified


class VerifyTests(DomainCheckTestCase):
    async def test_verified_when_the_token_is_published(self):
        store, domain, token = await self.domain()
        self.serve({"example.com": [txt("v=spf1 a mx ~all"),
                                    txt(f"mailgw-verification {token}")]})
        self.assertEqual(await self.ok("domain", "verify", "example.com"),
                         "verified example.com\n")
        self.assertTrue(await self.verified(store))
        self.assertIn(("example.com", "TXT"), self.zone.queries)
        # by ID, as JSON
        self.assertTrue((await self.json("domain", "verify", str(domain.id)))["verified"])

    async def test_missing_record_is_one_line_and_leaves_it_unverified(self):
        store, _, token = await self.domain()
        self.serve({"example.com": [txt("v=spf1 a mx ~all")]})
        self.assertEqual(
            await self.error("domain", "verify", "example.com"),
            f'mailgw: example.com is not verified: publish the TXT record '
            f'"mailgw-verification {token}" at example.com (not found)')
        self.assertFalse(await self.verified(store))

    async def test_nxdomain_and_wrong_token(self):
        store, _, token = await self.domain()
        self.serve({})
        self.assertIn("(not found)", await self.error("domain", "verify", "example.com"))
        self.zone.records["example.com"] = [txt("mailgw-verification wrong")]
        self.assertIn("(found 'mailgw-verification wrong')",
                      await self.error("domain", "verify", "example.com"))
        self.assertFalse(await self.verified(store))

    async def test_force_needs_no_dns(self):
        store, domain, _ = await self.domain()
        with open(self.config, "a") as f:
            # nothing listens there: a look-up would time out
            f.write('[dns]\nresolver = "127.0.0.1:9"\n')
        self.assertTrue((await self.json("domain", "verify", "example.com", "--force"))
                        ["verified"])
        self.assertTrue(await self.verified(store))
        self.assertFalse((await self.json("domain", "unverify", str(domain.id)))["verified"])
        self.assertTrue((await self.json("domain", "verify", str(domain.id), "--force"))
                        ["verified"])

    async def test_unknown_domain(self):
        await self.seed()
        self.serve({})
        self.assertEqual(await self.error("domain", "verify", "nope.example"),
                         "mailgw: no domain nope.example")


class CheckTests(DomainCheckTestCase):
    TABLE = 'spf_include = "spf.mail.example.net"\nreturn_path_domain = "rp.example.net"\n'

    async def test_every_record_ok(self):
        store, _, token = await self.domain()
        [key] = await store.dkim_keys("example.com")
        self.serve({
            "example.com": [txt(f"mailgw-verification {token}"),
                            txt("v=spf1 a mx include:spf.mail.example.net ~all"),
                            mx(10, "mx.example.com")],
            key.dns_name: [txt(dns_value(key.private_key))],
            "psrp.example.com": [dns.Record_CNAME(b"rp.example.net")],
        }, self.TABLE)
        rows = await self.json("domain", "check", "example.com")
        self.assertEqual([(r["purpose"], r["name"], r["type"], r["status"]) for r in rows], [
            ("verification", "example.com", "TXT", "OK"),
            ("spf", "example.com", "TXT", "OK"),
            ("dkim", key.dns_name, "TXT", "OK"),
            ("return_path", "psrp.example.com", "CNAME", "OK"),
            ("mx", "example.com", "MX", "OK")])
        self.assertEqual(rows[2]["selector"], key.selector)
        self.assertEqual(rows[4]["found"], ["10 mx.example.com"])
        text = await self.ok("domain", "check", "example.com")
        self.assertEqual(text.splitlines()[0].split(),
                         ["RECORD", "NAME", "TYPE", "STATUS", "EXPECTED"])
        self.assertEqual(len(text.splitlines()), 6)
        # the result is kept, as the periodic check keeps its own
        [listed] = await self.json("domain", "list")
        self.assertEqual(listed["dns_status"], "OK")
        self.assertRegex(listed["dns_checked_at"], r"^\d{4}-\d\d-\d\dT")

    async def test_missing_and_invalid(self):
        store, _, token = await self.domain()
        [key] = await store.dkim_keys("example.com")
        self.serve({
            "example.com": [txt("mailgw-verification other"), txt("v=spf1 a -all")],
            key.dns_name: [txt("v=DKIM1; k=rsa; p=AAAA")],
            "psrp.example.com": [dns.Record_CNAME(b"elsewhere.example")],
        }, self.TABLE)
        rows = await self.json("domain", "check", "example.com")
        self.assertEqual([(r["purpose"], r["status"]) for r in rows], [
            ("verification", "Invalid"), ("spf", "Invalid"), ("dkim", "Invalid"),
            ("return_path", "Invalid"), ("mx", "Missing")])
        self.assertEqual(rows[0]["expected"], f"mailgw-verification {token}")
        self.assertEqual(rows[1]["expected"],
                         "v=spf1 a mx include:spf.mail.example.net ~all")
        self.assertEqual(rows[1]["found"], ["v=spf1 a -all"])
        self.assertEqual(rows[2]["expected"], dns_value(key.private_key))
        self.assertEqual(rows[3]["found"], ["elsewhere.example"])

    async def test_nothing_published(self):
        store, _, _ = await self.domain()
        await store.rotate_dkim("example.com")  # the retiring key is not checked
        [active, _] = await store.dkim_keys("example.com")
        self.serve({})
        rows = await self.json("domain", "check", "example.com")
        self.assertEqual([(r["purpose"], r["status"]) for r in rows], [
            ("verification", "Missing"), ("spf", "Missing"), ("dkim", "Missing"),
            ("mx", "Missing")])
        self.assertEqual(rows[1]["expected"], "v=spf1 a mx ~all")
        self.assertEqual(rows[2]["selector"], active.selector)
        self.assertIn("Missing", await self.ok("domain", "check", "example.com"))

    async def test_dns_failure_is_one_line(self):
        await self.domain()
        port = reactor.listenUDP(0, ServerFailure(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        with open(self.config, "a") as f:
            f.write(f'[dns]\nresolver = "127.0.0.1:{port.getHost().port}"\n')
        for verb in ("check", "verify"):
            self.assertEqual(await self.error("domain", verb, "example.com"),
                             "mailgw: DNS look-up of the TXT records of example.com "
                             "failed: server failure")


class ServerFailure(protocol.DatagramProtocol):
    """A DNS server answering every query SERVFAIL."""

    def datagramReceived(self, data, address):
        message = dns.Message()
        message.fromStr(data)
        message.answer, message.rCode = 1, dns.ESERVER
        self.transport.write(message.toStr(), address)
