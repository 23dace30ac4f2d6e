"""The web interface over twisted.web's real server on loopback, with a real
HTTP client (L{tests.web.uiclient}) and a real SQLite store: every route,
sign-in and its throttle, sessions, CSRF, the security headers, and that
one organization's users can neither see nor change another's objects."""
from __future__ import annotations

import io
import re

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from mailgw.auth.guard import AuthenticationGuard
from mailgw.auth.throttle import FailureThrottle
from mailgw.config import AuthThrottleConfig, Config, HTTPAPIConfig, ListenerConfig, WebConfig
from mailgw.metrics import Metrics
from mailgw.model import MessageEnvelope
from mailgw.auth import passwords
from mailgw.web.ui import sessions
from mailgw.web.ui.site import build_web_site
from tests.helpers import make_store
from tests.web.uiclient import UIClient

PASSWORD = "correct horse battery"
ADMIN, ANN, BOB = "admin@example.com", "ann@acme.example", "bob@beta.example"
SESSION = sessions.SESSION_COOKIE.decode()


class FakeLookup:
    """DNS answers for the domain pages: C{txt} records by name."""

    def __init__(self):
        self.records = {}

    def txt(self, name):
        return defer.succeed(self.records.get(name, []))

    def cname(self, name):
        return defer.succeed([])

    def mx(self, name):
        return defer.succeed([])


class WebTestCase(unittest.TestCase):
    """A started web interface on a fresh store, with three users: an admin,
    Ann of acme and Bob of beta."""

    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self)
        self.config = Config(
            hostname="mx.example.test", web=WebConfig(endpoint="tcp:0"),
            listeners=(ListenerConfig(endpoint="tcp:587:interface=0.0.0.0", tls="starttls"),
                       ListenerConfig(endpoint="tcp:465", tls="implicit")),
            auth_throttle=AuthThrottleConfig(max_failures=10),
            http_api=HTTPAPIConfig(endpoint="tcp:8025:interface=127.0.0.1"))
        self.guard = AuthenticationGuard(FailureThrottle.from_config(
            reactor, self.config.auth_throttle))
        self.metrics = Metrics()
        self.lookup = FakeLookup()
        site = build_web_site(self.store, self.guard, self.config, reactor, self.metrics,
                              self.lookup)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        yield self.store.add_organization("acme", "Acme")
        yield self.store.add_organization("beta", "Beta")
        yield self.store.add_server("acme", "web", "Web")
        yield self.store.add_server("beta", "mail", "Mail")
        for email, admin, orgs in ((ADMIN, True, ()), (ANN, False, ("acme",)),
                                   (BOB, False, ("beta",))):
            yield self.store.add_user(email, admin=admin, organizations=orgs)
            yield self.store.set_user_password(email, passwords.hash_password_now(PASSWORD))
        self.logged = []
        observer = self.logged.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def client(self) -> UIClient:
        return UIClient(self.port.getHost().port)

    @defer.inlineCallbacks
    def signed_in(self, email: str) -> UIClient:
        client = self.client()
        yield client.get("/login")
        answer = yield client.post("/login", {"email": email, "password": PASSWORD})
        self.assertEqual(answer.status, 303, answer.text)
        return client

    def log_text(self) -> str:
        return "\n".join(formatEvent(e) or "" for e in self.logged)


def _wrap_render(render, gone):
    """C{render}, with C{gone} fired once the request's client has gone."""
    def wrapped(request):
        request.notifyFinish().addErrback(lambda f: gone.callback(None))
        return render(request)
    return wrapped


