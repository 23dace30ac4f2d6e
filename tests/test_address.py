"""Tests for mailgw.address: envelope paths, ESMTP parameters, header mailbox lists, domains."""

import time

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from mailgw import address
from mailgw.address import (
    AddressError,
    Mailbox,
    normalise_domain,
    parse_mailbox_list,
    parse_path,
    split_mail_argument,
)


class NormaliseDomainTests(unittest.TestCase):
    def test_unicode_and_case_become_a_labels(self):
        self.assertEqual(normalise_domain("Exämple.COM"), "xn--exmple-cua.com")

    def test_a_labels_are_kept_and_lower_cased(self):
        self.assertEqual(normalise_domain("xn--exmple-cua.com"), "xn--exmple-cua.com")
        self.assertEqual(normalise_domain("XN--EXMPLE-CUA.COM"), "xn--exmple-cua.com")

    def test_trailing_dot_is_dropped(self):
        self.assertEqual(normalise_domain("example.com."), "example.com")

    def test_full_width_dot_is_mapped(self):
        self.assertEqual(normalise_domain("example\u3002com"), "example.com")

    def test_address_literals(self):
        self.assertEqual(normalise_domain("[1.2.3.4]"), "[1.2.3.4]")
        self.assertEqual(normalise_domain("[IPv6:::1]"), "[IPv6:::1]")
        self.assertEqual(normalise_domain("[ipv6:2001:DB8:0::1]"), "[IPv6:2001:db8::1]")

    def test_invalid_address_literals(self):
        for literal in ["[1.2.3]", "[1.2.3.4", "[IPv6:zz::1]", "[::1]", "[fe80::1%eth0]",
                        "[IPv6:fe80::1%eth0]", "[x-tag:stuff]", "[]", "[01.2.3.4]"]:
            self.assertIsNone(normalise_domain(literal), literal)

    def test_invalid_names(self):
        for name in ["", ".", "a..b", ".a", "exa mple.com", "a_b.com", "xn--zz.com",
                     "-a.com", "a-.com", "\udcff.com", "a\x00.com", "a@b.com",
                     "a" * 64 + ".com", "exämple..com"]:
            self.assertIsNone(normalise_domain(name), repr(name))

    def test_label_and_name_lengths(self):
        self.assertEqual(normalise_domain("a" * 63 + ".com"), "a" * 63 + ".com")
        name = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 octets
        self.assertEqual(normalise_domain(name), name)
        self.assertIsNone(normalise_domain(name + "b"))

    def test_huge_input_is_refused_quickly(self):
        started = time.perf_counter()
        self.assertIsNone(normalise_domain("a" * 100_000))
        self.assertLess(time.perf_counter() - started, 0.5)

    def test_not_a_string(self):
        self.assertIsNone(normalise_domain(b"example.com"))

    def test_stdlib_fallback(self):
        self.patch(address, "_idna", None)
        self.assertEqual(normalise_domain("Exämple.COM"), "xn--exmple-cua.com")
        self.assertEqual(normalise_domain("example.com."), "example.com")
        self.assertIsNone(normalise_domain("a..b"))
        self.assertIsNone(normalise_domain("exa mple.com"))


class MailboxTests(unittest.TestCase):
    def test_dot_atom_is_not_quoted(self):
        self.assertEqual(str(Mailbox("john.doe", "example.com")), "john.doe@example.com")

    def test_utf8_is_not_quoted(self):
        self.assertEqual(str(Mailbox("jö", "exämple.com")), "jö@exämple.com")

    def test_local_part_is_quoted_when_needed(self):
        self.assertEqual(str(Mailbox("john doe", "x")), '"john doe"@x')
        self.assertEqual(str(Mailbox('a"b\\c', "x")), '"a\\"b\\\\c"@x')
        self.assertEqual(str(Mailbox("a..b", "x")), '"a..b"@x')

    def test_no_domain(self):
        self.assertEqual(str(Mailbox("postmaster", "")), "postmaster")

    def test_frozen_and_comparable(self):
        self.assertEqual(Mailbox("a", "b"), Mailbox("a", "b"))
        with self.assertRaises(AttributeError):
            Mailbox("a", "b").local = "c"


