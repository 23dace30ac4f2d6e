"""The header section parser and the From/Sender rule (the wire contract's §7):
mailgw.submission.headers and mailgw.submission.policy."""

import time

from twisted.trial import unittest

from mailgw.submission import MalformedHeaderSection
from mailgw.submission.headers import canonical_header_section, parse_fields
from mailgw.submission.policy import AuthorisedDomains, check_sender_fields

GOOD = AuthorisedDomains(names=frozenset({"good.example", "xn--exmple-cua.com"}), any_domain=None)
ANY = AuthorisedDomains(names=frozenset({"any.example"}), any_domain="any.example")
NONE = AuthorisedDomains(names=frozenset(), any_domain=None)


def headers(*lines: str | bytes) -> bytes:
    """Join header lines with CRLF and end the block with the empty line."""
    raw = [line.encode("utf-8") if isinstance(line, str) else line for line in lines]
    return b"\r\n".join(raw) + b"\r\n\r\n"


def header_fields(block: bytes):
    return parse_fields(canonical_header_section(block))


def check_sender(block: bytes, *, allow_sender_header: bool, authorised):
    return check_sender_fields(header_fields(block), allow_sender_header=allow_sender_header,
                               authorised=authorised)


class HeaderFieldsTests(unittest.TestCase):
    def test_fields_in_order_with_lower_cased_names(self):
        block = headers("From: a@b.example", "To: c@d.example", "SUBJECT: hi")
        self.assertEqual(header_fields(block),
                         [("from", "a@b.example"), ("to", "c@d.example"), ("subject", "hi")])

    def test_folded_values_are_unfolded(self):
        block = headers("From: A <a@b.example>,", " B <b@b.example>,", "\tc@b.example")
        self.assertEqual(header_fields(block),
                         [("from", "A <a@b.example>, B <b@b.example>,\tc@b.example")])

    def test_bare_lf_is_made_crlf(self):
        raw = b"From: a@b.example\nTo: c@d.example\n folded\n\n"
        self.assertEqual(canonical_header_section(raw),
                         b"From: a@b.example\r\nTo: c@d.example\r\n folded\r\n\r\n")
        self.assertEqual(header_fields(raw),
                         [("from", "a@b.example"), ("to", "c@d.example folded")])

    def test_stops_at_the_first_empty_line(self):
        block = headers("From: a@b.example") + b"From: evil@x.example\r\n"
        self.assertEqual(header_fields(block), [("from", "a@b.example")])

    def test_block_without_empty_line(self):
        self.assertEqual(header_fields(b"From: a@b.example\r\nTo: c@d.example\r\n"),
                         [("from", "a@b.example"), ("to", "c@d.example")])

    def test_empty_block(self):
        self.assertEqual(header_fields(b""), [])
        self.assertEqual(header_fields(b"\r\nFrom: a@b.example\r\n"), [])

    def assertRefused(self, block: bytes, what: str):
        e = self.assertRaises(MalformedHeaderSection, header_fields, block)
        self.assertEqual(e.what, what, block)

    def test_lines_that_are_not_fields_are_refused(self):
        for line in ["From a@b.example Mon Jan  1 00:00:00 2024", "no colon here",
                     ": no name", "X Y: space in the name"]:
            self.assertRefused(headers("X-Ok: yes", line), MalformedHeaderSection.NOT_A_FIELD)
        self.assertRefused(headers(" continuation of nothing", "X-Ok: yes"),
                           MalformedHeaderSection.NOT_A_FIELD)
        self.assertRefused(headers("From: a@b.example", "garbage", " , evil@x.example"),
                           MalformedHeaderSection.NOT_A_FIELD)

    def test_white_space_only_continuation_is_refused(self):
        # Some parsers take it for the empty line that ends the section.
        for blank in (" ", "\t", " \t "):
            self.assertRefused(headers("Subject: x", blank, "From: evil@x.example"),
                               MalformedHeaderSection.BLANK_CONTINUATION)

    def test_from_or_sender_folded_inside_a_quote_or_comment_is_refused(self):
        # Python's email (compat32) reads the folded display name as a mailbox
        for field in ('From: "\r\n ceo@foreign.test, "<a@own.test>',
                      'From: "x\r\n y" <a@own.test>',
                      'Sender: (a\r\n comment) a@own.test',
                      'From: "a \\\"\r\n b" <a@own.test>',
                      'From: (outer (inner\r\n )) a@own.test'):
            self.assertRefused(f"{field}\r\n\r\n".encode(),
                               MalformedHeaderSection.FOLD_IN_QUOTE)

    def test_folds_outside_quotes_and_comments_stay(self):
        for field in ('From: "A" <a@own.test>,\r\n "B" <b@own.test>',
                      'From: (c) a@own.test,\r\n b@own.test',
                      'From: "a\\\\" \r\n <a@own.test>',
                      'Subject: "an open\r\n quote" elsewhere'):
            raw = f"{field}\r\n\r\n".encode()
            self.assertTrue(parse_fields(canonical_header_section(raw)), raw)

    def test_bare_cr_is_refused(self):
        self.assertRefused(b"X-A: b\rFrom: ceo@foreign.test\r\r\nFrom: a@own.test\r\n\r\n",
                           MalformedHeaderSection.BARE_CR)
        self.assertRefused(b"From: a@own.test\r\rX: y\r\n\r\n", MalformedHeaderSection.BARE_CR)

    def test_nul_is_refused(self):
        self.assertRefused(headers(b"Fr\x00om: a@b.example"), MalformedHeaderSection.NUL)
        self.assertRefused(headers(b"From: a@good.example\x00"), MalformedHeaderSection.NUL)

    def test_eight_bit_or_control_in_a_name_is_refused(self):
        for name in (b"Fr\xc3\xb6m", b"From\x01", b"\x7fFrom"):
            self.assertRefused(headers(name + b": a@b.example"), MalformedHeaderSection.NAME)

    def test_space_before_colon_is_refused(self):
        # Obsolete syntax that Python's email reads as the start of the body.
        self.assertRefused(headers("From : a@b.example"), MalformedHeaderSection.NAME)
        self.assertRefused(headers("From\t: a@b.example"), MalformedHeaderSection.NAME)

    def test_empty_value(self):
        self.assertEqual(header_fields(headers("X-Empty:")), [("x-empty", "")])

    def test_non_utf8_value_does_not_crash(self):
        [(name, value)] = header_fields(headers(b"From: J\xff <a@b.example>"))
        self.assertEqual(name, "from")
        self.assertIn("\udcff", value)

    def test_utf8_value(self):
        self.assertEqual(header_fields(headers("From: Jöhn <jö@exämple.com>")),
                         [("from", "Jöhn <jö@exämple.com>")])


