"""TLS options, checked with real clients (C{openssl s_client}, Python's
C{ssl}) against a real listener on 127.0.0.1 that serves implicit TLS with
L{TLSOptions}: ALPN offers are ignored rather than refused, the defaults are
Mozilla's "intermediate" profile, the certificate and key must match (at
start and at reload), and an expiring certificate is warned about and
exported as a gauge."""
from __future__ import annotations

import os
import re
import ssl
import warnings

from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, threads
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from mailgw.admin.devsetup import make_certificate
from mailgw.config import TLSConfig
from mailgw.metrics import Metrics
from mailgw.smtp.tlslayer import DirectTLSFactory
from mailgw.tls import TLSConfigError, TLSOptions
from tests.tlsclients import insecure_context, make_pair, python_handshake, s_client, write_file

#: what s_client prints when the handshake failed on a refusal by the server
REFUSED = re.compile(r"alert handshake failure|no shared cipher|no ciphers available"
                     r"|alert protocol version|unsupported protocol|no protocols available")


class LineServer(LineReceiver):
    """Just enough SMTP for the clients: a greeting, 250 to anything, 221 to
    QUIT."""

    def connectionMade(self):
        self.factory.open.append(self)
        self.closed = defer.Deferred()
        self.sendLine(b"220 unit.test ESMTP")

    def lineReceived(self, line):
        if line.upper().startswith(b"QUIT"):
            self.sendLine(b"221 Bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 unit.test")

    def connectionLost(self, reason):
        self.closed.callback(None)


class TLSTestBase(unittest.TestCase):
    def setUp(self):
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.cert = os.path.join(self.folder, "cert.pem")
        self.key = os.path.join(self.folder, "key.pem")
        self.write()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def write(self, mtime=None, **pair_options):
        """A fresh pair on disk; its certificate."""
        cert, key, certificate = make_pair(**pair_options)
        write_file(self.key, key, mtime)
        write_file(self.cert, cert, mtime)
        return certificate

    def log_lines(self, text):
        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    def listen(self, options):
        """Serve implicit TLS with C{options} on 127.0.0.1; the port."""
        factory = protocol.ServerFactory.forProtocol(LineServer)
        factory.open = []
        port = reactor.listenTCP(0, DirectTLSFactory(options, False, factory),
                                 interface="127.0.0.1")

        def close():
            # every connection a client made is gone before the test ends
            d = defer.DeferredList([p.closed for p in factory.open])
            d.addCallback(lambda _: port.stopListening())
            return d
        self.addCleanup(close)
        return port.getHost().port

    def s_client(self, port, *args, **kwargs):
        return threads.deferToThread(s_client, port, *args, **kwargs)

    @defer.inlineCallbacks
    def assert_refused(self, port, *args):
        code, output = yield self.s_client(port, *args)
        self.assertNotEqual(code, 0, output)
        self.assertRegex(output, REFUSED)
        self.assertNotIn("250 unit.test", output)

    @defer.inlineCallbacks
    def assert_accepted(self, port, *args):
        code, output = yield self.s_client(port, *args)
        self.assertEqual(code, 0, output)
        self.assertIn("250 unit.test", output)
        return output

    def handshake(self, port, context=None):
        return threads.deferToThread(python_handshake, port, context)


