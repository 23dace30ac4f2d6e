"""The HTTP send API over twisted.web's real server on loopback, with a real
HTTP client (urllib on a thread, or a raw socket where the test needs the
bytes) and a real SQLite store: authentication and throttling, both routes,
every error code, the size limit, the queue rows, and HTTP mail against SMTP
mail."""
from __future__ import annotations

import base64
import configparser
import dataclasses
import email
import email.policy
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.trial import unittest

from mailgw.admin.devsetup import make_certificate
from mailgw.auth.guard import AuthenticationGuard
from mailgw.auth.realm import build_portal
from mailgw.auth.throttle import FailureThrottle
from mailgw.config import Config, HTTPAPIConfig, LimitsConfig, TLSConfig
from mailgw.interfaces import StoreUnavailable
from mailgw.submission import CoreSettings, SubmissionCore, received_header
from mailgw.tls import TLSOptions
from mailgw.web.api import api_listener_service, build_api_site
from mailgw.web.compose import APIError, ParameterError, compose_message, raw_submission
from mailgw.web.limits import request_body_limit
from tests.helpers import HOSTNAME, Harness, TrackingStore, b64, make_store, seed_tenancy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API_KEY = "A" * 24
HELD_KEY = "H" * 24
OTHER_KEY = "B" * 24
MAX_SIZE = 1024 * 1024
MESSAGE = "/api/v1/send/message"
RAW = "/api/v1/send/raw"
RECEIVED = re.compile(
    r"^Received: from 127\.0\.0\.1 \(127\.0\.0\.1 \[127\.0\.0\.1\]\) by "
    + re.escape(HOSTNAME) + r" with HTTP id ([A-Z0-9]{12}); "
    r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000$")
RAW_MESSAGE = (b"From: Me <me@good.example>\r\nTo: you@dest.example\r\n"
               b"Message-ID: <raw-1@good.example>\r\nSubject: raw\r\n"
               b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n")


def http(url, body=None, headers=None, method="POST"):
    """One request with urllib; C{(status, headers, body bytes)}."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30,
                                    context=http.context) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read()


http.context = None


def exchange(port, data: bytes) -> bytes:
    """Send C{data} on a raw connection and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def fail2ban_pattern():
    """The shipped fail2ban filter's failregex, with <HOST> as a named group."""
    parser = configparser.RawConfigParser()
    parser.read(os.path.join(ROOT, "etc", "fail2ban", "filter.d", "mailgw.conf"))
    failregex = parser.get("Definition", "failregex").strip()
    return re.compile(failregex.replace("<HOST>", r"(?P<host>[0-9a-fA-F.:]+)"))


def core_of(store, config):
    """The submission core the gateway would build for C{config}."""
    return SubmissionCore(store, reactor, CoreSettings(
        config.hostname, config.limits.max_message_size, config.limits.max_header_size,
        config.spool_directory))


class ConnectionTracker(WrappingFactory):
    """Knows the server's open connections, so a test can end with none."""

    def __init__(self, wrapped):
        super().__init__(wrapped)
        self._waiting = []

    def unregisterProtocol(self, p):
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def all_closed(self):
        for p in list(self.protocols):
            p.transport.loseConnection()
        if not self.protocols:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        return d


class APITestBase(unittest.TestCase):
    max_size_mb = 1

    @defer.inlineCallbacks
    def setUp(self):
        self.raw_store = yield make_store(self)
        self.store = TrackingStore(self.raw_store)
        self.tenancy = yield seed_tenancy(self.raw_store)
        self.api_credential = yield self.raw_store.add_credential(
            ("acme", "web"), "api", API_KEY, name="api")
        yield self.raw_store.add_credential(("acme", "web"), "api", HELD_KEY, hold=True)
        yield self.raw_store.add_credential(("acme", "other"), "api", OTHER_KEY)
        self.spool = os.path.abspath(self.mktemp())
        os.makedirs(self.spool)
        self.config = Config(hostname=HOSTNAME, spool_directory=self.spool,
                             limits=LimitsConfig(max_message_size_mb=self.max_size_mb))
        self.throttle = FailureThrottle(Clock(), max_failures=3)
        self.log = []
        globalLogPublisher.addObserver(self.log.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log.append)
        self.serve(self.store)

    #: give the site the store, so the message routes answer
    message_routes = False

    def serve(self, store):
        self.guard = guard = AuthenticationGuard(self.throttle)
        portal = build_portal(store, reactor, None, guard)
        site = build_api_site(portal, core_of(store, self.config), self.config, reactor,
                              store=store if self.message_routes else None)
        tracker = ConnectionTracker(site)
        port = reactor.listenTCP(0, tracker, interface="127.0.0.1")
        self.port = port.getHost().port

        @defer.inlineCallbacks
        def stop():
            yield port.stopListening()
            yield tracker.all_closed()
            yield self.store.settle()
        self.addCleanup(stop)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    @defer.inlineCallbacks
    def call(self, path, params=None, *, key=API_KEY, form=False, method="POST",
             body=None, content_type=None):
        """POST the parameters (JSON by default); the decoded JSON answer."""
        headers = {}
        if key is not None:
            headers["X-Server-API-Key"] = key
        if body is None and params is not None:
            if form:
                body = urllib.parse.urlencode({"params": json.dumps(params)}).encode()
                content_type = content_type or "application/x-www-form-urlencoded"
            else:
                body = json.dumps(params).encode()
                content_type = content_type or "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        status, response_headers, data = yield deferToThread(
            http, self.url(path), body, headers, method)
        self.assertEqual(status, 200, data)
        self.assertTrue(response_headers["Content-Type"].startswith("application/json"))
        answer = json.loads(data)
        self.assertEqual(set(answer), {"status", "time", "flags", "data"})
        self.assertEqual(answer["flags"], {})
        self.assertIsInstance(answer["time"], float)
        return answer

    @defer.inlineCallbacks
    def assert_error(self, code, path, params=None, **kw):
        answer = yield self.call(path, params, **kw)
        self.assertEqual(answer["status"], "error", answer)
        self.assertEqual(answer["data"]["code"], code)
        self.assertTrue(answer["data"]["message"])
        entries = yield self.raw_store.list_entries()
        self.assertEqual(entries, [], "nothing may be queued after an error")
        return answer

    @defer.inlineCallbacks
    def assert_parameter_error(self, path, params=None, **kw):
        answer = yield self.call(path, params, **kw)
        self.assertEqual(answer["status"], "parameter-error", answer)
        self.assertTrue(answer["data"]["message"])
        self.assertEqual(answer["data"]["code"], "ParameterError")
        return answer["data"]["message"]

    @defer.inlineCallbacks
    def stored(self):
        entries = yield self.raw_store.list_entries()
        bodies = {}
        for entry in entries:
            if entry.message_id not in bodies:
                bodies[entry.message_id] = yield self.raw_store.read_body(entry.message_id)
        return entries, bodies

    def auth_failures(self):
        return [formatEvent(e) for e in self.log
                if "Authentication failure for" in formatEvent(e)]


def simple(**extra):
    params = {"to": ["you@dest.example"], "from": "Me <me@good.example>",
              "subject": "Hello", "plain_body": "Hi there\n"}
    params.update(extra)
    return params


class AuthenticationTests(APITestBase):
    @defer.inlineCallbacks
    def test_missing_header_is_access_denied_and_a_keyless_attempt(self):
        answer = yield self.assert_error("AccessDenied", MESSAGE, simple(), key=None)
        self.assertEqual(answer["data"]["message"], "Must be authenticated as a server.")
        self.assertEqual(self.auth_failures(), [])
        lines = [formatEvent(e) for e in self.log]
        [line] = [t for t in lines if "Unauthenticated attempt from" in t]
        self.assertRegex(line, r"^\[[A-Z0-9]{8}\] Unauthenticated attempt from 127\.0\.0\.1: ")
        self.assertIsNone(fail2ban_pattern().search(line), "fail2ban does not ban for it")

    @defer.inlineCallbacks
    def test_wrong_key_is_a_failure_fail2ban_sees(self):
        yield self.assert_error("InvalidServerAPIKey", MESSAGE, simple(), key="Z" * 24)
        [line] = self.auth_failures()
        self.assertRegex(line, r"^\[[A-Z0-9]{8}\] Authentication failure for 127\.0\.0\.1 "
                               r"\(API, user -\)$")
        self.assertEqual(fail2ban_pattern().search(line).group("host"), "127.0.0.1")

    @defer.inlineCallbacks
    def test_unknown_key(self):
        answer = yield self.assert_error("InvalidServerAPIKey", MESSAGE, simple(),
                                         key="Z" * 24)
        self.assertNotIn("Z" * 24, json.dumps(answer), "the key is never echoed")
        self.assertEqual(len(self.auth_failures()), 1)
        self.assertNotIn("Z" * 24, "".join(formatEvent(e) for e in self.log))

    @defer.inlineCallbacks
    def test_smtp_credential_is_not_an_api_key(self):
        yield self.assert_error("InvalidServerAPIKey", MESSAGE, simple(),
                                key=self.tenancy["key"])

    @defer.inlineCallbacks
    def test_non_ascii_key_is_invalid(self):
        yield self.assert_error("InvalidServerAPIKey", RAW, {},
                                key="\u00e9" * 24)

    @defer.inlineCallbacks
    def test_suspended_server_and_organization(self):
        yield self.raw_store.update_server("acme", "web", suspended=True)
        yield self.assert_error("ServerSuspended", MESSAGE, simple())
        yield self.raw_store.update_server("acme", "web", suspended=False)
        yield self.raw_store.set_organization_suspended("acme", True)
        yield self.assert_error("ServerSuspended", RAW, {})
        self.assertEqual(self.auth_failures(), [], "a suspension is not a failed guess")

    @defer.inlineCallbacks
    def test_last_used_at_updated(self):
        answer = yield self.call(MESSAGE, simple())
        self.assertEqual(answer["status"], "success")
        yield self.store.settle()
        credentials = yield self.raw_store.list_credentials(("acme", "web"))
        used = {c.key: c.last_used_at for c in credentials}
        self.assertIsNotNone(used[API_KEY])
        self.assertIsNone(used[HELD_KEY])

    @defer.inlineCallbacks
    def test_throttled_after_three_failures_even_with_the_right_key(self):
        yield self.assert_error("InvalidServerAPIKey", MESSAGE, simple(), key="x")
        yield self.assert_error("AccessDenied", MESSAGE, simple(), key=None)  # keyless
        yield self.assert_error("InvalidServerAPIKey", MESSAGE, simple(), key="y")
        yield self.assert_error("TooManyAuthenticationFailures", MESSAGE, simple(), key="z")
        yield self.assert_error("TooManyAuthenticationFailures", MESSAGE, simple())
        self.assertEqual(len(self.auth_failures()), 3)
        self.throttle._clock.advance(self.throttle.lockout)
        answer = yield self.call(MESSAGE, simple())
        self.assertEqual(answer["status"], "success")

    @defer.inlineCallbacks
    def test_keyless_calls_never_lock_out_working_keys(self):
        self.guard.anonymous = FailureThrottle(self.throttle._clock, max_failures=3)
        for code in ("AccessDenied", "AccessDenied", "TooManyAuthenticationFailures",
                     "TooManyAuthenticationFailures"):
            yield self.assert_error(code, MESSAGE, simple(), key=None)
        answer = yield self.call(MESSAGE, simple())
        self.assertEqual(answer["status"], "success")
        self.assertEqual(self.auth_failures(), [])

    @defer.inlineCallbacks
    def test_failures_from_smtp_count_too(self):
        for _ in range(3):
            self.throttle.record_failure("127.0.0.1")
        yield self.assert_error("TooManyAuthenticationFailures", RAW, {})

    @defer.inlineCallbacks
    def test_unknown_route_is_a_json_404(self):
        status, headers, data = yield deferToThread(
            http, self.url("/api/v1/send/nothing"), b"{}", {"X-Server-API-Key": API_KEY})
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(data)["data"]["code"], "RouteNotFound")