class SignInTests(WebTestCase):

    @defer.inlineCallbacks
    def test_pages_need_a_session_and_carry_the_security_headers(self):
        client = self.client()
        answer = yield client.get("/orgs/acme/servers/web/credentials")
        self.assertEqual(answer.status, 303)
        self.assertEqual(answer.location, "/login?next=%2Forgs%2Facme%2Fservers%2Fweb%2F"
                                          "credentials")
        answer = yield client.get("/login")
        self.assertEqual(answer.status, 200)
        headers = answer.headers
        self.assertIn("script-src 'self'", headers["Content-Security-Policy"])
        self.assertNotIn("unsafe-inline", headers["Content-Security-Policy"])
        self.assertIn("frame-ancestors 'none'", headers["Content-Security-Policy"])
        self.assertEqual(headers["X-Frame-Options"], "DENY")
        self.assertEqual(headers["Referrer-Policy"], "no-referrer")
        self.assertEqual(headers["Cache-Control"], "no-store")
        self.assertNotIn("<script>", answer.text)  # no inline script
        for name, kind in (("style.css", "text/css"), ("copy.js", "text/javascript")):
            static = yield client.get(f"/static/{name}")
            self.assertEqual(static.status, 200)
            self.assertTrue(static.headers["Content-Type"].startswith(kind))
        missing = yield client.get("/static/nope.css")
        self.assertEqual(missing.status, 404)
        unknown = yield client.get("/no/such/page")
        self.assertEqual(unknown.status, 404)

    @defer.inlineCallbacks
    def test_sign_in_rotates_the_session_and_sets_a_strict_cookie(self):
        client = self.client()
        yield client.get("/login")
        answer = yield client.post("/login", {"email": ANN.upper(), "password": PASSWORD,
                                              "next": "/orgs/acme"})
        self.assertEqual((answer.status, answer.location), (303, "/orgs/acme"))
        [cookie] = [c for c in answer.cookies() if c.startswith(SESSION + "=")]
        for part in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"):
            self.assertIn(part, cookie)
        self.assertNotIn("Secure", cookie)  # not served over TLS here
        first = client.cookies[SESSION]
        # signing in again makes a new session and ends the old one
        yield client.get("/orgs")
        answer = yield client.post("/login", {"email": ANN, "password": PASSWORD})
        self.assertEqual(answer.status, 303)
        self.assertNotEqual(client.cookies[SESSION], first)
        stale = self.client()
        stale.cookies[SESSION] = first
        answer = yield stale.get("/orgs")
        self.assertEqual(answer.status, 303)  # to the sign-in page
        self.assertNotIn(first, self.log_text())
        # another site's path is never where sign-in leads
        other = self.client()
        yield other.get("/login")
        answer = yield other.post("/login", {"email": ANN, "password": PASSWORD,
                                             "next": "//evil.example/"})
        self.assertEqual(answer.location, "/")

    @defer.inlineCallbacks
    def test_sign_out_ends_the_session(self):
        client = yield self.signed_in(ANN)
        token = client.cookies[SESSION]
        yield client.get("/orgs")
        answer = yield client.post("/logout")
        self.assertEqual((answer.status, answer.location), (303, "/login"))
        self.assertNotIn(SESSION, client.cookies)
        client.cookies[SESSION] = token
        answer = yield client.get("/orgs")
        self.assertEqual(answer.status, 303)

    @defer.inlineCallbacks
    def test_a_wrong_password_ten_times_locks_the_address_out(self):
        client = self.client()
        yield client.get("/login")
        for _ in range(9):
            answer = yield client.post("/login", {"email": ANN, "password": "wrong one!"})
            self.assertEqual(answer.status, 401)
            self.assertIn("Wrong e-mail address or password.", answer.text)
        answer = yield client.post("/login", {"email": ANN, "password": "wrong one!"})
        self.assertEqual(answer.status, 429)
        # now even the right password is refused: the same throttle as SMTP AUTH
        answer = yield client.post("/login", {"email": ANN, "password": PASSWORD})
        self.assertEqual(answer.status, 429)
        self.assertIn("Too many failed sign-ins", answer.text)
        self.assertTrue(self.guard.locked("127.0.0.1"))
        text = self.log_text()
        self.assertIn('Authentication failure for 127.0.0.1 (web sign-in, user '
                      f'"{ANN}")', text)
        from tests.web.test_api import fail2ban_pattern
        lines = [ln for ln in text.splitlines() if "Authentication failure" in ln]
        self.assertEqual(len(lines), 10)
        for line in lines:  # each one a line fail2ban's shipped filter bans for
            self.assertEqual(fail2ban_pattern().search(line).group("host"), "127.0.0.1")
        self.assertNotIn("wrong one!", text)
        self.assertNotIn(PASSWORD, text)
        samples = {s.labels.get("result"): s.value
                   for s in self.metrics.web_logins.collect()[0].samples
                   if s.name.endswith("_total")}
        self.assertEqual(samples["failed"], 10)
        self.assertEqual(samples["locked_out"], 1)

    @defer.inlineCallbacks
    def test_a_client_gone_before_its_answer_is_not_written_to(self):
        import socket

        from twisted.internet.task import deferLater
        client = yield self.signed_in(ANN)
        asked, held = [], defer.Deferred()
        real = self.store.list_organizations
        self.patch(self.store, "list_organizations",
                   lambda: asked.append(1) or held.addCallback(lambda _: real()))
        gone, sent = defer.Deferred(), defer.Deferred()
        resource = self.port.factory.resource
        resource.render = _wrap_render(resource.render, gone)
        send = resource._send
        resource._send = lambda visit, answer: (send(visit, answer), sent.callback(None))
        raw = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        raw.sendall(b"GET /orgs HTTP/1.1\r\nHost: x\r\nCookie: "
                    + f"{SESSION}={client.cookies[SESSION]}".encode() + b"\r\n\r\n")
        while not asked:  # the page waits for the store
            yield deferLater(reactor, 0.01, lambda: None)
        raw.close()
        yield gone  # the server saw the client go
        held.callback(None)
        yield sent  # the page's answer, which nobody reads
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_an_unknown_address_is_a_failure_like_a_wrong_password(self):
        client = self.client()
        yield client.get("/login")
        answer = yield client.post("/login", {"email": "nobody@example.com",
                                              "password": PASSWORD})
        self.assertEqual(answer.status, 401)
        self.assertIn("Wrong e-mail address or password.", answer.text)

    @defer.inlineCallbacks
    def test_forms_without_their_csrf_token_are_refused(self):
        client = self.client()
        yield client.get("/login")
        answer = yield client.post("/login", {"email": ANN, "password": PASSWORD},
                                   csrf=False)
        self.assertEqual(answer.status, 403)
        self.assertNotIn(SESSION, client.cookies)
        client = yield self.signed_in(ANN)
        yield client.get("/orgs")
        for fields in ({}, {"csrf_token": "forged"}, {"csrf_token": client.cookies.get(
                sessions.LOGIN_CSRF_COOKIE.decode(), "")}):
            answer = yield client.post("/orgs", dict(fields, permalink="made"), csrf=False)
            self.assertEqual(answer.status, 403)
            self.assertIn("did not come from this site", answer.text)
        self.assertEqual([o.permalink for o in (yield self.store.list_organizations())],
                         ["acme", "beta"])
        self.assertIn("refused (403, csrf)", self.log_text())

    @defer.inlineCallbacks
    def test_a_set_password_link_works_once(self):
        yield self.store.add_user("new@acme.example", organizations=["acme"])
        token = passwords.new_token()
        yield self.store.add_user_token("new@acme.example", passwords.token_digest(token),
                                        "set_password", reactor.seconds() + 60)
        client = self.client()
        answer = yield client.get(f"/set-password?token={token}")
        self.assertEqual(answer.status, 200)
        self.assertIn("new@acme.example", answer.text)
        answer = yield client.post("/set-password", {"token": token, "password": "short",
                                                     "confirm": "short"})
        self.assertEqual(answer.status, 400)
        answer = yield client.post("/set-password", {"token": token, "password": PASSWORD,
                                                     "confirm": PASSWORD})
        self.assertEqual((answer.status, answer.location), (303, "/login"))
        answer = yield client.get(f"/set-password?token={token}")
        self.assertEqual(answer.status, 404)
        yield self.signed_in("new@acme.example")
        self.assertNotIn(token, self.log_text())


