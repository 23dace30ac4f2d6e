"""End to end: what the real ``twistd -n mailgw`` relays carries DKIM
signatures (RSA, and Ed25519 as a second one, RFC 8463) that independent
verifiers accept against the records ``mailgw domain dns`` printed, served by
twisted.names' own DNS server on loopback: dkimpy; mailauth (Node, from npm,
installed once into the checkout's .cache folder); and Perl's Mail::DKIM
(Debian's libmail-dkim-perl), which knows no Ed25519 and must still pass the
RSA signature (RFC 8463 section 1: such verifiers ignore the other one).

The messages come over SMTP (smtplib) and the HTTP API (/send/raw), with
what stresses canonicalisation (RFC 6376 section 3.4): trailing white space,
empty lines at the end, long folded header fields, 8-bit text, lone dots.
One gateway serves every message: the test sends them all, then verifies.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import dkim
import dns.resolver
from twisted.internet import defer, reactor, threads
from twisted.names import dns as tdns

from tests.e2e.gateway import mailgw_cli, send_raw, send_smtp
from tests.e2e.test_relay import SETTLE_TIMEOUT
from tests.e2e.test_submission import GatewayTestBase
from tests.relay.sink import Sink
from tests.relay.zone import Zone, serve

HERE = os.path.dirname(os.path.abspath(__file__))
PERL_VERIFIER = os.path.join(HERE, "dkim_verify.pl")
NODE_VERIFIER = os.path.join(HERE, "dkim_verify.js")
#: the npm package and version of the Node verifier, and where it is installed
MAILAUTH = "mailauth@4.13.3"
NODE_CACHE = os.path.join(os.path.dirname(os.path.dirname(HERE)), ".cache", "dkim-verifier")

HEAD = (b"From: App <app@good.example>\r\nTo: user@dest.example\r\n"
        b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n")
#: (name, message): each is sent over SMTP and over the HTTP API
MESSAGES = [
    ("trailing white space", HEAD + b"Subject: spaces   \r\n\r\n"
     b"line with spaces   \r\n\ttabbed\t \r\n  \r\nend\r\n"),
    ("empty lines at the end", HEAD + b"Subject: empty lines\r\n\r\nbody\r\n\r\n\r\n\r\n"),
    ("long folded header", HEAD + b"Subject: " + b"word " * 40 + b"\r\n\t" + b"more " * 40
     + b"\r\n  and\t more\r\nX-Long: " + b"x" * 900 + b"\r\n\r\nfolded\r\n"),
    ("8-bit", HEAD + b"Subject: caf\xc3\xa9\r\nContent-Type: text/plain; charset=utf-8\r\n"
     b"Content-Transfer-Encoding: 8bit\r\n\r\n\xc3\xa9t\xc3\xa9 \xe2\x82\xac\r\n"
     b"latin-1 \xe9\xff\r\n"),
    ("lone dots and no Message-ID", HEAD + b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n"),
    ("no body", HEAD + b"Subject: no body\r\n\r\n"),
]


class DKIMEndToEndTests(GatewayTestBase):
    """A gateway relaying to the sink, with the HTTP API on."""

    @defer.inlineCallbacks
    def setUp(self):
        if shutil.which("perl") is None or subprocess.run(
                ["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e", "1"],
                capture_output=True).returncode != 0:
            self.skip_or_fail("Perl's Mail::DKIM and Net::DNS (Debian: libmail-dkim-perl "
                              "libnet-dns-perl)")
        yield threads.deferToThread(self.install_mailauth)
        self.sink = Sink()
        port = self.sink.listen(self)
        self.config_tables = "\n".join([
            "[relay]", "enabled = true", f'smarthost = "127.0.0.1:{port}"', 'tls = "none"',
            "poll_interval = 0.2",
            "[http_api]", 'endpoint = "tcp:0:interface=127.0.0.1"'])
        yield GatewayTestBase.setUp(self)

    def skip_or_fail(self, what: str):
        from twisted.trial.unittest import SkipTest
        if os.environ.get("CI") == "true":
            self.fail(f"CI must have {what}")
        raise SkipTest(f"needs {what}")

    def install_mailauth(self):
        if os.path.isdir(os.path.join(NODE_CACHE, "node_modules", "mailauth")):
            return
        if shutil.which("node") is None or shutil.which("npm") is None:
            self.skip_or_fail("Node.js and npm (Debian: nodejs npm)")
        os.makedirs(NODE_CACHE, exist_ok=True)
        result = subprocess.run(["npm", "install", "--prefix", NODE_CACHE, "--no-audit",
                                 "--no-fund", "--silent", MAILAUTH],
                                capture_output=True, timeout=300)
        if result.returncode != 0:
            self.skip_or_fail(f"{MAILAUTH} from npm ({result.stderr.decode()[-500:]})")

    def cli(self, *args):
        return threads.deferToThread(mailgw_cli, self.config, *args)

    def send_smtp(self, message: bytes):
        code, text = send_smtp(self.gateway.port(), self.key, message)
        self.assertEqual(code, 250, text)

    def send_api(self, key: str, message: bytes):
        answer = send_raw(self.gateway.api_port, key, message)
        self.assertEqual(answer["status"], "success", answer)

    def zone_of(self, records) -> Zone:
        """The DKIM records `domain dns --json` printed, as a DNS zone serves them."""
        zone = {}
        for record in records:
            if record["purpose"] == "dkim":
                value = record["value"].encode()
                zone[record["name"]] = [tdns.Record_TXT(
                    *[value[i:i + 255] for i in range(0, len(value), 255)])]
        return Zone(zone)

    @defer.inlineCallbacks
    def test_rsa_and_ed25519_signatures_verify_with_two_verifiers(self):
        ed = yield self.cli("domain", "rotate-dkim", "good.example", "--algorithm", "ed25519",
                            "--json")
        records = yield self.cli("domain", "dns", "good.example", "--json")
        selectors = {r["selector"]: r["value"] for r in records if r["purpose"] == "dkim"}
        self.assertEqual(len(selectors), 2)
        self.assertTrue(selectors[ed["selector"]].startswith("v=DKIM1; k=ed25519; p="))
        address = serve(self, self.zone_of(records))
        api_key = (yield self.cli("credential", "add", "acme/web", "--type", "api",
                                  "--json"))["key"]
        for _, message in MESSAGES:
            yield threads.deferToThread(self.send_smtp, message)
            yield threads.deferToThread(self.send_api, api_key, message)
        arrived = yield self.sink.wait_for(2 * len(MESSAGES)).addTimeout(
            SETTLE_TIMEOUT, reactor)
        for (name, sent), received in zip([m for m in MESSAGES for _ in (0, 1)], arrived):
            whole = received.message
            self.assertIn(sent.split(b"\r\n\r\n", 1)[1], whole, name)
            results = yield threads.deferToThread(self.verify_with_dkimpy, whole, address)
            self.assertEqual(results, [True, True], name)
            lines = yield threads.deferToThread(self.verify_with, "node", whole, address)
            self.assertEqual(sorted((line.split()[0], line.split()[3]) for line in lines),
                             [("pass", "ed25519-sha256"), ("pass", "rsa-sha256")],
                             f"{name}: {lines}")
            lines = yield threads.deferToThread(self.verify_with, "perl", whole, address)
            self.assertEqual(sorted(line.split(" ", 4)[0::3][:2] for line in lines),
                             [["invalid", "ed25519-sha256"], ["pass", "rsa-sha256"]],
                             f"{name}: {lines}")
            self.assertIn("unsupported algorithm ed25519-sha256", "".join(lines))
        # a changed body fails both signatures, in every verifier
        tampered = arrived[0].message.replace(b"end\r\n", b"End\r\n")
        self.assertEqual((yield threads.deferToThread(self.verify_with_dkimpy, tampered,
                                                      address)), [False, False])
        lines = yield threads.deferToThread(self.verify_with, "node", tampered, address)
        # mailauth words a body hash mismatch "neutral" (RFC 8601 section 2.7.1 leaves
        # it to the verifier), with the reason
        self.assertEqual([line.split()[0] for line in lines], ["neutral", "neutral"], lines)
        self.assertTrue(all("body hash did not verify" in line for line in lines), lines)
        lines = yield threads.deferToThread(self.verify_with, "perl", tampered, address)
        self.assertEqual(sorted(line.split()[0] for line in lines), ["fail", "invalid"], lines)

    @staticmethod
    def verify_with_dkimpy(message: bytes, address: str) -> list[bool]:
        host, _, port = address.rpartition(":")
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = [host], int(port), 10

        def dnsfunc(name, timeout=5):
            name = name.decode() if isinstance(name, bytes) else name
            answer = resolver.resolve(name, "TXT")
            return b"".join(b"".join(r.strings) for r in answer)
        d = dkim.DKIM(message)
        count = sum(1 for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
                    if line.lower().startswith(b"dkim-signature:"))
        results = []
        for i in range(count):
            try:
                results.append(d.verify(idx=i, dnsfunc=dnsfunc))
            except dkim.ValidationError:  # DKIM.verify raises what dkim.verify catches
                results.append(False)
        return results

    @staticmethod
    def verify_with(program: str, message: bytes, address: str) -> list[str]:
        """The lines of C{dkim_verify.pl} or C{dkim_verify.js}, one per signature."""
        script = PERL_VERIFIER if program == "perl" else NODE_VERIFIER
        env = dict(os.environ, NODE_PATH=os.path.join(NODE_CACHE, "node_modules"))
        result = subprocess.run([program, script, address], input=message, env=env,
                                capture_output=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(result.stderr.decode())
        return result.stdout.decode().splitlines()