class SendMessageTests(APITestBase):
    @defer.inlineCallbacks
    def test_success_queues_one_entry_per_recipient(self):
        answer = yield self.call(MESSAGE, simple(
            to=["You <you@dest.example>", "two@dest.example"], cc=["Cc <cc@dest.example>"],
            bcc=["hidden@dest.example"], reply_to="replies@good.example", tag="welcome",
            headers={"X-Campaign": "spring", "In-Reply-To": "<x@y>"}))
        self.assertEqual(answer["status"], "success", answer)
        entries, bodies = yield self.stored()
        rcpts = ["you@dest.example", "two@dest.example", "cc@dest.example",
                 "hidden@dest.example"]
        self.assertEqual([e.rcpt_to for e in entries], rcpts)
        self.assertEqual({e.status for e in entries}, {"queued"})
        self.assertEqual({e.server for e in entries}, {"acme/web"})
        self.assertEqual({e.domain for e in entries}, {"good.example"})
        self.assertEqual({e.mail_from for e in entries}, {"me@good.example"})
        self.assertEqual({e.credential_id for e in entries}, {self.api_credential.id})
        [body] = bodies.values()
        received, _ = body.split(b"\r\n", 1)
        token = RECEIVED.match(received.decode()).group(1)
        self.assertEqual(answer["data"]["messages"],
                         {e.rcpt_to: {"id": e.id, "token": token} for e in entries})
        self.assertEqual({e.token for e in entries}, {token})
        message = email.message_from_bytes(body, policy=email.policy.SMTP)
        self.assertEqual(message["Message-ID"], f"<{answer['data']['message_id']}>")
        self.assertTrue(answer["data"]["message_id"].endswith("@" + HOSTNAME))
        self.assertEqual(message["To"], "You <you@dest.example>, two@dest.example")
        self.assertEqual(message["Cc"], "Cc <cc@dest.example>")
        self.assertIsNone(message["Bcc"])
        self.assertNotIn(b"hidden@dest.example", body)
        self.assertEqual(message["Reply-To"], "replies@good.example")
        self.assertEqual(message["X-Campaign"], "spring")
        self.assertEqual(message["In-Reply-To"], "<x@y>")
        self.assertIsNotNone(message["Date"])
        self.assertEqual(message.get_content(), "Hi there\r\n")
        self.assertNotRegex(body, rb"(?<!\r)\n", "CRLF line ends only")
        self.assertEqual(entries[0].size, len(body))

    @defer.inlineCallbacks
    def test_form_encoded_params(self):
        answer = yield self.call(MESSAGE, simple(), form=True)
        self.assertEqual(answer["status"], "success", answer)
        entries = yield self.raw_store.list_entries()
        self.assertEqual([e.rcpt_to for e in entries], ["you@dest.example"])

    @defer.inlineCallbacks
    def test_any_method(self):
        answer = yield self.call(MESSAGE, simple(), method="PUT")
        self.assertEqual(answer["status"], "success", answer)
        answer = yield self.call(MESSAGE, simple(), form=True, method="PATCH")
        self.assertEqual(answer["status"], "success", answer)
        query = urllib.parse.urlencode({"params": json.dumps(simple())})
        answer = yield self.call(MESSAGE + "?" + query, method="GET")
        self.assertEqual(answer["status"], "success", answer)
        entries = yield self.raw_store.list_entries()
        self.assertEqual(len(entries), 3)

    @defer.inlineCallbacks
    def test_two_attachments_come_back_byte_for_byte(self):
        binary = bytes(range(256)) * 40
        text = "naïve,data\r\n1,2\n".encode()
        answer = yield self.call(MESSAGE, simple(
            html_body="<p>Hi <b>there</b></p>", subject="Grüße",
            attachments=[
                {"name": "blob.bin", "data": base64.b64encode(binary).decode()},
                {"name": "tablé.csv", "content_type": "text/csv",
                 "data": base64.encodebytes(text).decode()},
            ]))
        self.assertEqual(answer["status"], "success", answer)
        _, bodies = yield self.stored()
        [body] = bodies.values()
        self.assertTrue(body.isascii(), "7-bit transfer encodings throughout")
        message = email.message_from_bytes(body, policy=email.policy.default)
        self.assertEqual(message.get_content_type(), "multipart/mixed")
        self.assertEqual(message["Subject"], "Grüße")
        self.assertEqual(message.get_body(("plain",)).get_content(), "Hi there\r\n")
        self.assertEqual(message.get_body(("html",)).get_content(),
                         "<p>Hi <b>there</b></p>\r\n")
        attachments = list(message.iter_attachments())
        self.assertEqual([a.get_filename() for a in attachments],
                         ["blob.bin", "tablé.csv"])
        self.assertEqual([a.get_content_type() for a in attachments],
                         ["application/octet-stream", "text/csv"])
        self.assertEqual([a.get_payload(decode=True) for a in attachments], [binary, text])

    @defer.inlineCallbacks
    def test_html_only(self):
        answer = yield self.call(MESSAGE, simple(plain_body=None, html_body="<p>x</p>"))
        self.assertEqual(answer["status"], "success", answer)
        _, bodies = yield self.stored()
        message = email.message_from_bytes(list(bodies.values())[0],
                                           policy=email.policy.default)
        self.assertEqual(message.get_content_type(), "text/html")

    @defer.inlineCallbacks
    def test_held_when_the_credential_is_on_hold(self):
        answer = yield self.call(MESSAGE, simple(cc=["cc@dest.example"]), key=HELD_KEY)
        self.assertEqual(answer["status"], "success", answer)
        entries = yield self.raw_store.list_entries()
        self.assertEqual([(e.rcpt_to, e.status, e.hold_reason) for e in entries],
                         [("you@dest.example", "held", "credential on hold"),
                          ("cc@dest.example", "held", "credential on hold")])

    @defer.inlineCallbacks
    def test_sender_header_when_the_server_allows_it(self):
        params = simple(**{"from": "someone@elsewhere.example",
                           "sender": "Me <me@good.example>"})
        yield self.assert_error("UnauthenticatedFromAddress", MESSAGE, params)
        yield self.raw_store.update_server("acme", "web", allow_sender_header=True)
        answer = yield self.call(MESSAGE, params)
        self.assertEqual(answer["status"], "success", answer)
        entries, bodies = yield self.stored()
        self.assertEqual(entries[0].mail_from, "me@good.example")
        self.assertIn(b"\r\nSender: Me <me@good.example>\r\n", list(bodies.values())[0])

    @defer.inlineCallbacks
    def test_organization_domain_and_other_server(self):
        answer = yield self.call(MESSAGE, simple(**{"from": "a@org.example"}),
                                 key=OTHER_KEY)
        self.assertEqual(answer["status"], "success", answer)
        entries = yield self.raw_store.list_entries()
        self.assertEqual([(e.server, e.domain) for e in entries],
                         [("acme/other", "org.example")])

    @defer.inlineCallbacks
    def test_bounce_sends_with_the_null_sender(self):
        answer = yield self.call(MESSAGE, simple(bounce=True))
        self.assertEqual(answer["status"], "success", answer)
        entries = yield self.raw_store.list_entries()
        self.assertEqual(entries[0].mail_from, "")

    @defer.inlineCallbacks
    def test_duplicate_recipients_once(self):
        answer = yield self.call(MESSAGE, simple(cc=["you@dest.example"],
                                                 bcc=["You <you@dest.example>"]))
        self.assertEqual(list(answer["data"]["messages"]), ["you@dest.example"])
        entries = yield self.raw_store.list_entries()
        self.assertEqual(len(entries), 1)

    @defer.inlineCallbacks
    def test_international_addresses_use_utf8_headers(self):
        answer = yield self.call(MESSAGE, simple(to=["Jörg <jörg@bücher.example>"]))
        self.assertEqual(answer["status"], "success", answer)
        entries, bodies = yield self.stored()
        self.assertEqual(entries[0].rcpt_to, "jörg@bücher.example")
        self.assertIn("To: Jörg <jörg@bücher.example>\r\n".encode(),
                      list(bodies.values())[0])


