"""The message routes (C{messages/message} and C{messages/deliveries}) over
twisted.web's real server on loopback, with a real HTTP client and a real
SQLite store: messages sent through the send routes, then looked up by entry
id and by token, with every expansion, privacy mode, another server's
messages refused, and attempts recorded through the relay's store methods."""
from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import json

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from mailgw.model import DeliveryAttempt, QueueEntry
from mailgw.store.base import RecordedAttempt, ServerMessage
from mailgw.web.compose import ParameterError
from mailgw.web.messages import describe_deliveries, message_reference, requested_expansions
from tests.helpers import b64
from tests.web.test_api import (
    API_KEY, HELD_KEY, MESSAGE, OTHER_KEY, RAW, APITestBase, http,
)

LOOKUP = "/api/v1/messages/message"
DELIVERIES = "/api/v1/messages/deliveries"
ALL = {"status", "details", "headers", "plain_body", "html_body", "attachments",
       "raw_message"}
PDF = b"%PDF-1.4 not really\x00\x01\x02"


def rich(**extra):
    """Two recipients, a plain and an HTML body and an attachment."""
    params = {"to": ["one@dest.example", "two@dest.example"],
              "from": "Me <me@good.example>", "subject": "H\u00e9llo there",
              "plain_body": "Plain caf\u00e9\n", "html_body": "<p>HTML caf\u00e9</p>",
              "attachments": [{"name": "doc.pdf", "content_type": "application/pdf",
                               "data": b64(PDF)}]}
    params.update(extra)
    return params


class MessageRoutesBase(APITestBase):
    message_routes = True

    @defer.inlineCallbacks
    def send(self, params=None, key=API_KEY):
        """Send through C{send/message}; C{(token, {rcpt: entry id})}."""
        answer = yield self.call(MESSAGE, params or rich(), key=key)
        self.assertEqual(answer["status"], "success", answer)
        messages = answer["data"]["messages"]
        [token] = {m["token"] for m in messages.values()}
        return token, {rcpt: m["id"] for rcpt, m in messages.items()}

    @defer.inlineCallbacks
    def look_up(self, ref, expansions=None, path=LOOKUP, key=API_KEY, **kw):
        params = {"id": ref}
        if expansions is not None:
            params["_expansions"] = expansions
        answer = yield self.call(path, params, key=key, **kw)
        self.assertEqual(answer["status"], "success", answer)
        return answer["data"]

    @defer.inlineCallbacks
    def assert_not_found(self, ref, path=LOOKUP, key=API_KEY):
        answer = yield self.call(path, {"id": ref, "_expansions": True}, key=key)
        self.assertEqual(answer, {"status": "error", "time": answer["time"], "flags": {},
                                  "data": {"code": "MessageNotFound", "message":
                                           "No message found matching provided ID"}})

    @defer.inlineCallbacks
    def settle(self, entry_id, outcome, when, code, text, host="mx.dest.example"):
        """What the relay does with one entry: claim it, then settle it."""
        claims = yield self.raw_store.claim_due("node-1", when, 300, 100)
        self.assertIn(entry_id, [c.entry.id for c in claims])
        yield self.raw_store.release_leases(
            "node-1", [c.entry.id for c in claims if c.entry.id != entry_id])
        attempt = DeliveryAttempt(entry_id, when, host, code, text, "node-1")
        if outcome == "sent":
            settled = yield self.raw_store.mark_sent(entry_id, "node-1", attempt)
        elif outcome == "retry":
            settled = yield self.raw_store.mark_retry(entry_id, "node-1", attempt, when)
        else:
            settled = yield self.raw_store.mark_failed(entry_id, "node-1", attempt)
        self.assertTrue(settled)


