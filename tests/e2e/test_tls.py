"""Real TLS on loopback against the real gateway: STARTTLS (smtplib, openssl
s_client, swaks --tls), implicit TLS (SMTP_SSL, swaks --tlsc), the STARTTLS
injection case, clients that offer ALPN, Mozilla's "intermediate" defaults
(TLS 1.1, static RSA and CBC refused), a certificate swapped on disk, a key
that does not match its certificate, and a certificate about to expire."""
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

from twisted.trial import unittest

from tests.e2e.gateway import Gateway, require_tool, write_config
from tests.e2e.test_submission import MESSAGE, QUEUED, GatewayTestBase
from tests.tlsclients import make_pair, python_handshake, s_client
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
    #: options of L{make_pair} for the certificate; None: C{make run}'s own
    #: (L{make_certificate}, EC P-256)
    certificate_options = None

    def tls_settings(self):
        self.cert_path = os.path.join(self.folder, "cert.pem")
        self.key_path = os.path.join(self.folder, "key.pem")
        self.write_certificate()
        return {"certificate": self.cert_path, "private_key": self.key_path,
                "reload_interval": self.reload_interval}

    def write_certificate(self, key=None):
        """A new pair on disk (the key first, as a renewal writes it); the
        certificate's SHA-256 fingerprint. C{key}: write this key instead of
        the certificate's own."""
        if self.certificate_options is None:
            cert, own_key = make_certificate("localhost")
        else:
            cert, own_key, _ = make_pair(**self.certificate_options)
        for path, data in ((self.key_path, key or own_key), (self.cert_path, cert)):
            with open(path + ".new", "wb") as f:
                f.write(data)
            os.replace(path + ".new", path)
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.decode())).hexdigest()

    def served_fingerprint(self):
        with socket.create_connection(("127.0.0.1", self.gateway.port("implicit")), 10) as raw:
            with client_context().wrap_socket(raw) as tls:
                return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()

    def served_serial(self):
        return python_handshake(self.gateway.port("implicit"))["serial"]

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


class ALPNTests(TLSGatewayBase):
    """A client that offers ALPN (here the protocol id "smtp", which the
    gateway does not know) is served without ALPN, as RFC 7301 section 3.2
    allows, on STARTTLS and on implicit TLS."""

    def test_openssl_s_client_alpn(self):
        for port, starttls in ((self.gateway.port("starttls"), True),
                               (self.gateway.port("implicit"), False)):
            code, output = s_client(port, "-alpn", "smtp", starttls=starttls)
            self.assertEqual(code, 0, output)
            self.assertNotIn("internal error", output)
            self.assertIn("No ALPN negotiated", output)
            self.assertIn("250 AUTH CRAM-MD5 PLAIN LOGIN", output)
            self.assertIn("221 Closing Connection", output)

    def test_python_alpn_starttls_and_smtp_ssl(self):
        context = client_context()
        context.set_alpn_protocols(["smtp"])
        client = smtplib.SMTP("127.0.0.1", self.gateway.port("starttls"), timeout=30)
        self.addCleanup(client.close)
        client.ehlo("alpn.client")
        self.assertEqual(client.starttls(context=context)[0], 220)
        self.assertIsNone(client.sock.selected_alpn_protocol())
        code, features = client.ehlo("alpn.client")
        self.assertEqual(code, 250)
        self.assertIn(b"AUTH CRAM-MD5 PLAIN LOGIN", features)
        client.quit()
        implicit = smtplib.SMTP_SSL("127.0.0.1", self.gateway.port("implicit"), timeout=30,
                                    context=context)
        self.addCleanup(implicit.close)
        code, features = implicit.ehlo("alpn.client")
        self.assertEqual(code, 250)
        self.assertIn(b"AUTH CRAM-MD5 PLAIN LOGIN", features)
        implicit.quit()