class SendMessageErrorTests(APITestBase):
    def test_no_recipients(self):
        return self.assert_error("NoRecipients", MESSAGE, simple(to=[]))

    def test_no_content(self):
        return self.assert_error("NoContent", MESSAGE, simple(plain_body=" ", html_body=""))

    @defer.inlineCallbacks
    def test_too_many_addresses(self):
        many = [f"r{i}@dest.example" for i in range(51)]
        yield self.assert_error("TooManyToAddresses", MESSAGE, simple(to=many))
        yield self.assert_error("TooManyCCAddresses", MESSAGE, simple(cc=many))
        yield self.assert_error("TooManyBCCAddresses", MESSAGE, simple(bcc=many))
        answer = yield self.assert_error("TooManyRecipients", MESSAGE, simple(
            to=many[:50], cc=[f"c{i}@dest.example" for i in range(50)], bcc=many[50:]))
        self.assertEqual(answer["data"]["message"], "There are more than 100 recipients.")
        yield self.assert_error("TooManyRecipients", RAW, {
            "mail_from": "me@good.example",
            "rcpt_to": [f"z{i}@x.example" for i in range(101)],
            "data": b64(RAW_MESSAGE)})
        answer = yield self.call(MESSAGE, simple(to=many[:50]))
        self.assertEqual(answer["status"], "success")

    def test_from_missing(self):
        return self.assert_error("FromAddressMissing", MESSAGE, simple(**{"from": ""}))

    @defer.inlineCallbacks
    def test_unauthenticated_from(self):
        for author in ("me@evil.example", "me@unverified.example",
                       "a@evil.example, <b@good.example>"):
            answer = yield self.assert_error("UnauthenticatedFromAddress", MESSAGE,
                                             simple(**{"from": author}))
            self.assertEqual(answer["data"]["message"],
                             "The From address is not authorised to send mail from "
                             "this server.")

    @defer.inlineCallbacks
    def test_attachment_missing_name_or_data(self):
        yield self.assert_error("AttachmentMissingName", MESSAGE,
                                simple(attachments=[{"data": "eA=="}]))
        yield self.assert_error("AttachmentMissingData", MESSAGE,
                                simple(attachments=[{"name": "a.txt", "data": ""}]))

    @defer.inlineCallbacks
    def test_parameter_errors(self):
        for params in (simple(to="not an address"), simple(to=[1]),
                       simple(attachments=[{"name": "a", "data": "***"}]),
                       simple(attachments="x"), simple(headers={"Bcc": "x@y.example"}),
                       simple(headers={"Bad Name": "x"}), simple(subject="a\r\nBcc: x@y"),
                       simple(headers={"X-A": "a\r\nBcc: x@y"}), simple(bounce="yes"),
                       simple(sender="a@good.example, b@good.example")):
            yield self.assert_parameter_error(MESSAGE, params)
        self.assertEqual((yield self.raw_store.list_entries()), [])

    @defer.inlineCallbacks
    def test_malformed_json(self):
        message = yield self.assert_parameter_error(
            MESSAGE, body=b'{"to": [', content_type="application/json")
        self.assertIn("not valid JSON", message)
        yield self.assert_parameter_error(MESSAGE, body=b"[1, 2]",
                                          content_type="application/json")
        yield self.assert_parameter_error(
            MESSAGE, body=b"params=%7Bnope",
            content_type="application/x-www-form-urlencoded")

    def test_no_parameters_at_all(self):
        return self.assert_error("NoRecipients", MESSAGE, body=b"")

    @defer.inlineCallbacks
    def test_store_outage_is_a_temporary_failure(self):
        broken = BrokenStore(self.raw_store, "credential_by_key")
        self.serve(broken)
        yield self.assert_error("TemporaryFailure", MESSAGE, simple())
        broken = BrokenStore(self.raw_store, "enqueue")
        self.serve(broken)
        yield self.assert_error("TemporaryFailure", MESSAGE, simple())
        self.assertTrue(broken.failed)