class TenancyTests(WebTestCase):

    @defer.inlineCallbacks
    def test_organizations_and_servers(self):
        ann = yield self.signed_in(ANN)
        answer = yield ann.get("/orgs")
        self.assertIn('href="/orgs/acme"', answer.text)
        self.assertNotIn('href="/orgs/beta"', answer.text)
        answer = yield ann.post("/orgs", {"permalink": "acme-two", "name": "Acme Two"})
        self.assertEqual(answer.location, "/orgs/acme-two")
        self.assertEqual((yield self.store.get_user(ANN)).organizations,
                         ("acme", "acme-two"))
        answer = yield ann.post("/orgs", {"permalink": "Not valid!"})
        answer = yield ann.get(answer.location)
        self.assertIn("A permalink is made of a-z, 0-9 and -.", answer.text)
        answer = yield ann.post("/orgs/acme-two/servers", {"permalink": "app", "name": "App",
                                                           "mode": "development"})
        self.assertEqual(answer.location, "/orgs/acme-two/servers/app/credentials")
        server = yield self.store.get_server("acme-two", "app")
        self.assertEqual((server.name, server.mode), ("App", "development"))
        # settings, as `mailgw server set`
        yield ann.get("/orgs/acme-two/servers/app")
        answer = yield ann.post("/orgs/acme-two/servers/app/settings", {
            "allow_sender_header": "on", "mode": "live", "send_limit": "500"})
        self.assertEqual(answer.status, 303)
        server = yield self.store.get_server("acme-two", "app")
        self.assertEqual((server.allow_sender_header, server.privacy_mode, server.mode,
                          server.send_limit), (True, False, "live", 500))
        answer = yield ann.post("/orgs/acme-two/servers/app/settings", {
            "privacy_mode": "on", "mode": "live", "send_limit": ""})
        server = yield self.store.get_server("acme-two", "app")
        self.assertEqual((server.allow_sender_header, server.privacy_mode,
                          server.send_limit), (False, True, None))
        answer = yield ann.post("/orgs/acme-two/servers/app/settings", {"send_limit": "-1"})
        self.assertIn("error", (yield ann.get(answer.location)).text)
        yield ann.post("/orgs/acme-two/servers/app/suspend")
        self.assertTrue((yield self.store.get_server("acme-two", "app")).suspended)
        yield ann.post("/orgs/acme-two/servers/app/unsuspend")
        self.assertFalse((yield self.store.get_server("acme-two", "app")).suspended)
        # suspending an organization is an admin's
        answer = yield ann.post("/orgs/acme-two/suspend")
        self.assertEqual(answer.status, 403)
        admin = yield self.signed_in(ADMIN)
        yield admin.get("/orgs/acme-two")
        answer = yield admin.post("/orgs/acme-two/suspend")
        self.assertEqual(answer.status, 303)
        self.assertTrue((yield self.store.list_organizations())[1].suspended)
        answer = yield admin.get("/orgs")
        self.assertIn('href="/orgs/beta"', answer.text)  # an admin sees every one

    @defer.inlineCallbacks
    def test_credentials(self):
        ann = yield self.signed_in(ANN)
        base = "/orgs/acme/servers/web/credentials"
        answer = yield ann.get(base)
        self.assertIn("No credentials yet.", answer.text)
        for part in ("<code>mx.example.test</code>", "Port 587", "STARTTLS", "Port 465",
                     "implicit TLS", "PLAIN, LOGIN, CRAM-MD5", ">acme/web<", ">acme_web<",
                     "POST http://mx.example.test:8025/api/v1/send/message"):
            self.assertIn(part, answer.text)
        answer = yield ann.post(base, {"type": "smtp", "name": "billing"})
        self.assertEqual(answer.location, base)
        answer = yield ann.post(base, {"type": "smtp-ip", "name": "office",
                                       "network": "192.0.2.7/24"})
        answer = yield ann.post(base, {"type": "api", "name": "app", "hold": "on"})
        smtp, ip, api = yield self.store.list_credentials(("acme", "web"))
        self.assertRegex(smtp.key, r"^[A-Za-z0-9]{24}$")
        self.assertEqual((ip.type, ip.key), ("smtp-ip", "192.0.2.0/24"))
        self.assertEqual((api.type, api.hold), ("api", True))
        answer = yield ann.get(base)
        self.assertIn("Added api credential app.", answer.text)
        for credential in (smtp, ip, api):
            self.assertIn(f'id="key-{credential.id}">{credential.key}</code>', answer.text)
        answer = yield ann.post(base, {"type": "smtp-ip", "network": "not a network"})
        self.assertIn("needs an IPv4 or IPv6 address", (yield ann.get(answer.location)).text)
        answer = yield ann.post(base, {"type": "root"})
        self.assertEqual(len((yield self.store.list_credentials(("acme", "web")))), 3)
        # hold and release, as `mailgw credential hold|release`
        yield ann.get(base)
        yield ann.post(f"{base}/{smtp.id}/hold")
        self.assertTrue((yield self.store.credential_by_id(smtp.id))[0].hold)
        yield ann.post(f"{base}/{smtp.id}/release")
        self.assertFalse((yield self.store.credential_by_id(smtp.id))[0].hold)
        # removal asks first
        answer = yield ann.get(f"{base}/{smtp.id}/remove")
        self.assertIn("Remove the smtp credential billing?", answer.text)
        answer = yield ann.post(f"{base}/{smtp.id}/remove")
        self.assertEqual(answer.location, base)
        self.assertEqual(len((yield self.store.list_credentials(("acme", "web")))), 2)
        for credential in (smtp, ip, api):
            self.assertNotIn(credential.key, self.log_text())

    @defer.inlineCallbacks
    def test_domains(self):
        ann = yield self.signed_in(ANN)
        base = "/orgs/acme/servers/web/domains"
        yield ann.get(base)
        answer = yield ann.post(base, {"name": "Acme.Example"})
        [domain] = yield self.store.list_domains(server=("acme", "web"))
        self.assertEqual(answer.location, f"{base}/{domain.id}")
        page = yield ann.get(answer.location)
        token = yield self.store.domain_verification_token(domain.id)
        [key] = yield self.store.dkim_keys(domain.id)
        self.assertIn(f"mailgw-verification {token}", page.text)
        self.assertIn(f"{key.selector}._domainkey.acme.example", page.text)
        # Check and Verify look the records up
        answer = yield ann.post(f"{base}/{domain.id}/check")
        self.assertEqual(answer.status, 200)
        self.assertIn("Missing", answer.text)
        # the result is kept, as `mailgw domain check` keeps it, and shown again
        page = yield ann.get(f"{base}/{domain.id}")
        self.assertIn("What DNS says", page.text)
        self.assertIn("DNS Missing", page.text)
        page = yield ann.get(base)
        self.assertIn(">Missing</span>", page.text)
        answer = yield ann.post(f"{base}/{domain.id}/verify")
        answer = yield ann.get(answer.location)
        self.assertIn("is not verified: publish the TXT record", answer.text)
        self.assertFalse((yield self.store.list_domains(server=("acme", "web")))[0].verified)
        # forcing is an admin's
        answer = yield ann.post(f"{base}/{domain.id}/verify", {"force": "1"})
        self.assertEqual(answer.status, 403)
        self.lookup.records["acme.example"] = [f"mailgw-verification {token}"]
        answer = yield ann.post(f"{base}/{domain.id}/verify")
        answer = yield ann.get(answer.location)
        self.assertIn("Domain acme.example is verified.", answer.text)
        self.assertTrue((yield self.store.list_domains(server=("acme", "web")))[0].verified)
        answer = yield ann.post(f"{base}/{domain.id}/remove")
        self.assertEqual((yield self.store.list_domains(server=("acme", "web"))), [])
        answer = yield ann.post(base, {"name": "not a domain"})
        self.assertIn("error", (yield ann.get(answer.location)).text)

    @defer.inlineCallbacks
    def test_an_admin_verifies_without_dns(self):
        domain = yield self.store.add_domain("acme.example", server=("acme", "web"))
        admin = yield self.signed_in(ADMIN)
        base = f"/orgs/acme/servers/web/domains/{domain.id}"
        page = yield admin.get(base)
        self.assertIn("Mark verified without DNS", page.text)
        answer = yield admin.post(base + "/verify", {"force": "1"})
        self.assertEqual(answer.status, 303)
        self.assertTrue((yield self.store.list_domains(server=("acme", "web")))[0].verified)

    @defer.inlineCallbacks
    def enqueue(self, server, rcpt, status="queued", subject="hi"):
        body = (f"From: a@acme.example\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n"
                "text\r\n").encode()
        token = f"T{len(self.tokens):011d}"
        self.tokens.append(token)
        yield self.store.enqueue(MessageEnvelope(
            token=token, server_id=server.id, credential_id=None, mail_from="a@acme.example",
            rcpt_to=(rcpt,), sender_domain="acme.example", protocol="SMTP", status=status,
            hold_reason="credential held" if status == "held" else None), io.BytesIO(body))
        return token

    @defer.inlineCallbacks
    def test_messages(self):
        self.tokens = []
        web = yield self.store.get_server("acme", "web")
        queued = yield self.enqueue(web, "one@dest.example")
        held = yield self.enqueue(web, "two@dest.example", "held", subject="held one")
        ann = yield self.signed_in(ANN)
        base = "/orgs/acme/servers/web/messages"
        page = yield ann.get(base)
        self.assertLess(page.text.index(held), page.text.index(queued))  # newest first
        self.assertIn("credential held", page.text)
        page = yield ann.get(f"{base}?q=two%40dest")
        self.assertIn(held, page.text)
        self.assertNotIn(queued, page.text)
        page = yield ann.get(f"{base}?q={queued.lower()}")
        self.assertIn(queued, page.text)
        self.assertNotIn(held, page.text)
        page = yield ann.get(f"{base}?status=held")
        self.assertIn(held, page.text)
        self.assertNotIn(queued, page.text)
        page = yield ann.get(f"{base}/{held}")
        self.assertIn("Subject: held one", page.text)
        self.assertIn("None yet.", page.text)
        answer = yield ann.post(f"{base}/{held}/release")
        self.assertEqual(answer.location, f"{base}/{held}")
        [entry] = yield self.store.message_entries(held)
        self.assertEqual(entry.status, "queued")
        answer = yield ann.post(f"{base}/{held}/release")  # nothing held any more
        self.assertIn("no held queue entry", (yield ann.get(answer.location)).text)
        answer = yield ann.post(f"{base}/{held}/retry")
        self.assertEqual(answer.status, 303)
        answer = yield ann.post(f"{base}/{queued}/remove")
        self.assertEqual(answer.location, base)
        self.assertEqual([e.token for e in (yield self.store.list_entries())], [held])


