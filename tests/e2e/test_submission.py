"""End to end: the real ``twistd -n mailgw`` on loopback, real clients
(smtplib, swaks, curl, a raw socket replaying the seed's telnet transcript),
and the result read back through the real ``mailgw`` command line."""
from __future__ import annotations

import base64
import os
import re
import smtplib
import socket
import subprocess

from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailgw.store import open_store
from tests.e2e.gateway import Gateway, mailgw_cli, require_tool, write_config
from tests.helpers import database_url, on_postgres

#: with a Date and a Message-ID, so that the gateway stores it as sent
MESSAGE = (b"From: App <app@good.example>\r\nTo: user@dest.example\r\n"
           b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <e2e@good.example>\r\n"
           b"Subject: e2e\r\n\r\nfirst line\r\n.leading dot\r\n\xc3\xa9t\xc3\xa9\r\n")
QUEUED = re.compile(r"^OK: queued as ([A-Z0-9]{12})$")


class GatewayTestBase(unittest.TestCase):
    """A gateway on a fresh SQLite database with acme/web, the domain
    good.example and one smtp credential (self.key)."""

    listeners = [{"endpoint": "tcp:0:interface=127.0.0.1", "tls": "none"}]
    tls = None
    gateway_args = ()
    #: more TOML tables for the config (e.g. an [http_api] table)
    config_tables = ""

    @defer.inlineCallbacks
    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.url = self.database_url_for_test()
        self.config = write_config(self.folder, database_url=self.url,
                                   listeners=self.listeners, tls=self.tls_settings(),
                                   tables=self.config_tables)
        store = open_store(self.url, reactor)
        yield store.start()
        try:
            yield store.upgrade()
            yield store.add_organization("acme", "Acme")
            yield store.add_server("acme", "web", "Web")
            yield store.add_domain("good.example", server=("acme", "web"), verified=True)
            credential = yield store.add_credential(("acme", "web"), "smtp",
                                                    "E2eKey0000000000000000AB", name="e2e")
            self.key = credential.key
        finally:
            yield store.close()
        self.gateway = Gateway(self.folder, self.config, self.gateway_args,
                               http_api="[http_api]" in self.config_tables)
        self.addCleanup(self.gateway.stop)
        self.gateway.start(len(self.listeners))

    def tls_settings(self):
        return None

    def database_url_for_test(self):
        return database_url(self)

    def queue(self):
        return mailgw_cli(self.config, "queue", "list", "--json")

    def assert_queued(self, token, rcpts=("user@dest.example",), body=MESSAGE):
        entries = [e for e in self.queue() if e["token"] == token]
        self.assertEqual(sorted(e["rcpt_to"] for e in entries), sorted(rcpts))
        for entry in entries:
            self.assertEqual(entry["server"], "acme/web")
            self.assertEqual(entry["status"], "queued")
            self.assertEqual(entry["domain"], "good.example")
        raw = mailgw_cli(self.config, "queue", "show", str(entries[0]["id"]), "--raw", raw=True)
        received, rest = raw.split(b"\r\n", 1)
        self.assertTrue(received.startswith(b"Received: from "), received)
        self.assertIn(f" id {token}; ".encode(), received)
        self.assertEqual(rest, body)
        return entries, raw


class SmtplibTests(GatewayTestBase):
    def send_with(self, mechanism, authobject_name, initial_response_ok=True):
        client = smtplib.SMTP("127.0.0.1", self.gateway.port(), timeout=30)
        self.addCleanup(client.close)
        client.ehlo("e2e.client")
        client.user, client.password = ("acme/web" if mechanism == "CRAM-MD5" else "anyone",
                                        self.key)
        code, text = client.auth(mechanism, getattr(client, authobject_name),
                                 initial_response_ok=initial_response_ok)
        self.assertEqual((code, text), (235, b"Granted for acme/web"))
        client.mail("app@good.example")
        client.rcpt("user@dest.example")
        code, text = client.data(MESSAGE)  # smtplib dot-stuffs; the gateway undoes it
        self.assertEqual(code, 250)
        token = QUEUED.match(text.decode()).group(1)
        client.quit()
        return token

    def test_plain(self):
        token = self.send_with("PLAIN", "auth_plain")
        entries, raw = self.assert_queued(token)
        self.assertIn(b" with ESMTPA id ", raw)

    def test_login(self):
        self.assert_queued(self.send_with("LOGIN", "auth_login", initial_response_ok=False))

    def test_cram_md5(self):
        self.assert_queued(self.send_with("CRAM-MD5", "auth_cram_md5"))

    def test_wrong_key_then_from_not_valid(self):
        client = smtplib.SMTP("127.0.0.1", self.gateway.port(), timeout=30)
        self.addCleanup(client.close)
        client.ehlo("e2e.client")
        client.user, client.password = "x", "WrongKey0000000000000000"
        with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
            client.auth("PLAIN", client.auth_plain)
        self.assertEqual(caught.exception.smtp_code, 535)
        self.assertEqual(caught.exception.smtp_error, b"Invalid credential")
        client.user, client.password = "x", self.key
        client.auth("PLAIN", client.auth_plain)
        client.mail("app@good.example")
        client.rcpt("user@dest.example")
        code, text = client.data(b"From: x@evil.example\r\n\r\nbody\r\n")
        self.assertEqual((code, text), (530, b"From/Sender name is not valid"))
        self.assertEqual(self.queue(), [])
        log = self.gateway.log()
        # The failure was followed by a success in the same connection: it is
        # logged, but not as the line the throttle and fail2ban count.
        self.assertIn('authentication attempt failed (PLAIN, user "x")', log)
        self.assertIn("1 failed attempt(s) before this authentication not counted", log)
        self.assertNotIn("Authentication failure for 127.0.0.1", log)
        self.assertIn("message refused: From/Sender not authorised "
                      "(530 From/Sender name is not valid)", log)
        self.assertNotIn("WrongKey0000000000000000", log)