class BrokenStore:
    """The real store, but one method fails as a database outage does."""

    def __init__(self, store, broken):
        self._store = store
        self._broken = broken
        self.failed = False

    def __getattr__(self, name):
        if name == self._broken:
            def fail(*args, **kwargs):
                self.failed = True
                return defer.fail(StoreUnavailable("database is down"))
            return fail
        return getattr(self._store, name)


class SendRawTests(APITestBase):
    @defer.inlineCallbacks
    def test_raw_is_stored_with_our_received_header(self):
        answer = yield self.call(RAW, {"mail_from": "me@good.example",
                                       "rcpt_to": ["a@dest.example", "<b@dest.example>"],
                                       "data": b64(RAW_MESSAGE)})
        self.assertEqual(answer["status"], "success", answer)
        self.assertEqual(answer["data"]["message_id"], "raw-1@good.example")
        entries, bodies = yield self.stored()
        self.assertEqual([e.rcpt_to for e in entries], ["a@dest.example", "b@dest.example"])
        self.assertEqual({(e.status, e.domain, e.mail_from, e.server) for e in entries},
                         {("queued", "good.example", "me@good.example", "acme/web")})
        [body] = bodies.values()
        received, rest = body.split(b"\r\n", 1)
        token = RECEIVED.match(received.decode()).group(1)
        self.assertEqual(rest, RAW_MESSAGE)
        self.assertEqual(answer["data"]["messages"],
                         {e.rcpt_to: {"id": e.id, "token": token} for e in entries})

    @defer.inlineCallbacks
    def test_raw_without_message_id_or_date_gets_ours(self):
        raw = b"From: me@good.example\r\nSubject: bare\r\n\r\nhello\r\n"
        answer = yield self.call(RAW, {"mail_from": "me@good.example",
                                       "rcpt_to": ["a@dest.example"], "data": b64(raw)})
        self.assertEqual(answer["status"], "success", answer)
        token = answer["data"]["messages"]["a@dest.example"]["token"]
        self.assertEqual(answer["data"]["message_id"], f"{token}@{HOSTNAME}")
        _, bodies = yield self.stored()
        parsed = email.message_from_bytes(list(bodies.values())[0],
                                          policy=email.policy.default)
        self.assertEqual(parsed["Message-ID"], f"<{token}@{HOSTNAME}>")
        self.assertIsNotNone(parsed["Date"].datetime)

    @defer.inlineCallbacks
    def test_raw_form_encoded_bare_lf_becomes_crlf(self):
        data = RAW_MESSAGE.replace(b"\r\n", b"\n").replace(b"hello\n", b"hello")
        answer = yield self.call(RAW, {"mail_from": "<>", "rcpt_to": ["a@dest.example"],
                                       "data": base64.encodebytes(data).decode()},
                                 form=True)
        self.assertEqual(answer["status"], "success", answer)
        entries, bodies = yield self.stored()
        self.assertEqual(entries[0].mail_from, "")
        self.assertTrue(list(bodies.values())[0].endswith(RAW_MESSAGE))

    @defer.inlineCallbacks
    def test_raw_from_validated_as_for_smtp(self):
        for headers in (b"From: me@evil.example\r\n", b"",
                        b"From: a@evil.example, <b@good.example>\r\n"):
            yield self.assert_error("UnauthenticatedFromAddress", RAW, {
                "mail_from": "me@good.example", "rcpt_to": ["a@dest.example"],
                "data": b64(headers + b"Subject: x\r\n\r\nbody\r\n")})

    @defer.inlineCallbacks
    def test_raw_missing_parameters(self):
        full = {"mail_from": "me@good.example", "rcpt_to": ["a@dest.example"],
                "data": b64(RAW_MESSAGE)}
        for name in full:
            params = dict(full)
            del params[name]
            message = yield self.assert_parameter_error(RAW, params)
            self.assertIn(f"`{name}`", message)
        yield self.assert_parameter_error(RAW, dict(full, rcpt_to="a@dest.example"))
        yield self.assert_parameter_error(RAW, dict(full, data="not base64!"))
        yield self.assert_parameter_error(RAW, dict(full, rcpt_to=["nodomain"]))
        yield self.assert_error("NoRecipients", RAW, dict(full, rcpt_to=[]))

    @defer.inlineCallbacks
    def test_loop_detected(self):
        hop = received_header(HOSTNAME, "ESMTPA", "X" * 12, 0, client_ip="192.0.2.1")
        loop = hop * 4
        yield self.assert_error("LoopDetected", RAW, {
            "mail_from": "me@good.example", "rcpt_to": ["a@dest.example"],
            "data": b64(loop + RAW_MESSAGE)})