class MessageTests(MessageRoutesBase):
    @defer.inlineCallbacks
    def test_every_expansion_by_entry_id(self):
        token, ids = yield self.send()
        entries = yield self.raw_store.message_entries(token)
        data = yield self.look_up(ids["two@dest.example"], True)
        self.assertEqual(set(data), {"id", "token"} | ALL)
        self.assertEqual((data["id"], data["token"]), (ids["two@dest.example"], token))
        self.assertEqual(data["status"], {"status": "Pending", "last_delivery_attempt": None,
                                          "held": False, "hold_expiry": None})
        body = yield self.raw_store.read_body(entries[0].message_id)
        parsed = email.message_from_bytes(body, policy=email.policy.default)
        self.assertEqual(data["details"], {
            "rcpt_to": "two@dest.example", "mail_from": "me@good.example",
            "subject": "H\u00e9llo there", "message_id": parsed["Message-ID"].strip("<>"),
            "timestamp": entries[1].created_at, "direction": "outgoing",
            "size": f"{len(body) / 1024:.2f}", "bounce": False, "bounce_for_id": 0,
            "tag": None, "received_with_ssl": None})
        headers = data["headers"]
        self.assertEqual(len(headers["received"]), 1)
        self.assertIn(f"with HTTP id {token}", headers["received"][0])
        self.assertEqual(headers["from"], ["Me <me@good.example>"])
        self.assertEqual(headers["to"], ["one@dest.example, two@dest.example"])
        self.assertTrue(all(name == name.lower() for name in headers))
        self.assertEqual(data["plain_body"], "Plain caf\u00e9\n")
        self.assertEqual(data["html_body"].strip(), "<p>HTML caf\u00e9</p>")
        self.assertEqual(data["attachments"], [{
            "filename": "doc.pdf", "content_type": "application/pdf", "data": b64(PDF),
            "size": len(PDF), "hash": hashlib.sha1(PDF).hexdigest()}])
        self.assertEqual(base64.b64decode(data["raw_message"]), body)

    @defer.inlineCallbacks
    def test_expansions_asked_for_only(self):
        token, ids = yield self.send()
        first = ids["one@dest.example"]
        self.assertEqual((yield self.look_up(first)), {"id": first, "token": token})
        self.assertEqual((yield self.look_up(first, [])), {"id": first, "token": token})
        self.assertEqual((yield self.look_up(first, False)), {"id": first, "token": token})
        data = yield self.look_up(first, ["status", "plain_body", "inspection"])
        self.assertEqual(set(data), {"id", "token", "status", "plain_body"})
        data = yield self.look_up(first, ["details"])
        self.assertEqual(set(data), {"id", "token", "details"})
        self.assertEqual(data["details"]["rcpt_to"], "one@dest.example")

    @defer.inlineCallbacks
    def test_token_answers_for_the_first_entry_and_lists_every_recipient(self):
        token, ids = yield self.send()
        one, two = ids["one@dest.example"], ids["two@dest.example"]
        self.assertLess(one, two)
        yield self.settle(two, "sent", reactor.seconds(), 250, "2.0.0 OK")
        for ref in (token, token.lower(), f" {token} "):
            data = yield self.look_up(ref, ["status", "details"])
            self.assertEqual((data["id"], data["token"]), (one, token))
            self.assertEqual(data["details"]["rcpt_to"], "one@dest.example")
            self.assertEqual(data["status"]["status"], "Pending")
            self.assertEqual(data["recipients"], [
                {"id": one, "rcpt_to": "one@dest.example", "status": "Pending"},
                {"id": two, "rcpt_to": "two@dest.example", "status": "Sent"}])
        # an entry id names that entry alone, as a number or a string of digits
        for ref in (two, str(two)):
            data = yield self.look_up(ref, ["status"])
            self.assertEqual((data["id"], data["status"]["status"]), (two, "Sent"))
            self.assertNotIn("recipients", data)

    @defer.inlineCallbacks
    def test_status_follows_the_queue(self):
        token, ids = yield self.send(rich(to=["a@dest.example", "b@dest.example",
                                              "c@dest.example"]))
        a, b, c = ids["a@dest.example"], ids["b@dest.example"], ids["c@dest.example"]
        now = reactor.seconds()
        yield self.settle(a, "retry", now, 451, "RCPT TO refused: try later")
        yield self.settle(b, "retry", now, None, "connection refused", host=None)
        yield self.settle(b, "sent", now + 5, 250, "2.0.0 queued")
        yield self.settle(c, "failed", now, 550, "RCPT TO refused: no such user")
        expected = {a: ("SoftFail", now), b: ("Sent", now + 5), c: ("HardFail", now)}
        for entry_id, (status, last) in expected.items():
            data = yield self.look_up(entry_id, ["status"])
            self.assertEqual(data["status"], {"status": status, "last_delivery_attempt": last,
                                              "held": False, "hold_expiry": None})

    @defer.inlineCallbacks
    def test_held_message(self):
        token, ids = yield self.send(key=HELD_KEY)
        for ref in (token, ids["two@dest.example"]):
            data = yield self.look_up(ref, ["status"])
            self.assertEqual(data["status"], {"status": "Held", "last_delivery_attempt": None,
                                              "held": True, "hold_expiry": None})

    @defer.inlineCallbacks
    def test_privacy_mode_withholds_the_bodies(self):
        token, ids = yield self.send()
        yield self.raw_store.update_server("acme", "web", privacy_mode=True)
        data = yield self.look_up(token, True)
        for name in ("plain_body", "html_body", "attachments", "raw_message"):
            self.assertIsNone(data[name], name)
        self.assertEqual(data["details"]["subject"], "H\u00e9llo there")
        self.assertEqual(data["headers"]["from"], ["Me <me@good.example>"])
        self.assertEqual(data["status"]["status"], "Pending")
        yield self.raw_store.update_server("acme", "web", privacy_mode=False)
        data = yield self.look_up(token, ["raw_message"])
        self.assertIsNotNone(data["raw_message"])

    @defer.inlineCallbacks
    def test_raw_message_parts(self):
        raw = (b"From: Me <me@good.example>\r\nTo: you@dest.example\r\n"
               b"Subject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <raw-9@good.example>\r\n"
               b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
               b"Content-Type: text/plain; charset=x-unknown\r\n\r\nplain \xe9\r\n")
        answer = yield self.call(RAW, {"mail_from": "me@good.example",
                                       "rcpt_to": ["you@dest.example"], "data": b64(raw)})
        token = answer["data"]["messages"]["you@dest.example"]["token"]
        data = yield self.look_up(token, True)
        self.assertEqual(data["details"]["subject"], "caf\u00e9")
        self.assertEqual(data["details"]["message_id"], "raw-9@good.example")
        self.assertEqual(data["plain_body"], "plain \ufffd\n")
        self.assertIsNone(data["html_body"])
        self.assertEqual(data["attachments"], [])
        self.assertTrue(base64.b64decode(data["raw_message"]).endswith(raw))
        self.assertEqual(data["recipients"], [{"id": data["id"], "rcpt_to": "you@dest.example",
                                               "status": "Pending"}])

    @defer.inlineCallbacks
    def test_form_encoded_parameters(self):
        token, ids = yield self.send()
        data = yield self.look_up(token, ["status"], form=True)
        self.assertEqual(data["id"], ids["one@dest.example"])