class ALPNTests(TLSTestBase):
    """RFC 7301 section 3.2: a server that supports none of the client's
    protocols may ignore the extension; it must not abort the handshake."""

    @defer.inlineCallbacks
    def test_openssl_alpn_offer_is_ignored(self):
        port = self.listen(TLSOptions(self.cert, self.key))
        output = yield self.assert_accepted(port, "-alpn", "smtp")
        self.assertIn("No ALPN negotiated", output)
        self.assertNotIn("internal error", output)

    @defer.inlineCallbacks
    def test_python_alpn_offer_is_ignored(self):
        port = self.listen(TLSOptions(self.cert, self.key))
        for offer in (["smtp"], ["h2", "http/1.1"]):
            context = insecure_context()
            context.set_alpn_protocols(offer)
            result = yield self.handshake(port, context)
            self.assertIsNone(result["alpn"])
            self.assertIn(b"250 unit.test", result["reply"])

    @defer.inlineCallbacks
    def test_reloaded_options_ignore_alpn_too(self):
        options = TLSOptions(self.cert, self.key)
        port = self.listen(options)
        self.write(mtime=1_000_000)
        self.assertTrue(options.reload_if_changed())
        yield self.assert_accepted(port, "-alpn", "smtp")


class DefaultsTests(TLSTestBase):
    """Mozilla's server-side TLS guidelines, "intermediate" profile: TLS 1.2
    with ECDHE and AEAD ciphers only, and TLS 1.3; no static RSA key
    exchange, no CBC, nothing older than TLS 1.2, and the groups X25519,
    P-256 and P-384 at most."""

    @defer.inlineCallbacks
    def test_rsa_certificate(self):
        self.write(key_type="rsa")
        port = self.listen(TLSOptions(self.cert, self.key))
        # static RSA key exchange (no forward secrecy), and CBC
        yield self.assert_refused(port, "-tls1_2", "-cipher", "AES128-GCM-SHA256")
        yield self.assert_refused(port, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA")
        yield self.assert_refused(port, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-SHA384")
        yield self.assert_refused(port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
        for cipher in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                       "ECDHE-RSA-CHACHA20-POLY1305"):
            output = yield self.assert_accepted(port, "-tls1_2", "-cipher", cipher)
            self.assertRegex(output, rf"Cipher is {cipher}\b")
        output = yield self.assert_accepted(port, "-tls1_3")
        self.assertRegex(output, r"Protocol\s*:\s*TLSv1\.3")

    @defer.inlineCallbacks
    def test_python_clients(self):
        self.write(key_type="rsa")
        port = self.listen(TLSOptions(self.cert, self.key))
        static = insecure_context()
        static.maximum_version = ssl.TLSVersion.TLSv1_2
        static.set_ciphers("AES128-GCM-SHA256:AES256-SHA")
        with self.assertRaises(ssl.SSLError):
            yield self.handshake(port, static)
        ecdhe = insecure_context()
        ecdhe.maximum_version = ssl.TLSVersion.TLSv1_2
        ecdhe.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
        result = yield self.handshake(port, ecdhe)
        self.assertEqual((result["version"], result["cipher"]),
                         ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"))
        result = yield self.handshake(port)
        self.assertEqual(result["version"], "TLSv1.3")

    @defer.inlineCallbacks
    def test_ecdsa_certificate_of_make_run(self):
        cert, key = make_certificate("localhost")
        write_file(self.cert, cert)
        write_file(self.key, key)
        port = self.listen(TLSOptions(self.cert, self.key))
        for cipher in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                       "ECDHE-ECDSA-CHACHA20-POLY1305"):
            output = yield self.assert_accepted(port, "-tls1_2", "-cipher", cipher)
            self.assertRegex(output, rf"Cipher is {cipher}\b")
        yield self.assert_refused(port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA")
        output = yield self.assert_accepted(port)
        self.assertRegex(output, r"Protocol\s*:\s*TLSv1\.3")

    @defer.inlineCallbacks
    def test_groups(self):
        # The default keeps OpenSSL's groups, X25519 first (see ecdh_curve).
        port = self.listen(TLSOptions(self.cert, self.key))
        output = yield self.assert_accepted(port, "-curves", "X25519:P-256:P-384")
        self.assertIn("Server Temp Key: X25519", output)
        self.assertNotIn("HelloRetryRequest", output)
        for group, shown in (("P-256", "ECDH, prime256v1"), ("P-384", "ECDH, secp384r1")):
            output = yield self.assert_accepted(port, "-curves", group)
            self.assertIn(f"Server Temp Key: {shown}", output)


class SettingsTests(TLSTestBase):
    """C{min_version}, C{ciphers} and C{curves} change what is offered."""

    @defer.inlineCallbacks
    def test_minimum_version_1_3(self):
        port = self.listen(TLSOptions(self.cert, self.key, "1.3"))
        yield self.assert_refused(port, "-tls1_2")
        yield self.assert_accepted(port, "-tls1_3")

    @defer.inlineCallbacks
    def test_ciphers_override_the_tls_1_2_list(self):
        self.write(key_type="rsa")
        port = self.listen(TLSOptions(self.cert, self.key,
                                      ciphers="ECDHE-RSA-AES256-GCM-SHA384"))
        yield self.assert_refused(port, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
        yield self.assert_accepted(port, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384")
        yield self.assert_accepted(port, "-tls1_3")

    @defer.inlineCallbacks
    def test_curves(self):
        port = self.listen(TLSOptions(self.cert, self.key, curves=("P-384",)))
        yield self.assert_refused(port, "-curves", "P-256")
        output = yield self.assert_accepted(port, "-curves", "P-256:P-384")
        self.assertIn("Server Temp Key: ECDH, secp384r1", output)

    def test_bad_settings_name_the_key(self):
        with self.assertRaises(TLSConfigError) as caught:
            TLSOptions(self.cert, self.key, curves=("P-256", "brainpool-nonsense"))
        self.assertIn("tls.curves", str(caught.exception))
        self.assertIn("brainpool-nonsense", str(caught.exception))
        with self.assertRaises(TLSConfigError) as caught:
            TLSOptions(self.cert, self.key, ciphers="NO-SUCH-CIPHER")
        self.assertIn("tls.ciphers", str(caught.exception))

    def test_no_deprecation_warnings(self):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            options = TLSOptions(self.cert, self.key)
            self.assertIsInstance(options.server_options().getContext(), SSL.Context)


class KeyMatchTests(TLSTestBase):
    """The key must belong to the certificate, at start and at reload."""

    def write_mismatched(self, mtime=None):
        cert, _, certificate = make_pair()
        _, key, _ = make_pair()
        write_file(self.key, key, mtime)
        write_file(self.cert, cert, mtime)
        return certificate

    def test_mismatch_at_start(self):
        self.write_mismatched()
        with self.assertRaises(TLSConfigError) as caught:
            TLSOptions(self.cert, self.key)
        self.assertEqual(str(caught.exception),
                         f"tls.private_key {self.key} does not match "
                         f"tls.certificate {self.cert}")

    def test_mismatch_of_key_types_at_start(self):
        cert, _, _ = make_pair(key_type="rsa")
        write_file(self.cert, cert)
        with self.assertRaises(TLSConfigError) as caught:
            TLSOptions(self.cert, self.key)
        self.assertIn("does not match", str(caught.exception))

    @defer.inlineCallbacks
    def test_mismatch_at_reload_keeps_the_old_pair(self):
        old = self.write()
        options = TLSOptions(self.cert, self.key)
        port = self.listen(options)
        self.write_mismatched(mtime=1_000_000)
        self.assertFalse(options.reload_if_changed())
        served = yield self.handshake(port)
        self.assertEqual(served["serial"], old.serial_number)
        errors = self.log_lines("not reloaded")
        self.assertEqual(errors, [f"TLS certificate not reloaded: tls.private_key {self.key} "
                                  f"does not match tls.certificate {self.cert}"])
        self.assertEqual(self.log_lines("reloaded from"), [])
        # the same files are not tried (nor logged) again on the next check
        self.assertFalse(options.reload_if_changed())
        self.assertEqual(len(self.log_lines("not reloaded")), 1)
        # a later good pair is picked up
        new = self.write(mtime=2_000_000)
        self.assertTrue(options.reload_if_changed())
        served = yield self.handshake(port)
        self.assertEqual(served["serial"], new.serial_number)
        self.assertEqual(len(self.log_lines("reloaded from")), 1)


class ExpiryTests(TLSTestBase):
    """A certificate that expires within C{expiry_warning_days} gets one
    warning line at start and at each reload; the gauge
    C{mailgw_tls_certificate_expiry_seconds} holds its notAfter."""

    def expiry(self, metrics):
        return metrics.registry.get_sample_value("mailgw_tls_certificate_expiry_seconds")

    def warnings(self):
        return [formatEvent(e) for e in self.events
                if e.get("log_level") is not None and e["log_level"].name == "warn"
                and "expire" in formatEvent(e)]

    def test_expiring_soon_warns_at_start_and_reload(self):
        soon = self.write(days=3)
        metrics = Metrics()
        options = TLSOptions(self.cert, self.key, expiry_warning_days=14, metrics=metrics)
        [line] = self.warnings()
        self.assertRegex(line, r"^TLS certificate .*cert\.pem expires in 3 days \(")
        self.assertIn(self.cert, line)
        self.assertEqual(self.expiry(metrics), soon.not_valid_after_utc.timestamp())
        later = self.write(mtime=1_000_000, days=2)
        self.assertTrue(options.reload_if_changed())
        self.assertEqual(len(self.warnings()), 2)
        self.assertRegex(self.warnings()[1], r"expires in 2 days \(")
        self.assertEqual(self.expiry(metrics), later.not_valid_after_utc.timestamp())

    def test_far_from_expiry_does_not_warn(self):
        far = self.write(days=60)
        metrics = Metrics()
        options = TLSOptions.from_config(TLSConfig(certificate=self.cert, private_key=self.key),
                                         metrics=metrics)
        self.assertEqual(self.warnings(), [])
        self.assertEqual(self.expiry(metrics), far.not_valid_after_utc.timestamp())
        renewed = self.write(mtime=1_000_000, days=90)
        self.assertTrue(options.reload_if_changed())
        self.assertEqual(self.warnings(), [])
        self.assertEqual(self.expiry(metrics), renewed.not_valid_after_utc.timestamp())

    def test_expired_certificate_warns(self):
        self.write(days=-1)
        TLSOptions(self.cert, self.key)
        [line] = self.warnings()
        self.assertRegex(line, r"^TLS certificate .*cert\.pem expired 1 days? ago \(")

    def test_warning_days_setting(self):
        self.write(days=20)
        TLSOptions(self.cert, self.key)
        self.assertEqual(self.warnings(), [])
        TLSOptions(self.cert, self.key, expiry_warning_days=30)
        self.assertEqual(len(self.warnings()), 1)


class FilesTests(TLSTestBase):
    def test_bad_files_name_the_file(self):
        with self.assertRaises(TLSConfigError) as caught:
            TLSOptions(os.path.join(self.folder, "missing.pem"), self.key)
        self.assertIn("missing.pem", str(caught.exception))
        with open(self.key, "wb") as f:
            f.write(b"not a key")
        with self.assertRaises(TLSConfigError) as caught:
            TLSOptions(self.cert, self.key)
        self.assertEqual(str(caught.exception),
                         f"{self.key}: not an unencrypted PEM private key")

    def test_reload_only_when_changed_and_keep_old_on_error(self):
        options = TLSOptions(self.cert, self.key)
        first = options.server_options()
        self.assertFalse(options.reload_if_changed())
        self.write(mtime=1_000_000)
        self.assertTrue(options.reload_if_changed())
        second = options.server_options()
        self.assertIsNot(first, second)
        with open(self.cert, "wb") as f:
            f.write(b"garbage")
        os.utime(self.cert, (2_000_000, 2_000_000))
        self.assertFalse(options.reload_if_changed())
        self.assertIs(options.server_options(), second)
        self.flushLoggedErrors()