class RawDefenceTests(APITestBase):
    """What an attacker with a valid API key tried through C{/send/raw}: the
    same core as SMTP refuses or normalises it the same way."""

    max_size_mb = 8
    OWN = b"From: a@good.example\r\n"

    def raw(self, message: bytes, **extra):
        params = {"mail_from": "a@good.example", "rcpt_to": ["you@dest.example"],
                  "data": b64(message)}
        params.update(extra)
        return params

    @defer.inlineCallbacks
    def assert_refused(self, code, message, text):
        answer = yield self.assert_error(code, RAW, self.raw(message))
        self.assertEqual(answer["data"]["message"], text)

    @defer.inlineCallbacks
    def test_header_section_over_the_limit_is_refused_not_cut(self):
        folded = b"From: a@good.example" + b"\r\n " * 400_000 + b", ceo@foreign.test\r\n\r\nx"
        pad = b"".join(b"X-Pad: %06d\r\n" % i for i in range(1400 * 1024 // 15))
        for message in (folded, self.OWN + pad + b"From: ceo@foreign.test\r\n\r\nx"):
            yield self.assert_refused("HeaderSectionTooLarge", message,
                                      "Header section too large (maximum size 1024KB)")

    @defer.inlineCallbacks
    def test_bare_cr_nul_and_junk_in_the_header_section(self):
        cases = [
            (b"X-A: b\rFrom: ceo@foreign.test\r\r\n" + self.OWN + b"\r\nx", "bare CR"),
            (b"Fr\x00om: ceo@foreign.test\r\n" + self.OWN + b"\r\nx", "NUL byte"),
            (b"Fr\xc3\xb6m: x\r\n" + self.OWN + b"\r\nx", "invalid header field name"),
            (self.OWN + b"junk\r\n\r\nx", "line that is not a header field"),
        ]
        for message, what in cases:
            yield self.assert_refused("MalformedMessage", message,
                                      f"Header section not valid: {what}")

    @defer.inlineCallbacks
    def test_nul_in_the_body(self):
        yield self.assert_refused("MalformedMessage", self.OWN + b"\r\na\x00b",
                                  "Message body contains a NUL byte")

    @defer.inlineCallbacks
    def test_bare_cr_in_the_body_is_stored_as_crlf(self):
        answer = yield self.call(RAW, self.raw(self.OWN + b"\r\na\r.\rMAIL FROM:<x@y>\rb"))
        self.assertEqual(answer["status"], "success", answer)
        _, bodies = yield self.stored()
        [body] = bodies.values()
        self.assertTrue(body.endswith(b"\r\n\r\na\r\n.\r\nMAIL FROM:<x@y>\r\nb\r\n"), body)
        self.assertEqual(body.count(b"\r"), body.count(b"\r\n"))
        self.assertEqual(body.count(b"\n"), body.count(b"\r\n"))

    @defer.inlineCallbacks
    def test_address_literals_and_repeated_recipients(self):
        answer = yield self.assert_parameter_error(
            RAW, self.raw(self.OWN + b"\r\nx", rcpt_to=["postmaster@[127.0.0.1]"]))
        self.assertIn("address literal", answer)
        answer = yield self.assert_parameter_error(
            MESSAGE, simple(to=["postmaster@[127.0.0.1]"]))
        self.assertIn("address literal", answer)
        answer = yield self.call(RAW, self.raw(self.OWN + b"\r\nx", rcpt_to=[
            "a@dest.example", "<a@dest.example>", "a@DEST.example"]))
        self.assertEqual(answer["status"], "success", answer)
        self.assertEqual(list(answer["data"]["messages"]), ["a@dest.example"])
        answer = yield self.call(MESSAGE, simple(to=["a@dest.example"], cc=["a@Dest.Example"],
                                              bcc=["a@dest.example"]))
        self.assertEqual(list(answer["data"]["messages"]), ["a@dest.example"])
        entries, _ = yield self.stored()
        self.assertEqual([e.rcpt_to for e in entries], ["a@dest.example"] * 2)


def read_response(sock) -> tuple[bytes, dict, bytes]:
    """One HTTP response from a raw socket: status line, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines)}
    while len(body) < int(headers[b"content-length"]):
        body += sock.recv(65536)
    return status, headers, body


class SizeLimitTests(APITestBase):
    def setUp(self):
        self.limit = request_body_limit(MAX_SIZE)
        return super().setUp()

    def raw_params(self, size: int) -> dict:
        """send/raw parameters whose stored message is exactly C{size} bytes."""
        received = len(received_header(HOSTNAME, "HTTP", "X" * 12, 0,
                                       client_ip="127.0.0.1"))
        head = (b"From: me@good.example\r\nSubject: big\r\nMessage-ID: <big@good.example>\r\n"
                b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\n")
        fill = size - received - len(head)
        line = b"x" * 76 + b"\r\n"
        body = line * (fill // len(line))
        body += b"y" * (fill - len(body) - 2) + b"\r\n"
        return {"mail_from": "me@good.example", "rcpt_to": ["a@dest.example"],
                "data": b64(head + body)}

    @defer.inlineCallbacks
    def test_message_size_limit_includes_the_received_header(self):
        answer = yield self.assert_error("MessageTooLarge", RAW,
                                         self.raw_params(MAX_SIZE + 1))
        self.assertEqual(answer["data"]["message"], "Message too large (maximum size 1MB)")
        answer = yield self.call(RAW, self.raw_params(MAX_SIZE))
        self.assertEqual(answer["status"], "success", answer)
        entries = yield self.raw_store.list_entries()
        self.assertEqual(entries[0].size, MAX_SIZE)

    @defer.inlineCallbacks
    def test_a_body_of_exactly_the_limit_is_read(self):
        body = b'{"x": "' + b"a" * (self.limit - 9) + b'"}'
        self.assertEqual(len(body), self.limit)
        message = yield self.assert_parameter_error(RAW, body=body,
                                                    content_type="application/json")
        self.assertIn("`rcpt_to`", message)

    def request_head(self, length_header: bytes, expect=False) -> bytes:
        return (b"POST " + RAW.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"X-Server-API-Key: " + API_KEY.encode() + b"\r\n"
                b"Content-Type: application/json\r\n" + length_header
                + (b"Expect: 100-continue\r\n" if expect else b"") + b"\r\n")

    def assert_refused(self, status, headers, body):
        self.assertEqual(status, b"HTTP/1.1 413 Request Entity Too Large")
        self.assertEqual(headers[b"connection"], b"close")
        answer = json.loads(body)
        self.assertEqual(answer["status"], "error")
        self.assertEqual(answer["data"]["code"], "MessageTooLarge")
        self.assertIn(str(self.limit), answer["data"]["message"])

    @defer.inlineCallbacks
    def test_content_length_over_the_limit_refused_before_the_body(self):
        head = self.request_head(b"Content-Length: %d\r\n" % (10 * 1024 ** 3), expect=True)

        def talk():
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                s.sendall(head)  # and never a byte of the 10 GB body
                return read_response(s)
        status, headers, body = yield deferToThread(talk)
        self.assert_refused(status, headers, body)  # no "100 Continue" first
        self.assertEqual((yield self.raw_store.list_entries()), [])

    @defer.inlineCallbacks
    def test_body_sent_anyway_is_drained_then_the_connection_closed(self):
        head = self.request_head(b"Content-Length: %d\r\n" % (self.limit + 1))
        response = yield deferToThread(exchange, self.port, head + b"a" * (self.limit + 1))
        self.assertEqual(response.count(b"HTTP/1.1"), 1)
        status, rest = response.split(b"\r\n", 1)
        self.assertEqual(status, b"HTTP/1.1 413 Request Entity Too Large")
        self.assertIn(b'"MessageTooLarge"', rest)

    @defer.inlineCallbacks
    def test_chunked_body_refused_once_past_the_limit(self):
        chunk = b"b" * 65536
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk)
                          for _ in range(self.limit // len(chunk) + 2))
        head = self.request_head(b"Transfer-Encoding: chunked\r\n")
        response = yield deferToThread(exchange, self.port, head + chunks + b"0\r\n\r\n")
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "), response[:100])
        self.assertIn(b'"MessageTooLarge"', response)


class ListenerTests(unittest.TestCase):
    @defer.inlineCallbacks
    def start(self, https: bool):
        store = yield make_store(self)
        yield seed_tenancy(store)
        yield store.add_credential(("acme", "web"), "api", API_KEY)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        tls, tls_options = None, None
        if https:
            certificate, key = make_certificate("localhost")
            paths = [os.path.join(folder, name) for name in ("cert.pem", "key.pem")]
            for path, data in zip(paths, (certificate, key)):
                with open(path, "wb") as f:
                    f.write(data)
            tls = TLSConfig(certificate=paths[0], private_key=paths[1])
            tls_options = TLSOptions.from_config(tls)
            context = ssl.create_default_context(cadata=certificate.decode())
            self.patch(http, "context", context)
        config = Config(hostname=HOSTNAME, spool_directory=folder, tls=tls,
                        http_api=HTTPAPIConfig(endpoint="tcp:0:interface=127.0.0.1",
                                               tls=https))
        log = []
        globalLogPublisher.addObserver(log.append)
        self.addCleanup(globalLogPublisher.removeObserver, log.append)
        tracker = ConnectionTracker(build_api_site(build_portal(store, reactor, None),
                                                   core_of(store, config), config, reactor))
        service = api_listener_service(tracker, config, tls_options, reactor)
        service.startService()

        @defer.inlineCallbacks
        def stop():
            yield service.stopService()
            yield tracker.all_closed()
        self.addCleanup(stop)
        lines = [formatEvent(e) for e in log if "HTTP API listening" in formatEvent(e)]
        self.assertEqual(len(lines), 1)
        match = re.fullmatch(r"HTTP API listening on tcp:0:interface=127\.0\.0\.1 at "
                             r"127\.0\.0\.1 port (\d+) \(https: (true|false)\)", lines[0])
        self.assertIsNotNone(match, lines[0])
        self.assertEqual(match.group(2), "true" if https else "false")
        return int(match.group(1))

    @defer.inlineCallbacks
    def send(self, url):
        status, _, data = yield deferToThread(
            http, url, json.dumps(simple()).encode(),
            {"X-Server-API-Key": API_KEY, "Content-Type": "application/json"})
        self.assertEqual(status, 200)
        return json.loads(data)

    @defer.inlineCallbacks
    def test_http_listener_logs_its_port_and_serves(self):
        port = yield self.start(https=False)
        answer = yield self.send(f"http://127.0.0.1:{port}{MESSAGE}")
        self.assertEqual(answer["status"], "success", answer)

    @defer.inlineCallbacks
    def test_https_listener_with_the_tls_certificate(self):
        port = yield self.start(https=True)
        answer = yield self.send(f"https://127.0.0.1:{port}{MESSAGE}")
        self.assertEqual(answer["status"], "success", answer)

    def test_https_without_tls_options_is_refused(self):
        config = Config(hostname=HOSTNAME, http_api=HTTPAPIConfig(tls=True))
        self.assertRaises(ValueError, api_listener_service, object(), config, None, reactor)


class SameQueueAsSMTPTests(APITestBase):
    """A message sent over HTTP and the same message sent over SMTP by the
    same server leave the same queue rows and bodies, but for the protocol
    word in the Received header."""

    @defer.inlineCallbacks
    def send_over_smtp(self, message: bytes, mail_from, rcpts):
        h = Harness(self, self.raw_store, client_ip="127.0.0.1", max_message_size=MAX_SIZE)
        h.connect()
        replies = yield h.lines("EHLO 127.0.0.1",
                                "AUTH PLAIN " + b64(f"\0u\0{self.tenancy['key']}"),
                                f"MAIL FROM:<{mail_from}>",
                                *[f"RCPT TO:<{r}>" for r in rcpts], "DATA")
        self.assertEqual(replies[-1], b"354 Go ahead")
        [final] = yield h.send(re.sub(rb"(?m)^\.", b"..", message) + b".\r\n")
        self.assertTrue(final.startswith(b"250 OK: queued as "), final)

    @defer.inlineCallbacks
    def test_http_and_smtp_mail_alike(self):
        answer = yield self.call(MESSAGE, simple(
            cc=["cc@dest.example"], bcc=["bcc@dest.example"], html_body="<p>.hi</p>",
            plain_body=".leading dot\n",
            attachments=[{"name": "a.bin", "data": b64(b"\0" * 99)}]))
        self.assertEqual(answer["status"], "success", answer)
        entries, bodies = yield self.stored()
        message = bodies[entries[0].message_id].split(b"\r\n", 1)[1]
        yield self.send_over_smtp(message, entries[0].mail_from,
                                  [e.rcpt_to for e in entries])
        entries, bodies = yield self.stored()
        over_http, over_smtp = entries[:3], entries[3:]

        def alike(entry):
            return dataclasses.replace(entry, id=0, message_id=0, token="", created_at=0,
                                       next_attempt_at=None, credential_id=None, size=0)
        self.assertEqual([alike(e) for e in over_http], [alike(e) for e in over_smtp])
        self.assertEqual({e.size - h.size for e, h in zip(over_smtp, over_http)},
                         {len("ESMTPA") - len("HTTP")})
        self.assertEqual({e.credential_id for e in over_http}, {self.api_credential.id})

        def normal(entry, protocol):
            received, rest = bodies[entry.message_id].split(b"\r\n", 1)
            received = received.replace(entry.token.encode(), b"<token>")
            received = re.sub(rb"; .*$", b"; <date>", received)
            self.assertIn(b" with " + protocol + b" id <token>; ", received)
            return received.replace(b" with " + protocol + b" ", b" with <proto> ") + rest
        self.assertEqual(normal(over_http[0], b"HTTP"), normal(over_smtp[0], b"ESMTPA"))


_json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=30)
_json = st.recursive(
    _json_scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
_address = st.sampled_from(["a@good.example", "Me <me@good.example>", "x", "", "<>",
                            "a@b, c@d", "undisclosed:;", "\u00e9@\u00e9.example", "a@",
                            "\"q\"@x.example", "a\r\nBcc: b@c"])
_field = _address | st.lists(_address, max_size=3) | _json
_values = dict.fromkeys(("to", "cc", "bcc", "from", "sender", "reply_to", "rcpt_to", "mail_from"), _field)
_values.update({
    "subject": st.sampled_from(["x", "Gr\u00fc\u00dfe", "a\r\nBcc: b@c"]) | _json,
    "plain_body": _json, "html_body": _json, "tag": _json, "bounce": _json,
    "headers": st.dictionaries(st.sampled_from(["X-A", "Bcc", "bad name", "In-Reply-To"]),
                               _json, max_size=2) | _json,
    "data": st.sampled_from(["", "eA==", "not base64", b64(b"no headers"),
                             b64(b"From: a@good.example\n\nbare LF")]) | _json,
    "attachments": st.lists(st.fixed_dictionaries({}, optional={
        "name": _json, "content_type": st.sampled_from(["text/csv", "bad", "multipart/x"])
        | _json, "data": st.sampled_from(["", "eA==", "!!"]) | _json}), max_size=2) | _json,
})
_valid = [simple(), {"mail_from": "me@good.example", "rcpt_to": ["a@dest.example"],
                     "data": b64(RAW_MESSAGE)}]
#: a valid request with up to three parameters replaced or dropped
_params = st.builds(
    lambda base, changes, dropped: {k: v for k, v in {**base, **changes}.items()
                                    if k not in dropped},
    st.sampled_from(_valid),
    st.lists(st.sampled_from(sorted(_values)), max_size=3, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: _values[k] for k in keys})),
    st.sets(st.sampled_from(sorted(_values)), max_size=2))


class ComposePropertyTests(unittest.TestCase):
    """Whatever the parameters, the answer is a submission or an API or
    parameter error: never an exception that would become a 500."""

    @settings(max_examples=100, deadline=None)
    @given(_params)
    def test_message_parameters(self, params):
        try:
            submission = compose_message(params, hostname=HOSTNAME, now=0,
                                         max_recipients=100)
        except (APIError, ParameterError):
            return
        self.assertTrue(submission.recipients)
        self.assertNotIn(b"\nBcc:", submission.message)
        self.assertNotRegex(submission.message, rb"(?<!\r)\n")

    @settings(max_examples=100, deadline=None)
    @given(_params)
    def test_raw_parameters(self, params):
        try:
            submission = raw_submission(params, max_size=MAX_SIZE, max_recipients=100)
        except (APIError, ParameterError):
            return
        self.assertTrue(submission.recipients)
        self.assertEqual(base64.b64decode("".join(params["data"].split())),
                         submission.message)