class MozillaIntermediateTests(TLSGatewayBase):
    """With C{make run}'s EC certificate: TLS 1.2 with ECDHE-ECDSA and AEAD
    ciphers and TLS 1.3 are accepted, CBC is not, and X25519 is the group a
    TLS 1.3 client gets."""

    def test_ciphers_versions_and_groups(self):
        port = self.gateway.port("implicit")
        code, output = s_client(port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
        self.assertEqual(code, 0, output)
        self.assertIn("Cipher is ECDHE-ECDSA-AES128-GCM-SHA256", output)
        code, output = s_client(port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA")
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("250 AUTH", output)
        code, output = s_client(self.gateway.port("starttls"), "-tls1_3", starttls=True)
        self.assertEqual(code, 0, output)
        self.assertRegex(output, r"Protocol\s*:\s*TLSv1\.3")
        code, output = s_client(port, "-curves", "X25519:P-256")
        self.assertEqual(code, 0, output)
        self.assertIn("Server Temp Key: X25519", output)


class RSACertificateTests(TLSGatewayBase):
    """With an RSA certificate: static RSA key exchange (no forward secrecy),
    CBC and TLS 1.1 are refused; ECDHE with AES-GCM and TLS 1.3 are
    accepted."""

    certificate_options = {"key_type": "rsa"}

    def test_refused_and_accepted(self):
        port = self.gateway.port("implicit")
        for args in (("-tls1_2", "-cipher", "AES128-GCM-SHA256"),
                     ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"),
                     ("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")):
            code, output = s_client(port, *args)
            self.assertNotEqual(code, 0, output)
            self.assertRegex(output, r"alert handshake failure|alert protocol version"
                                     r"|no protocols available|no ciphers available")
            self.assertNotIn("250 AUTH", output)
        code, output = s_client(self.gateway.port("starttls"), "-tls1_2", "-cipher",
                                "ECDHE-RSA-AES128-GCM-SHA256", starttls=True)
        self.assertEqual(code, 0, output)
        self.assertIn("250 AUTH CRAM-MD5 PLAIN LOGIN", output)
        static = client_context()
        static.maximum_version = ssl.TLSVersion.TLSv1_2
        static.set_ciphers("AES128-GCM-SHA256")
        with self.assertRaises(ssl.SSLError):
            python_handshake(port, static)
        self.assertEqual(python_handshake(port)["version"], "TLSv1.3")


class KeyMismatchAtStartTests(unittest.TestCase):
    def test_gateway_does_not_start(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        paths = [os.path.join(folder, name) for name in ("cert.pem", "key.pem")]
        cert, _, _ = make_pair()
        _, key, _ = make_pair()
        for path, data in zip(paths, (cert, key)):
            with open(path, "wb") as f:
                f.write(data)
        config = write_config(folder, database_url="sqlite:mailgw.sqlite3",
                              listeners=[{"endpoint": "tcp:0:interface=127.0.0.1",
                                          "tls": "implicit"}],
                              tls={"certificate": paths[0], "private_key": paths[1]})
        gateway = Gateway(folder, config)
        self.addCleanup(gateway.stop)
        with self.assertRaises(AssertionError):
            gateway.start(1)
        self.assertNotEqual(gateway.process.wait(15), 0)
        self.assertIn(f"mailgw: tls.private_key {paths[1]} does not match "
                      f"tls.certificate {paths[0]}\n", gateway.log())


class KeyMismatchAtReloadTests(TLSGatewayBase):
    def test_old_pair_kept_until_a_matching_one(self):
        old = self.served_serial()
        _, other_key, _ = make_pair()
        self.write_certificate(key=other_key)
        self.gateway.process.send_signal(signal.SIGHUP)
        self.wait_for_log("TLS certificate not reloaded")
        self.assertEqual(self.served_serial(), old)
        errors = [line for line in self.gateway.log().splitlines()
                  if "TLS certificate not reloaded" in line]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn(f"tls.private_key {self.key_path} does not match "
                      f"tls.certificate {self.cert_path}", errors[0])
        self.assertNotIn("TLS certificate reloaded", self.gateway.log())
        new = self.write_certificate()
        self.gateway.process.send_signal(signal.SIGHUP)
        self.wait_for_log("TLS certificate reloaded")
        self.assertEqual(self.served_fingerprint(), new)
        self.assertNotEqual(self.served_serial(), old)


class ExpiringCertificateTests(TLSGatewayBase):
    certificate_options = {"days": 3}

    def warnings(self):
        return [line for line in self.gateway.log().splitlines()
                if f"TLS certificate {self.cert_path} expires in" in line]

    def test_warned_at_start_and_at_reload(self):
        [line] = self.warnings()
        self.assertRegex(line, r"expires in 3 days \(\d{4}-\d\d-\d\d ")
        self.write_certificate()
        self.gateway.process.send_signal(signal.SIGHUP)
        self.wait_for_log("TLS certificate reloaded")
        deadline = time.monotonic() + 10
        while len(self.warnings()) < 2:
            self.assertLess(time.monotonic(), deadline, self.gateway.log())
            time.sleep(0.05)


class LongValidCertificateTests(TLSGatewayBase):
    certificate_options = {"days": 60}

    def test_no_warning(self):
        self.write_certificate()
        self.gateway.process.send_signal(signal.SIGHUP)
        self.wait_for_log("TLS certificate reloaded")
        self.assertNotIn(" expires in ", self.gateway.log())
        self.assertNotIn(" expired ", self.gateway.log())