class CheckSenderTests(unittest.TestCase):
    def check(self, *lines, allow_sender=False, authorised=GOOD):
        return check_sender(headers(*lines), allow_sender_header=allow_sender,
                            authorised=authorised)

    def test_authorised_from(self):
        self.assertEqual(self.check("From: Alice <alice@good.example>"), "good.example")

    def test_unauthorised_from(self):
        self.assertIsNone(self.check("From: eve@evil.example"))

    def test_no_from(self):
        self.assertIsNone(self.check("To: a@good.example"))
        self.assertIsNone(check_sender(b"", allow_sender_header=True, authorised=ANY))

    def test_case_and_idna_normalisation(self):
        self.assertEqual(self.check("From: x@EXÄMPLE.com"), "xn--exmple-cua.com")
        self.assertEqual(self.check("From: x@XN--EXMPLE-CUA.COM"), "xn--exmple-cua.com")
        self.assertEqual(self.check("From: x@Good.Example"), "good.example")

    def test_field_name_is_case_insensitive(self):
        self.assertEqual(self.check("FROM: a@good.example"), "good.example")
        self.assertEqual(self.check("fRoM: a@good.example"), "good.example")

    def test_no_subdomain_or_parent_matching(self):
        self.assertIsNone(self.check("From: a@mail.good.example"))
        parent = AuthorisedDomains(names=frozenset({"mail.good.example"}), any_domain=None)
        self.assertIsNone(self.check("From: a@good.example", authorised=parent))
        self.assertIsNone(self.check("From: a@notgood.example"))

    def test_unverified_domain_fails(self):
        # Only verified domains are put in names, so an unverified one is simply absent.
        self.assertIsNone(self.check("From: a@good.example", authorised=NONE))

    def test_every_mailbox_must_pass(self):
        self.assertIsNone(self.check("From: a@evil.example, <b@good.example>"))
        self.assertIsNone(self.check("From: <b@good.example>, a@evil.example"))
        self.assertEqual(self.check("From: a@xn--exmple-cua.com, b@good.example"),
                         "xn--exmple-cua.com")

    def test_display_name_and_comment_tricks(self):
        self.assertIsNone(self.check('From: "b@good.example" <a@evil.example>'))
        self.assertIsNone(self.check("From: <a@evil.example>(b@good.example)"))
        self.assertIsNone(self.check("From: a@evil.example <b@good.example>"))
        self.assertEqual(self.check('From: "a@evil.example" <b@good.example> (evil)'),
                         "good.example")

    def test_encoded_words(self):
        self.assertEqual(self.check("From: =?utf-8?q?a=40evil.example?= <b@good.example>"),
                         "good.example")
        self.assertIsNone(self.check("From: =?utf-8?q?b=40good.example?= <a@evil.example>"))

    def test_two_from_fields_all_must_pass(self):
        self.assertIsNone(self.check("From: a@good.example", "From: b@evil.example"))
        self.assertIsNone(self.check("From: a@evil.example", "From: b@good.example"))
        self.assertEqual(self.check("From: a@good.example", "Subject: x",
                                    "From: b@xn--exmple-cua.com"), "good.example")

    def test_one_bad_from_field_spoils_the_others(self):
        self.assertIsNone(self.check("From: a@good.example", "From: <broken"))

    def test_sender_only_when_allowed(self):
        lines = ("From: eve@evil.example", "Sender: bob@good.example")
        self.assertIsNone(self.check(*lines))
        self.assertEqual(self.check(*lines, allow_sender=True), "good.example")
        self.assertEqual(self.check("Sender: bob@good.example", allow_sender=True), "good.example")
        self.assertIsNone(self.check("Sender: bob@good.example", allow_sender=False))

    def test_from_wins_over_sender(self):
        self.assertEqual(self.check("Sender: s@good.example", "From: f@xn--exmple-cua.com",
                                    allow_sender=True), "xn--exmple-cua.com")

    def test_several_sender_fields_fail(self):
        self.assertIsNone(self.check("From: eve@evil.example", "Sender: a@good.example",
                                     "Sender: b@good.example", allow_sender=True))

    def test_unauthorised_sender(self):
        self.assertIsNone(self.check("From: eve@evil.example", "Sender: a@evil.example",
                                     allow_sender=True))

    def test_groups(self):
        self.assertEqual(self.check("From: Team: a@good.example, B <b@good.example>;"),
                         "good.example")
        self.assertIsNone(self.check("From: Team: a@good.example, b@evil.example;"))
        self.assertIsNone(self.check("From: Undisclosed:;"))
        self.assertEqual(self.check("From: Empty:;, a@good.example"), "good.example")

    def test_comments(self):
        self.assertEqual(self.check("From: (x) a (y) @ (z) good.example (evil.example)"),
                         "good.example")

    def test_obsolete_syntax(self):
        self.assertEqual(self.check("From: john . doe @ good . example"), "good.example")
        self.assertEqual(self.check("From: <@evil.example:a@good.example>"), "good.example")
        self.assertIsNone(self.check("From: <@good.example:a@evil.example>"))

    def test_quoted_local_part(self):
        self.assertEqual(self.check('From: "a\\"b@evil.example"@good.example'), "good.example")

    def test_folded_from(self):
        self.assertEqual(self.check("From: Alice", " <a@good.example>"), "good.example")
        self.assertIsNone(self.check("From: a@good.example,", " b@evil.example"))

    def test_empty_or_malformed_from(self):
        for line in ["From:", "From: ", "From: (nothing)", "From: postmaster",
                     "From: <a@good.example", "From: a@good.example>"]:
            self.assertIsNone(self.check(line), line)

    def test_non_utf8_byte_does_not_pass(self):
        self.assertIsNone(self.check(b"From: a\xff@good.example"))
        self.assertIsNone(self.check(b"From: a@good.example\xff", authorised=ANY))

    def test_utf8_address(self):
        self.assertEqual(self.check("From: Jöhn <jö@exämple.com>"), "xn--exmple-cua.com")

    def test_address_literal(self):
        self.assertIsNone(self.check("From: a@[192.0.2.1]"))
        self.assertEqual(self.check("From: a@[192.0.2.1]", authorised=ANY), "any.example")

    def test_any_domain_is_recorded_when_it_alone_authorises(self):
        # Postal records the use_for_any domain: its DKIM key signs the message.
        self.assertEqual(self.check("From: a@Anything.Example, b@good.example", authorised=ANY),
                         "any.example")
        self.assertEqual(self.check("From: a@any.example", authorised=ANY), "any.example")
        both = AuthorisedDomains(frozenset({"good.example", "any.example"}), "any.example")
        self.assertEqual(self.check("From: a@good.example", authorised=both), "good.example")
        self.assertIsNone(self.check("From: a@anything.example <broken>", authorised=ANY))
        self.assertIsNone(self.check("From: Undisclosed:;", authorised=ANY))
        # RFC 5322 atoms that are not DNS names cannot be authorised, even by use_for_any.
        self.assertIsNone(self.check("From: a@under_score.example", authorised=ANY))

    def test_body_is_not_read(self):
        block = headers("Subject: x") + b"From: a@good.example\r\n"
        self.assertIsNone(check_sender(block, allow_sender_header=True, authorised=GOOD))

    def test_large_header_is_fast(self):
        value = ", ".join(f"User {i} <user{i}@good.example>" for i in range(4000))
        self.assertGreater(len(value), 100_000)
        started = time.perf_counter()
        self.assertEqual(self.check("From: " + value), "good.example")
        self.assertIsNone(self.check("From: " + value + ", z@evil.example"))
        self.assertIsNone(self.check("From: " + "(" * 100_000 + "a@good.example"))
        self.assertIsNone(self.check("From: " + "a." * 50_000 + "@good.example"))
        self.assertLess(time.perf_counter() - started, 3.0)
