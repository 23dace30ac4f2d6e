"""TLS options: certificates as cryptography objects (no pyOpenSSL
deprecation warnings), versions and ciphers, clear errors, and reloading a
renewed certificate while keeping the old one when the new files are bad."""
from __future__ import annotations

import os
import warnings

from OpenSSL import SSL
from twisted.trial import unittest

from mailgw.admin.devsetup import make_certificate
from mailgw.tls import TLSConfigError, TLSOptions


class TLSOptionsTests(unittest.TestCase):
    def setUp(self):
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.cert = os.path.join(self.folder, "cert.pem")
        self.key = os.path.join(self.folder, "key.pem")
        self.write()

    def write(self, mtime=None):
        cert, key = make_certificate("localhost")
        for path, data in ((self.cert, cert), (self.key, key)):
            with open(path, "wb") as f:
                f.write(data)
            if mtime is not None:
                os.utime(path, (mtime, mtime))
        return cert

    def test_no_deprecation_warnings(self):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            options = TLSOptions(self.cert, self.key)
            self.assertIsInstance(options.server_options().getContext(), SSL.Context)

    def test_minimum_version_and_ciphers(self):
        strict = TLSOptions(self.cert, self.key, "1.3", "ECDHE+AESGCM").server_options()
        default = TLSOptions(self.cert, self.key).server_options()
        self.assertTrue(strict._options & SSL.OP_NO_TLSv1_2)
        self.assertFalse(default._options & SSL.OP_NO_TLSv1_2)
        self.assertTrue(default._options & SSL.OP_NO_TLSv1_1)
        self.assertIsInstance(strict.getContext(), SSL.Context)

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