class RefusalTests(MessageRoutesBase):
    @defer.inlineCallbacks
    def test_another_servers_message_is_not_found(self):
        token, ids = yield self.send()
        for path in (LOOKUP, DELIVERIES):
            for ref in (token, ids["one@dest.example"]):
                yield self.assert_not_found(ref, path, key=OTHER_KEY)
        other_token, other_ids = yield self.send(key=OTHER_KEY, params=rich(
            **{"from": "x@org.example"}))
        for ref in (other_token, other_ids["one@dest.example"]):
            yield self.assert_not_found(ref)
            yield self.assert_not_found(ref, DELIVERIES)

    @defer.inlineCallbacks
    def test_unknown_ids(self):
        yield self.send()
        for ref in ("NOSUCHTOKEN1", 999999, "999999", 0, -3, 2 ** 64, "", "x" * 300):
            yield self.assert_not_found(ref)
            yield self.assert_not_found(ref, DELIVERIES)

    @defer.inlineCallbacks
    def test_parameter_errors(self):
        for params in ({}, {"id": None}, {"id": True}, {"id": 1.5}, {"id": [1]},
                       {"id": 1, "_expansions": "status"},
                       {"id": 1, "_expansions": [1]}):
            answer = yield self.call(LOOKUP, params)
            self.assertEqual(answer["status"], "parameter-error", params)
            self.assertEqual(answer["data"]["code"], "ParameterError")
            self.assertTrue(answer["data"]["message"])
        answer = yield self.call(DELIVERIES, {}, body=b"{not json",
                                 content_type="application/json")
        self.assertEqual(answer["status"], "parameter-error")

    @defer.inlineCallbacks
    def test_authentication_as_for_sending(self):
        token, _ = yield self.send()
        for path in (LOOKUP, DELIVERIES):
            answer = yield self.call(path, {"id": token}, key=None)
            self.assertEqual(answer["data"]["code"], "AccessDenied")
            answer = yield self.call(path, {"id": token}, key="Z" * 24)
            self.assertEqual(answer["data"]["code"], "InvalidServerAPIKey")
        yield self.raw_store.update_server("acme", "web", suspended=True)
        answer = yield self.call(LOOKUP, {"id": token})
        self.assertEqual(answer["data"]["code"], "ServerSuspended")