class ParsePathTests(unittest.TestCase):
    def parse(self, text):
        return parse_path(text, allow_empty=False)

    def test_simple(self):
        self.assertEqual(self.parse("<a@b.example>"), Mailbox("a", "b.example"))

    def test_null_path(self):
        self.assertIsNone(parse_path("<>", allow_empty=True))
        self.assertRaises(AddressError, parse_path, "<>", allow_empty=False)

    def test_empty_argument_is_the_null_path(self):
        self.assertIsNone(parse_path("", allow_empty=True))
        self.assertIsNone(parse_path("  ", allow_empty=True))
        self.assertRaises(AddressError, parse_path, "", allow_empty=False)

    def test_surrounding_space_is_ignored(self):
        self.assertEqual(self.parse(" <a@b.example> "), Mailbox("a", "b.example"))

    def test_source_route_is_dropped(self):
        path = "<@a.example,@b.example:u@d.example>"
        self.assertEqual(self.parse(path), Mailbox("u", "d.example"))
        self.assertEqual(self.parse("<@a.example:u@d.example>"), Mailbox("u", "d.example"))

    def test_malformed_source_routes(self):
        for path in ["<@a.example u@d.example>", "<@:u@d.example>", "<@a.example,:u@d.example>",
                     "<@[1.2.3.4]:u@d.example>", "<a.example:u@d.example>", "<@a..b:u@d.example>"]:
            self.assertRaises(AddressError, self.parse, path)

    def test_quoted_local_part(self):
        mailbox = self.parse('<"john doe"@example.com>')
        self.assertEqual(mailbox, Mailbox("john doe", "example.com"))
        self.assertEqual(str(mailbox), '"john doe"@example.com')

    def test_quoted_local_part_with_escapes(self):
        self.assertEqual(self.parse('<"a\\"b\\\\c"@x.example>'), Mailbox('a"b\\c', "x.example"))

    def test_address_literals(self):
        self.assertEqual(self.parse("<u@[192.0.2.1]>"), Mailbox("u", "[192.0.2.1]"))
        self.assertEqual(self.parse("<u@[IPv6:::1]>"), Mailbox("u", "[IPv6:::1]"))
        self.assertRaises(AddressError, self.parse, "<u@[192.0.2.256]>")
        self.assertRaises(AddressError, self.parse, "<u@[192.0.2.1>")

    def test_utf8(self):
        self.assertEqual(self.parse("<jö@exämple.com>"), Mailbox("jö", "exämple.com"))
        self.assertEqual(self.parse('<"jö d"@exämple.com>'), Mailbox("jö d", "exämple.com"))

    def test_bare_address_is_tolerated(self):
        self.assertEqual(self.parse("a@b.example"), Mailbox("a", "b.example"))

    def test_missing_or_broken_brackets(self):
        for path in ["<a@b.example", "a@b.example>", "postmaster", "<<a@b.example>>",
                     "x<a@b.example>", "<a@b.example>x"]:
            self.assertRaises(AddressError, self.parse, path)

    def test_no_domain_is_left_to_the_caller(self):
        self.assertEqual(self.parse("<postmaster>"), Mailbox("postmaster", ""))

    def test_malformed(self):
        for path in ["<a b@c.example>", "<a..b@c.example>", "<.a@c.example>", "<a.@c.example>",
                     "<a@b..c>", "<a@>", "<@>", "<a@b.example.>", "<a@-b.example>",
                     '<"unterminated@x.example>', '<"a"b@x.example>', "< a@b.example >",
                     "<a@b@c.example>", "<a@b_c.example>", "<a\udcff@b.example>",
                     "<a\x00@b.example>", "<a@b\x00.example>", "<(c)a@b.example>"]:
            self.assertRaises(AddressError, self.parse, path)

    def test_local_part_length(self):
        self.assertEqual(self.parse(f"<{'a' * 64}@x.example>").local, "a" * 64)
        self.assertRaises(AddressError, self.parse, f"<{'a' * 65}@x.example>")
        # octets, not characters
        self.assertRaises(AddressError, self.parse, f"<{'ö' * 33}@x.example>")

    def test_path_length(self):
        domain = "b" * 63 + "." + "c" * 63 + "." + "d" * 61
        path = f"<{'a' * 64}@{domain}>"
        self.assertEqual(len(path), 256)
        self.assertEqual(self.parse(path).domain, domain)
        self.assertRaises(AddressError, self.parse, f"<{'a' * 64}@{domain}d>")
        self.assertRaises(AddressError, self.parse, f"{'a' * 64}@{domain}d")