class OutsideClientTests(GatewayTestBase):
    def test_swaks(self):
        swaks = require_tool("swaks")
        body = os.path.join(self.folder, "message.eml")
        with open(body, "wb") as f:
            f.write(MESSAGE[:-2])  # swaks ends the data with its own CRLF
        result = subprocess.run(
            [swaks, "--server", "127.0.0.1", "--port", str(self.gateway.port()),
             "--auth", "PLAIN", "--auth-user", "anything", "--auth-password", self.key,
             "--from", "app@good.example", "--to", "user@dest.example",
             "--data", body, "--helo", "swaks.client"],
            capture_output=True, timeout=60)
        output = result.stdout.decode("utf-8", "replace")
        self.assertEqual(result.returncode, 0, output)
        token = re.search(r"<[-~]  250 OK: queued as ([A-Z0-9]{12})", output).group(1)
        self.assertRegex(output, r"<[-~]  235 Granted for acme/web")
        self.assert_queued(token)

    def test_curl_cram_md5(self):
        curl = require_tool("curl")
        body = os.path.join(self.folder, "message.eml")
        with open(body, "wb") as f:
            f.write(MESSAGE)
        result = subprocess.run(
            [curl, "-sS", "-v", f"smtp://127.0.0.1:{self.gateway.port()}/curl.client",
             "--mail-from", "app@good.example", "--mail-rcpt", "user@dest.example",
             "--user", f"acme/web:{self.key}", "--login-options", "AUTH=CRAM-MD5",
             "--upload-file", body],
            capture_output=True, timeout=60)
        trace = result.stderr.decode("utf-8", "replace")
        self.assertEqual(result.returncode, 0, trace)
        self.assertIn("AUTH CRAM-MD5", trace)
        self.assertIn("< 235 Granted for acme/web", trace)
        token = re.search(r"< 250 OK: queued as ([A-Z0-9]{12})", trace).group(1)
        self.assert_queued(token)


class RawSocketTests(GatewayTestBase):
    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.gateway.port()), timeout=30)
        self.addCleanup(sock.close)
        return sock, sock.makefile("rb")

    def read_reply(self, stream):
        lines = []
        while True:
            line = stream.readline()
            self.assertTrue(line.endswith(b"\r\n"), line)
            lines.append(line[:-2])
            if line[3:4] == b" ":
                return lines

    def test_seed_transcript(self):
        sock, stream = self.connect()
        greeting = self.read_reply(stream)[0]
        self.assertRegex(greeting, rb"^220 mx\.e2e\.test ESMTP mailgw/[A-Z0-9]{8}$")
        exchange = [
            (b"HELO example.com", [b"250 mx.e2e.test"]),
            (b"AUTH LOGIN", [b"334 VXNlcm5hbWU6"]),
            (b"c29tLXNtdHAtdXNlcg==", [b"334 UGFzc3dvcmQ6"]),
            (base64.b64encode(self.key.encode()), [b"235 Granted for acme/web"]),
        ]
        for command, expected in exchange:
            sock.sendall(command + b"\r\n")
            self.assertEqual(self.read_reply(stream), expected, command)

    def test_pipelining_in_one_write(self):
        sock, stream = self.connect()
        self.read_reply(stream)
        auth = base64.b64encode(b"\0u\0" + self.key.encode())
        sock.sendall(b"EHLO pipe.client\r\nAUTH PLAIN " + auth + b"\r\n")
        self.assertIn(b"250 AUTH CRAM-MD5 PLAIN LOGIN", self.read_reply(stream))
        self.assertEqual(self.read_reply(stream), [b"235 Granted for acme/web"])
        sock.sendall(b"MAIL FROM:<app@good.example>\r\nRCPT TO:<a@dest.example>\r\n"
                     b"RCPT TO:<b@dest.example>\r\nDATA\r\n")
        replies = [self.read_reply(stream) for _ in range(4)]
        self.assertEqual(replies, [[b"250 OK"], [b"250 OK"], [b"250 OK"], [b"354 Go ahead"]])
        sock.sendall(MESSAGE.replace(b"\r\n.leading", b"\r\n..leading") + b".\r\nQUIT\r\n")
        [final] = self.read_reply(stream)
        token = re.match(rb"^250 OK: queued as ([A-Z0-9]{12})$", final).group(1).decode()
        self.assertEqual(self.read_reply(stream), [b"221 Closing Connection"])
        self.assert_queued(token, rcpts=("a@dest.example", "b@dest.example"))


PostgresSmtplibTests = on_postgres(SmtplibTests)
PostgresOutsideClientTests = on_postgres(OutsideClientTests)
PostgresRawSocketTests = on_postgres(RawSocketTests)
