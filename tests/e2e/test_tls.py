"""Real TLS on loopback against the real gateway: STARTTLS (smtplib, openssl
s_client, swaks --tls), implicit TLS (SMTP_SSL, swaks --tlsc), the STARTTLS
injection case, TLS 1.1 refused, and a certificate swapped on disk."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time

from tests.e2e.gateway import require_tool
from tests.e2e.test_submission import MESSAGE, QUEUED, GatewayTestBase
from mailgw.admin.devsetup import make_certificate


def client_context():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class TLSGatewayBase(GatewayTestBase):
    listeners = [
        {"endpoint": "tcp:0:interface=127.0.0.1", "tls": "starttls"},
        {"endpoint": "tcp:0:interface=127.0.0.1", "tls": "implicit"},
    ]
    reload_interval = 0

    def tls_settings(self):
        self.cert_path = os.path.join(self.folder, "cert.pem")
        self.key_path = os.path.join(self.folder, "key.pem")
        self.write_certificate()
        return {"certificate": self.cert_path, "private_key": self.key_path,
                "reload_interval": self.reload_interval}

    def write_certificate(self):
        cert, key = make_certificate("localhost")
        for path, data in ((self.key_path, key), (self.cert_path, cert)):
            with open(path + ".new", "wb") as f:
                f.write(data)
            os.replace(path + ".new", path)
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.decode())).hexdigest()

    def served_fingerprint(self):
        with socket.create_connection(("127.0.0.1", self.gateway.port("implicit")), 10) as raw:
            with client_context().wrap_socket(raw) as tls:
                return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()

    def wait_for_log(self, text, timeout=20):
        deadline = time.monotonic() + timeout
        while text not in self.gateway.log():
            self.assertLess(time.monotonic(), deadline, f"no {text!r} in the log")
            time.sleep(0.05)


class StartTLSTests(TLSGatewayBase):
    def test_smtplib_starttls_then_auth(self):
        client = smtplib.SMTP("127.0.0.1", self.gateway.port("starttls"), timeout=30)
        self.addCleanup(client.close)
        code, features = client.ehlo("tls.client")
        self.assertIn(b"STARTTLS", features)
        self.assertNotIn(b"AUTH", features)
        self.assertEqual(client.docmd("AUTH PLAIN x"),
                         (530, b"Must issue a STARTTLS command first"))
        self.assertEqual(client.starttls(context=client_context())[0], 220)
        code, features = client.ehlo("tls.client")
        self.assertNotIn(b"STARTTLS", features)
        self.assertIn(b"AUTH CRAM-MD5 PLAIN LOGIN", features)
        client.login("anyone", self.key)
        client.mail("app@good.example")
        client.rcpt("user@dest.example")
        code, text = client.data(MESSAGE)
        token = QUEUED.match(text.decode()).group(1)
        _, raw = self.assert_queued(token)
        self.assertIn(b" with ESMTPSA id ", raw)

    def test_injection_after_starttls_is_not_executed(self):
        sock = socket.create_connection(("127.0.0.1", self.gateway.port("starttls")), 30)
        self.addCleanup(sock.close)
        stream = sock.makefile("rb")
        stream.readline()
        sock.sendall(b"EHLO inject.client\r\n")
        while not stream.readline().startswith(b"250 "):
            pass
        sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@good.example>\r\n")
        self.assertEqual(stream.readline(), b"220 Ready to start TLS\r\n")
        tls = client_context().wrap_socket(sock)
        tls.sendall(b"MAIL FROM:<app@good.example>\r\n")
        reply = tls.recv(1024)
        self.assertEqual(reply, b"503 EHLO/HELO first please\r\n")
        tls.close()

    def test_openssl_s_client_starttls(self):
        openssl = require_tool("openssl")
        result = subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{self.gateway.port('starttls')}",
             "-starttls", "smtp", "-ign_eof"],
            input=b"EHLO openssl.client\r\nQUIT\r\n", capture_output=True, timeout=60)
        output = result.stdout.decode("utf-8", "replace")
        self.assertIn("250 AUTH CRAM-MD5 PLAIN LOGIN", output)
        self.assertIn("221 Closing Connection", output)
        self.assertRegex(output, r"Protocol\s*:\s*TLSv1\.[23]")

    def test_swaks_tls(self):
        swaks = require_tool("swaks")
        for flag, port in (("--tls", self.gateway.port("starttls")),
                           ("--tlsc", self.gateway.port("implicit"))):
            result = subprocess.run(
                [swaks, "--server", "127.0.0.1", "--port", str(port), flag,
                 "--auth", "LOGIN", "--auth-user", "x", "--auth-password", self.key,
                 "--from", "app@good.example", "--to", "user@dest.example",
                 "--header", "From: app@good.example"],
                capture_output=True, timeout=60)
            output = result.stdout.decode("utf-8", "replace")
            self.assertEqual(result.returncode, 0, output)
            self.assertIn("<~  235 Granted for acme/web", output)
            token = re.search(r"<~  250 OK: queued as ([A-Z0-9]{12})", output).group(1)
            [entry] = [e for e in self.queue() if e["token"] == token]
            self.assertEqual(entry["domain"], "good.example")


class ImplicitTLSTests(TLSGatewayBase):
    def test_smtp_ssl(self):
        client = smtplib.SMTP_SSL("127.0.0.1", self.gateway.port("implicit"), timeout=30,
                                  context=client_context())
        self.addCleanup(client.close)
        code, features = client.ehlo("ssl.client")
        self.assertNotIn(b"STARTTLS", features)
        self.assertEqual(client.docmd("STARTTLS"), (503, b"TLS already active"))
        client.user, client.password = "acme_web", self.key
        client.auth("CRAM-MD5", client.auth_cram_md5)
        client.mail("app@good.example")
        client.rcpt("user@dest.example")
        code, text = client.data(MESSAGE)
        self.assertEqual(code, 250)

    def test_tls_1_1_refused_and_1_2_accepted(self):
        openssl = require_tool("openssl")
        address = f"127.0.0.1:{self.gateway.port('implicit')}"
        old = subprocess.run([openssl, "s_client", "-connect", address, "-tls1_1",
                              "-cipher", "DEFAULT:@SECLEVEL=0"],
                             input=b"", capture_output=True, timeout=60)
        self.assertNotEqual(old.returncode, 0)
        self.assertRegex((old.stdout + old.stderr).decode("utf-8", "replace"),
                         r"alert protocol version|unsupported protocol|no protocols available")
        new = subprocess.run([openssl, "s_client", "-connect", address, "-tls1_2"],
                             input=b"QUIT\r\n", capture_output=True, timeout=60)
        self.assertIn(b"220 mx.e2e.test ESMTP mailgw/", new.stdout)


class CertificateReloadTests(TLSGatewayBase):
    def test_sighup_serves_new_certificate_to_next_connection(self):
        before = self.served_fingerprint()
        client = smtplib.SMTP_SSL("127.0.0.1", self.gateway.port("implicit"), timeout=30,
                                  context=client_context())
        self.addCleanup(client.close)
        client.ehlo("kept.client")
        new = self.write_certificate()
        self.assertNotEqual(new, before)
        self.gateway.process.send_signal(signal.SIGHUP)
        self.wait_for_log("TLS certificate reloaded")
        self.assertEqual(self.served_fingerprint(), new)
        self.assertEqual(client.noop()[0], 250)  # the open connection was kept


class PeriodicReloadTests(TLSGatewayBase):
    reload_interval = 1

    def test_modified_files_are_picked_up(self):
        new = self.write_certificate()
        self.wait_for_log("TLS certificate reloaded")
        self.assertEqual(self.served_fingerprint(), new)