class SplitMailArgumentTests(unittest.TestCase):
    def test_path_only(self):
        self.assertEqual(split_mail_argument("<a@b>"), ("<a@b>", {}))
        self.assertEqual(split_mail_argument(" <a@b>  "), ("<a@b>", {}))

    def test_parameters(self):
        path, params = split_mail_argument(" <a@b> SIZE=100 smtputf8 BODY=8bitmime")
        self.assertEqual(path, "<a@b>")
        self.assertEqual(params, {"SIZE": "100", "SMTPUTF8": None, "BODY": "8bitmime"})

    def test_keyword_is_upper_cased(self):
        self.assertEqual(split_mail_argument("<a@b> size=1")[1], {"SIZE": "1"})

    def test_null_and_empty_paths(self):
        self.assertEqual(split_mail_argument("<> SIZE=1"), ("<>", {"SIZE": "1"}))
        self.assertEqual(split_mail_argument(""), ("", {}))

    def test_quoted_path_with_spaces(self):
        self.assertEqual(split_mail_argument('<"a b"@c> SIZE=1'), ('<"a b"@c>', {"SIZE": "1"}))
        self.assertEqual(split_mail_argument('<"a>b\\" c"@d>'), ('<"a>b\\" c"@d>', {}))

    def test_bare_path(self):
        self.assertEqual(split_mail_argument("a@b SIZE=1"), ("a@b", {"SIZE": "1"}))
        self.assertEqual(split_mail_argument('"a b"@c AUTH=<>'), ('"a b"@c', {"AUTH": "<>"}))

    def test_utf8_value(self):
        self.assertEqual(split_mail_argument("<a@b> X-NOTE=héllo")[1], {"X-NOTE": "héllo"})

    def test_malformed(self):
        for arg in ["<a@b> =x", "<a@b> SIZE=1 size=2", "<a@b> SIZE=", "<a@b>SIZE=1",
                    "<a@b", '<"a@b>', "<a@b> -X", "<a@b> A=b=c", "<a@b> A=\x01",
                    "<a@b> S_Z=1", '"a b@c SIZE=1']:
            self.assertRaises(AddressError, split_mail_argument, arg)