class UsersPageTests(WebTestCase):
    """An admin invites people without the command line."""

    @defer.inlineCallbacks
    def test_an_admin_adds_a_user_and_hands_over_a_link(self):
        admin = yield self.signed_in(ADMIN)
        page = yield admin.get("/users")
        self.assertIn('href="/users"', page.text)
        for email in (ADMIN, ANN, BOB):
            self.assertIn(f"<td>{email}</td>", page.text)
        body = yield admin.post("/users", {"email": "Cat@Acme.example", "organization": "acme"})
        self.assertEqual(body.status, 200)
        user = yield self.store.get_user("cat@acme.example")
        self.assertEqual((user.admin, user.organizations, user.has_password),
                         (False, ("acme",), False))
        link = re.search(r'id="invite-link">(http://127\.0\.0\.1:\d+/set-password\?token='
                         r'([A-Za-z0-9_-]{43}))</code>', body.text)
        self.assertIsNotNone(link, body.text)
        self.assertNotIn(link.group(2), self.log_text())
        newcomer = self.client()
        yield newcomer.get(link.group(1)[link.group(1).index("/set-password"):])
        answer = yield newcomer.post("/set-password", {"token": link.group(2),
                                                       "password": PASSWORD,
                                                       "confirm": PASSWORD})
        self.assertEqual(answer.location, "/login")
        cat = yield self.signed_in("cat@acme.example")
        page = yield cat.get("/orgs")
        self.assertIn('href="/orgs/acme"', page.text)
        # a new link for a forgotten password; the old sessions end once it is used
        yield admin.get("/users")
        body = yield admin.post(f"/users/{user.id}/link")
        self.assertIn("was given a new set-password link", body.text)
        # refusals
        answer = yield admin.post("/users", {"email": "cat@acme.example"})
        self.assertIn("already exists", (yield admin.get(answer.location)).text)
        answer = yield admin.post("/users", {"email": "not an address"})
        self.assertIn("not an e-mail address", (yield admin.get(answer.location)).text)
        answer = yield admin.post("/users", {"email": "x@y.example", "organization": "nope"})
        self.assertEqual(answer.status, 404)

    @defer.inlineCallbacks
    def test_only_admins_see_it(self):
        ann = yield self.signed_in(ANN)
        page = yield ann.get("/orgs")
        self.assertNotIn('href="/users"', page.text)
        self.assertEqual((yield ann.get("/users")).status, 404)
        for path in ("/users", "/users/1/link"):
            answer = yield ann.post(path, {"email": "evil@example.com", "admin": "on"})
            self.assertEqual(answer.status, 404, path)
        self.assertEqual(len((yield self.store.list_users())), 3)


