"""The pure checks of L{mailgw.domains.checks}: each record OK, Missing or
Invalid, with the value to publish."""
from __future__ import annotations

from twisted.trial import unittest

from mailgw.domains.checks import (
    INVALID, MISSING, OK, Check, dkim_status, mx_status, return_path_status, spf_status,
    verification_status,
)

KEY = "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx"


class VerificationTests(unittest.TestCase):
    def test_ok_among_other_records(self):
        self.assertEqual(
            verification_status(["v=spf1 -all", "mailgw-verification tok"], "tok"),
            Check(OK, "mailgw-verification tok", ("mailgw-verification tok",)))

    def test_missing_and_wrong_token(self):
        self.assertEqual(verification_status(["google-site-verification=x"], "tok"),
                         Check(MISSING, "mailgw-verification tok"))
        self.assertEqual(verification_status(["mailgw-verification old"], "tok"),
                         Check(INVALID, "mailgw-verification tok",
                               ("mailgw-verification old",)))
        self.assertEqual(verification_status(["mailgw-verification tokx"], "tok").status,
                         INVALID)

    def test_check_is_frozen(self):
        check = verification_status([], "tok")
        with self.assertRaises(AttributeError):
            check.status = OK


class SPFTests(unittest.TestCase):
    def test_ok_with_and_without_include(self):
        self.assertEqual(spf_status(["v=spf1 a mx ~all"]).status, OK)
        check = spf_status(["other", "v=spf1 ip4:192.0.2.1 +include:SPF.example.net -all"],
                           "spf.example.net")
        self.assertEqual((check.status, check.found),
                         (OK, ("v=spf1 ip4:192.0.2.1 +include:SPF.example.net -all",)))

    def test_missing(self):
        self.assertEqual(spf_status(["v=spf10 a", "x"], "spf.example.net"),
                         Check(MISSING, "v=spf1 a mx include:spf.example.net ~all"))

    def test_without_the_include_or_twice_is_invalid(self):
        self.assertEqual(spf_status(["v=spf1 a -all"], "spf.example.net"),
                         Check(INVALID, "v=spf1 a mx include:spf.example.net ~all",
                               ("v=spf1 a -all",)))
        self.assertEqual(spf_status(["v=spf1 a -all", "V=SPF1 mx -all"]).status, INVALID)
        self.assertEqual(spf_status(["v=spf1 include:spf.example.network -all"],
                                    "spf.example.net").status, INVALID)


class DKIMTests(unittest.TestCase):
    def test_ok_whatever_the_whitespace(self):
        self.assertEqual(dkim_status([KEY], KEY), Check(OK, KEY, (KEY,)))
        spaced = "v=DKIM1 ;k=rsa;  p=MIIBIjANBgkqhkiG9w0B AQEFAAOCAQ8AMIIBCgKCAQEAx;"
        self.assertEqual(dkim_status([spaced], KEY).status, OK)

    def test_missing_and_invalid(self):
        self.assertEqual(dkim_status([], KEY), Check(MISSING, KEY))
        self.assertEqual(dkim_status([KEY[:-1]], KEY).status, INVALID)
        self.assertEqual(dkim_status(["not a key"], KEY).status, INVALID)
        self.assertEqual(dkim_status([KEY, KEY], KEY).status, INVALID)


class ReturnPathAndMXTests(unittest.TestCase):
    def test_return_path(self):
        self.assertEqual(return_path_status(["RP.example.net."], "rp.example.net"),
                         Check(OK, "rp.example.net", ("rp.example.net",)))
        self.assertEqual(return_path_status([], "rp.example.net"),
                         Check(MISSING, "rp.example.net"))
        self.assertEqual(return_path_status(["elsewhere.example"], "rp.example.net").status,
                         INVALID)

    def test_mx(self):
        self.assertEqual(mx_status(["10 mx.example.com"]),
                         Check(OK, "at least one MX record", ("10 mx.example.com",)))
        self.assertEqual(mx_status([]), Check(MISSING, "at least one MX record"))