class MailboxListTests(unittest.TestCase):
    def assertParses(self, value, *expected):
        self.assertEqual(parse_mailbox_list(value), [Mailbox(*pair) for pair in expected])

    def assertInvalid(self, *values):
        for value in values:
            self.assertRaises(AddressError, parse_mailbox_list, value)

    def test_addr_spec(self):
        self.assertParses("a@b.example", ("a", "b.example"))

    def test_display_names(self):
        self.assertParses("John Doe <jd@x.example>", ("jd", "x.example"))
        self.assertParses('"Doe, John" <jd@x.example>', ("jd", "x.example"))
        self.assertParses("<jd@x.example>", ("jd", "x.example"))
        self.assertParses("John Q. Public <jqp@x.example>", ("jqp", "x.example"))

    def test_list(self):
        self.assertParses("a@x.example, B <b@y.example>,c@z.example",
                          ("a", "x.example"), ("b", "y.example"), ("c", "z.example"))

    def test_bare_then_angle_yields_both(self):
        self.assertParses("a@evil.example, <b@good.example>",
                          ("a", "evil.example"), ("b", "good.example"))

    def test_address_in_display_name_is_not_a_mailbox(self):
        self.assertParses('"b@good.example" <a@evil.example>', ("a", "evil.example"))

    def test_address_in_comment_is_not_a_mailbox(self):
        self.assertParses("<a@evil.example>(b@good.example)", ("a", "evil.example"))

    def test_addr_spec_followed_by_angle_addr_is_malformed(self):
        self.assertInvalid("a@evil.example <b@good.example>")

    def test_comments_everywhere(self):
        self.assertParses("(c1) John (c2) <(c3) jd (c4) @ (c5) x.example (c6)> (c7)",
                          ("jd", "x.example"))
        self.assertParses("a@x.example (a (nested (deeply)) comment \\) with \\( pairs)",
                          ("a", "x.example"))

    def test_groups(self):
        self.assertParses("Undisclosed: a@x.example, B <b@y.example>;",
                          ("a", "x.example"), ("b", "y.example"))
        self.assertParses("Undisclosed recipients:;")
        self.assertParses("Empty:; , c@z.example, G: d@w.example;",
                          ("c", "z.example"), ("d", "w.example"))
        self.assertParses("G: , a@x.example, ,;", ("a", "x.example"))

    def test_encoded_words_do_not_confuse(self):
        self.assertParses("=?utf-8?q?a=40evil.example?= <b@good.example>", ("b", "good.example"))
        self.assertParses("=?utf-8?b?YUBldmlsLmV4YW1wbGU=?= <b@good.example>",
                          ("b", "good.example"))
        self.assertParses('"=?utf-8?q?a@evil.example?=" <b@good.example>', ("b", "good.example"))

    def test_quoted_local_parts(self):
        self.assertParses('"a\\"b"@x.example', ('a"b', "x.example"))
        self.assertParses('"john doe"@x.example', ("john doe", "x.example"))
        self.assertParses('"a@b"@x.example', ("a@b", "x.example"))

    def test_obsolete_syntax(self):
        self.assertParses("john . doe @ example . com", ("john.doe", "example.com"))
        self.assertParses('"john". doe@x.example', ("john.doe", "x.example"))
        self.assertParses("<@route.example:a@b.example>", ("a", "b.example"))
        self.assertParses("<@r1.example,,@r2.example:a@b.example>", ("a", "b.example"))
        self.assertParses("a@x.example,, ,b@y.example", ("a", "x.example"), ("b", "y.example"))
        self.assertParses(", a@x.example", ("a", "x.example"))

    def test_utf8(self):
        self.assertParses("Jöhn Dœ <jö@exämple.com>", ("jö", "exämple.com"))
        self.assertParses('"Jöhn" <ö@ä.example>', ("ö", "ä.example"))

    def test_domain_literal(self):
        self.assertParses("a@[192.0.2.1]", ("a", "[192.0.2.1]"))
        self.assertParses("a@[ IPv6:::1 ]", ("a", "[IPv6:::1]"))

    def test_folding(self):
        self.assertParses("John\r\n Doe <jd@x.example>,\r\n\tb@y.example",
                          ("jd", "x.example"), ("b", "y.example"))
        self.assertParses('"folded\r\n quoted" <q@x.example>', ("q", "x.example"))

    def test_unbalanced(self):
        self.assertInvalid('"a@b.example', "(a@b.example", "a@b.example)", "<a@b.example",
                           "a@b.example>", "a@[1.2.3.4", "a@[1.2[3].4]", "a@b.example ((c)",
                           "a@b.example (c))", "G: a@b.example")

    def test_mailbox_without_domain(self):
        self.assertInvalid("postmaster", "Name <postmaster>", "a@", "@b.example", "<>",
                           "G: postmaster;", "Name", '"Name"')

    def test_trailing_garbage(self):
        self.assertInvalid("a@b.example c", "a@b.example;", "a@b.example:", "a@b.example <c@d>",
                           "<a@b.example> <c@d.example>", "<a@b.example> x")

    def test_bad_dots(self):
        self.assertInvalid(".a@b.example", "a.@b.example", "a..b@c.example",
                           "a@b..example", "a@.b", ". <a@b.example>")

    def test_bad_characters(self):
        self.assertInvalid("a@b.example\x00", "a\x00b@c.example", '"a\x00"@b.example',
                           "(\x00) a@b.example", "a\udcff@b.example", "Jo\udcffe <a@b.example>",
                           "a@b.example\r\nc@d.example", "a@b.example\n", "a\\b@c.example",
                           "a@b]", "\x7f <a@b.example>", 'a@b.example "')

    def test_empty(self):
        self.assertInvalid("", "   ", "(only a comment)", ",", " , ,", "\r\n ")

    def test_groups_do_not_nest(self):
        self.assertInvalid("A: B: a@x.example;;", ": a@x.example;", "G: a@x.example; ;")

    def test_large_values_are_linear(self):
        many = ", ".join(f"User {i} <user{i}@example.com>" for i in range(4000))
        self.assertGreater(len(many), 100_000)
        hostile = [
            "(" * 50_000 + ")" * 50_000 + " a@b.example",
            "(" * 100_000,
            '"' + "a" * 100_000,
            "a." * 50_000 + "@b.example",
            "a" * 100_000 + " <b@c.example>",
            "<" * 100_000,
            "\\" * 100_000,
            "a@" + "b." * 50_000 + "c",
            "G:" + " a@b.example," * 8_000 + ";",
            "=?utf-8?q?" + "=40" * 30_000 + "?= <a@b.example>",
        ]
        started = time.perf_counter()
        self.assertEqual(len(parse_mailbox_list(many)), 4000)
        for value in hostile:
            try:
                parse_mailbox_list(value)
            except AddressError:
                pass
        self.assertLess(time.perf_counter() - started, 3.0)