class WithoutStoreTests(APITestBase):
    @defer.inlineCallbacks
    def test_routes_need_the_store(self):
        for path in (LOOKUP, DELIVERIES):
            status, _, body = yield deferToThread(
                http, self.url(path), b'{"id": 1}',
                {"X-Server-API-Key": API_KEY, "Content-Type": "application/json"})
            self.assertEqual(status, 404)
            self.assertEqual(json.loads(body)["data"]["code"], "RouteNotFound")


class DeliveriesTests(MessageRoutesBase):
    @defer.inlineCallbacks
    def test_deliveries_oldest_first(self):
        token, ids = yield self.send()
        one, two = ids["one@dest.example"], ids["two@dest.example"]
        self.assertEqual((yield self.look_up(token, path=DELIVERIES)), [])
        now = reactor.seconds()
        yield self.settle(one, "retry", now, 451, "RCPT TO refused: greylisted")
        yield self.settle(two, "sent", now + 1, 250, "2.0.0 Ok: queued as 123")
        yield self.settle(one, "retry", now + 2, None, "connection refused", host=None)
        yield self.settle(one, "failed", now + 3, 550, "RCPT TO refused: no such user")
        data = yield self.look_up(token, path=DELIVERIES)
        self.assertEqual([(d["status"], d["output"], d["timestamp"]) for d in data], [
            ("SoftFail", "RCPT TO refused: greylisted", now),
            ("Sent", "2.0.0 Ok: queued as 123", now + 1),
            ("SoftFail", "connection refused", now + 2),
            ("HardFail", "RCPT TO refused: no such user", now + 3)])
        self.assertEqual(len({d["id"] for d in data}), 4)
        for d in data:
            self.assertEqual(set(d), {"id", "status", "details", "output", "sent_with_ssl",
                                      "log_id", "time", "timestamp"})
            self.assertEqual((d["sent_with_ssl"], d["log_id"], d["time"]), (None, None, None))
            self.assertIsInstance(d["id"], int)
        self.assertEqual(data[1]["details"],
                         "Message for two@dest.example accepted by mx.dest.example")
        self.assertIn("one@dest.example", data[0]["details"])
        self.assertIn("no host reached", data[2]["details"])
        # by entry id, that entry's attempts only
        data = yield self.look_up(two, path=DELIVERIES)
        self.assertEqual([d["status"] for d in data], ["Sent"])
        data = yield self.look_up(one, path=DELIVERIES)
        self.assertEqual([d["status"] for d in data], ["SoftFail", "SoftFail", "HardFail"])

    @defer.inlineCallbacks
    def test_envelope(self):
        token, _ = yield self.send()
        answer = yield self.call(DELIVERIES, {"id": token})
        self.assertEqual((answer["status"], answer["flags"], answer["data"]),
                         ("success", {}, []))
        self.assertGreaterEqual(answer["time"], 0)
        answer = yield self.call(LOOKUP, {"id": token})
        self.assertEqual(answer["status"], "success")
        self.assertEqual(json.loads(json.dumps(answer["data"]))["token"], token)


class PureTests(unittest.TestCase):
    def test_message_reference(self):
        self.assertEqual(message_reference({"id": 12}), 12)
        self.assertEqual(message_reference({"id": "12"}), 12)
        self.assertEqual(message_reference({"id": "j2gg2u0uk7sp"}), "J2GG2U0UK7SP")
        self.assertEqual(message_reference({"id": "123456789012"}), "123456789012")
        for bad in ({}, {"id": False}, {"id": 2.0}, {"id": {}}):
            self.assertRaises(ParameterError, message_reference, bad)

    def test_expansions(self):
        self.assertEqual(requested_expansions({"_expansions": True}), frozenset(ALL))
        self.assertEqual(requested_expansions({}), frozenset())
        self.assertEqual(requested_expansions({"_expansions": ["status", "nope"]}),
                         frozenset({"status"}))

    def test_the_attempt_that_failed_an_entry_is_a_hard_failure(self):
        entry = QueueEntry(7, 1, "T" * 12, "acme/web", 1, None, "a@b.example",
                           "c@d.example", "failed", 10, None, 0.0, attempts=2)
        record = ServerMessage((entry,), (
            RecordedAttempt(1, DeliveryAttempt(7, 1.0, None, None, "timeout")),
            RecordedAttempt(2, DeliveryAttempt(7, 2.0, None, None, "no MX: null MX"))))
        self.assertEqual([d["status"] for d in describe_deliveries(record)],
                         ["SoftFail", "HardFail"])