class IsolationTests(WebTestCase):
    """Bob (of beta) reaches nothing of acme's, whatever the URL names."""

    @defer.inlineCallbacks
    def test_another_organizations_pages_are_not_found(self):
        web = yield self.store.get_server("acme", "web")
        credential = yield self.store.add_credential(("acme", "web"), "smtp", "K" * 24)
        domain = yield self.store.add_domain("acme.example", server=("acme", "web"))
        self.tokens = []
        token = yield TenancyTests.enqueue(self, web, "x@dest.example")
        # beta's own objects, for URLs that mix beta's path with acme's ids
        yield self.store.add_credential(("beta", "mail"), "smtp", "B" * 24)
        bob = yield self.signed_in(BOB)
        page = yield bob.get("/orgs")
        self.assertNotIn('"/orgs/acme"', page.text)
        self.assertNotIn(">Acme<", page.text)
        acme = "/orgs/acme/servers/web"
        beta = "/orgs/beta/servers/mail"
        for path in ("/orgs/acme", acme, f"{acme}/credentials", f"{acme}/domains",
                     f"{acme}/domains/{domain.id}", f"{acme}/messages",
                     f"{acme}/messages/{token}", f"{acme}/credentials/{credential.id}/remove",
                     f"{beta}/domains/{domain.id}", f"{beta}/messages/{token}",
                     f"{beta}/credentials/{credential.id}/remove"):
            answer = yield bob.get(path)
            self.assertEqual(answer.status, 404, path)
            self.assertNotIn("K" * 24, answer.text)
        yield bob.get(f"{beta}/credentials")
        for path in (f"{acme}/credentials/{credential.id}/hold",
                     f"{beta}/credentials/{credential.id}/hold",
                     f"{beta}/credentials/{credential.id}/remove",
                     f"{beta}/domains/{domain.id}/remove", f"{beta}/messages/{token}/remove",
                     f"{acme}/settings", f"{acme}/suspend", "/orgs/acme/servers"):
            answer = yield bob.post(path, {"permalink": "x", "mode": "live"})
            self.assertEqual(answer.status, 404, path)
        self.assertFalse((yield self.store.credential_by_id(credential.id))[0].hold)
        self.assertEqual(len((yield self.store.list_domains(server=("acme", "web")))), 1)
        self.assertEqual(len((yield self.store.list_entries())), 1)
        self.assertEqual((yield self.store.list_servers("acme"))[0].suspended, False)
        self.assertEqual(len((yield self.store.list_servers("acme"))), 1)
        page = yield bob.get(f"{beta}/credentials")
        self.assertIn("B" * 24, page.text)
        self.assertNotIn("K" * 24, page.text)