_ATEXT = "abcXYZ019!#$%&'*+-/=?^_`{|}~éß中"
_LABEL = st.from_regex(r"[a-z0-9]{1,10}(?:-[a-z0-9]{1,5})?", fullmatch=True)
_DOMAINS = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_ATOMS = st.text(_ATEXT, min_size=1, max_size=5)  # 3 atoms of 3-octet chars stay under 64
_DOT_ATOMS = st.lists(_ATOMS, min_size=1, max_size=3).map(".".join)
_QUOTED_LOCALS = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF,
                                       exclude_categories=("Cc",)), min_size=1, max_size=12)
_MAILBOXES = st.builds(Mailbox, st.one_of(_DOT_ATOMS, _QUOTED_LOCALS), _DOMAINS)
_DISPLAY = st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF,
                                                      exclude_categories=("Cc",)), max_size=10))


def _render(mailbox, display):
    """Write a mailbox as an addr-spec, or as a name-addr with a quoted display name."""
    if display is None:
        return str(mailbox)
    quoted = display.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{mailbox}>'


class MailboxListPropertyTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=200))
    def test_arbitrary_text_only_raises_address_error(self, value):
        try:
            result = parse_mailbox_list(value)
        except AddressError:
            return
        self.assertIsInstance(result, list)

    @settings(max_examples=300, deadline=None)
    @given(st.text('ab@.,;:<>()"\\[] \t\r\n=?é\x00', max_size=60))
    def test_syntax_soup_only_raises_address_error(self, value):
        try:
            parse_mailbox_list(value)
        except AddressError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(_MAILBOXES, _DISPLAY), min_size=1, max_size=6))
    def test_valid_lists_give_exactly_their_mailboxes(self, entries):
        value = ", ".join(_render(mailbox, display) for mailbox, display in entries)
        self.assertEqual(parse_mailbox_list(value), [mailbox for mailbox, _ in entries])

    @settings(max_examples=200, deadline=None)
    @given(_MAILBOXES)
    def test_paths_round_trip(self, mailbox):
        self.assertEqual(parse_path(f"<{mailbox}>", allow_empty=False), mailbox)


class ASCIIFastPathTests(unittest.TestCase):
    """Plain ASCII names skip IDNA; the answer must be the one IDNA gives."""

    @settings(max_examples=500, deadline=None)
    @given(st.text(alphabet="abcXYZ019-.", min_size=1, max_size=70))
    def test_fast_path_agrees_with_idna(self, name):
        from mailgw import address
        slow = address._to_ascii(name)
        if slow is not None:
            slow = slow.lower().removesuffix(".")
            labels = slow.split(".")
            if len(slow) > address._MAX_DOMAIN or not all(
                    map(address._LDH_LABEL.fullmatch, labels)):
                slow = None
        self.assertEqual(normalise_domain(name), slow)


class RememberedResultsTests(unittest.TestCase):
    """The parsers keep their results for short texts: what they return must
    not change because an earlier caller got (and changed) the same result."""

    def test_mailbox_list_is_a_new_list_each_time(self):
        first = parse_mailbox_list("A <a@example.com>, b@example.org")
        first.append("changed by a caller")
        self.assertEqual(parse_mailbox_list("A <a@example.com>, b@example.org"),
                         [Mailbox("a", "example.com"), Mailbox("b", "example.org")])

    def test_errors_are_raised_every_time(self):
        for _ in range(2):
            self.assertRaises(AddressError, parse_path, "<a@@example.com>", allow_empty=False)
            self.assertRaises(AddressError, parse_mailbox_list, "a@example.com,,<")
        self.assertIsNone(parse_path("<>", allow_empty=True))
        self.assertRaises(AddressError, parse_path, "<>", allow_empty=False)

    def test_long_texts_parse_as_short_ones(self):
        local = "x" * 60
        names = ", ".join(f"{local}{i}@example.com" for i in range(20))
        self.assertGreater(len(names), address._REMEMBERED_TEXT)
        self.assertEqual(len(parse_mailbox_list(names)), 20)
        long_domain = ".".join(["a" * 60] * 9) + ".example"
        self.assertGreater(len(long_domain), address._MAX_DOMAIN)
        self.assertIsNone(normalise_domain(long_domain))
        self.assertEqual(normalise_domain("Example.COM."), "example.com")