class HTTPSTests(WebTestCase):
    """C{[web] tls = true}: HTTPS with the gateway's certificate, and the
    session cookie only ever sent back over it."""

    @defer.inlineCallbacks
    def test_served_over_tls_with_secure_cookies(self):
        import dataclasses
        import os
        import ssl

        from mailgw.admin.devsetup import make_certificate
        from mailgw.config import TLSConfig
        from mailgw.tls import TLSOptions
        from mailgw.web.ui.site import web_listener_service
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        certificate, key = make_certificate("localhost")
        paths = [os.path.join(folder, name) for name in ("cert.pem", "key.pem")]
        for path, data in zip(paths, (certificate, key)):
            with open(path, "wb") as f:
                f.write(data)
        tls = TLSConfig(certificate=paths[0], private_key=paths[1])
        config = dataclasses.replace(self.config, tls=tls, web=WebConfig(
            endpoint="tcp:0:interface=127.0.0.1", tls=True))
        site = build_web_site(self.store, self.guard, config, reactor)
        service = web_listener_service(site, config, TLSOptions.from_config(tls), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIn("(https: true)", self.log_text())
        client = UIClient(service.port.getHost().port,
                          context=ssl.create_default_context(cadata=certificate.decode()))
        yield client.get("/login")
        answer = yield client.post("/login", {"email": ANN, "password": PASSWORD})
        self.assertEqual(answer.status, 303)
        [cookie] = [c for c in answer.cookies() if c.startswith(SESSION + "=")]
        self.assertTrue(cookie.endswith("; Secure"), cookie)
        page = yield client.get("/orgs")
        self.assertIn('href="/orgs/acme"', page.text)
        self.assertRaises(ValueError, web_listener_service, site, config, None, reactor)


class SettingsTests(unittest.TestCase):

    def test_cookies_are_secure_under_tls(self):
        header = sessions.cookie_header(b"mailgw_session", "abc", secure=True, max_age=60)
        self.assertEqual(header, b"mailgw_session=abc; Path=/; HttpOnly; SameSite=Strict; "
                                 b"Max-Age=60; Secure")
        from mailgw.web.ui.pages import web_settings
        config = Config(hostname="mx.example.test", web=WebConfig(tls=True,
                                                                  smtp_host="smtp.example"))
        settings = web_settings(config)
        self.assertTrue(settings.secure)
        self.assertEqual(settings.smtp_host, "smtp.example")

    def test_passwords_are_argon2id_hashes(self):
        hashed = passwords.hash_password_now(PASSWORD)
        self.assertTrue(hashed.startswith("$argon2id$"))
        self.assertTrue(passwords._verify(hashed, PASSWORD))
        self.assertFalse(passwords._verify(hashed, PASSWORD + "x"))
        self.assertFalse(passwords._verify(None, PASSWORD))
        self.assertFalse(passwords._verify("not a hash", PASSWORD))
        self.assertIsNotNone(passwords.password_problem("short"))
        self.assertIsNone(passwords.password_problem(PASSWORD))
        self.assertTrue(re.fullmatch(r"[A-Za-z0-9_-]{43}", passwords.new_token()))
