"""The web interface's resource: routing, sign-in, CSRF checks, security
headers and the rendering of L{mailgw.web.ui.pages}' answers with Jinja2
(docs/web.md).

Every request gets the same headers: a C{Content-Security-Policy} that
allows scripts and styles from this site only (no inline script), framing
by nobody, C{Referrer-Policy: no-referrer} (a set-password link's token
never leaves in a Referer) and C{Cache-Control: no-store} (pages show keys).
Every POST must carry the CSRF token of its session (or, before sign-in,
of the pre-session cookie): without it the answer is 403 and nothing runs.
Every refusal is a page with its status, a log line with the reason and a
count in C{mailgw_web_refusals{reason}}.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import quote, unquote, urlencode

import jinja2
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from mailgw.interfaces import Conflict, NotFound, StoreUnavailable
from mailgw.auth import passwords
from mailgw.model import generate_token
from mailgw.web.ui import sessions

log = Logger()

SECURITY_HEADERS = {
    b"Content-Security-Policy": (b"default-src 'none'; script-src 'self'; style-src 'self'; "
                                 b"img-src 'self'; form-action 'self'; base-uri 'none'; "
                                 b"frame-ancestors 'none'"),
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"X-Content-Type-Options": b"nosniff",
    b"Cache-Control": b"no-store",
}
NOTICE_COOKIE = b"mailgw_notice"
STATIC_TYPES = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
                ".png": b"image/png"}
_SEGMENT = {"": r"[a-z0-9-]+", "int": r"[0-9]{1,18}", "token": r"[A-Za-z0-9]{1,64}"}


@dataclass(frozen=True)
class Page:
    """A page to render: a template of C{templates/} and its values."""
    template: str
    context: dict = field(default_factory=dict)
    status: int = 200


@dataclass(frozen=True)
class Redirect:
    """A 303 to C{location} (after a change), with a notice for the next page."""
    location: str
    notice: str | None = None
    error: bool = False


class Refused(Exception):
    """A request refused with an HTTP status, a page for the user and a
    reason for the log and the metric."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass
class Visit:
    """One request as the pages see it.

    @ivar user: the signed-in L{mailgw.model.User}, or None.
    @ivar csrf: the token this visit's forms carry (the session's, or the
        pre-session cookie's).
    @ivar params: the route's path parameters.
    @ivar form: the POST body's (or the query's) fields, decoded.
    """
    request: object
    ip: str
    trace: str
    user: object = None
    csrf: str = ""
    session_digest: str | None = None
    params: dict = field(default_factory=dict)
    form: dict = field(default_factory=dict)
    set_cookies: list = field(default_factory=list)
    #: not empty once the client has gone (nothing is written then)
    gone: list = field(default_factory=list)

    def field(self, name: str, default: str = "") -> str:
        return self.form.get(name, default).strip()


@dataclass(frozen=True)
class Route:
    """C{method} and a path pattern (C{{name}}: a permalink, C{{name:int}},
    C{{name:token}}) to a handler C{async (web, visit) -> Page | Redirect}."""
    method: bytes
    pattern: re.Pattern
    handler: object
    login: bool = True


def route(method: str, path: str, handler, login: bool = True) -> Route:
    def segment(m):
        return f"(?P<{m.group(1)}>{_SEGMENT[m.group(2) or '']})"
    regex = re.sub(r"\{(\w+)(?::(\w+))?\}", segment, re.escape(path).replace(r"\{", "{")
                   .replace(r"\}", "}"))
    return Route(method.encode("ascii"), re.compile(regex + r"\Z"), handler, login)


def templates() -> jinja2.Environment:
    """The package's templates, HTML-escaped by default."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("mailgw.web.ui", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["time"] = _time
    return env


def _time(ts) -> str:
    if ts is None:
        return "never"
    from datetime import UTC, datetime
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def static_files() -> dict[str, bytes]:
    """The stylesheet and script, read once (before twistd drops privileges)."""
    folder = resources.files("mailgw.web.ui") / "static"
    return {item.name: item.read_bytes() for item in folder.iterdir()
            if any(item.name.endswith(ext) for ext in STATIC_TYPES)}


class WebInterface(Resource):
    """The root of the web interface's site: every path, any method.

    @ivar ready: False until the gateway's store is open (503 until then).
    """

    isLeaf = True
    ready = True

    def __init__(self, store, guard, settings, clock, routes, metrics=None, lookup=None,
                 after_change=None):
        """
        @param store: the L{mailgw.interfaces.IStore} (the same one SMTP and
            the HTTP API read, so every change applies to both at once).
        @param guard: the L{mailgw.auth.guard.AuthenticationGuard} SMTP AUTH
            and the HTTP API count failures with; failed sign-ins count there.
        @param settings: the L{mailgw.web.ui.pages.WebSettings}.
        @param routes: the L{Route}s, tried in order.
        @param lookup: the L{mailgw.domains.lookup.DomainLookup} of the
            domain pages' checks, or None.
        @param after_change: called after each change a signed-in user
            makes (the gateway's L{mailgw.store.cache.CachingDirectory.forget},
            so that SMTP and the HTTP API see it at once), or None.
        """
        self.after_change = after_change
        super().__init__()
        self.store = store
        self.guard = guard
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.lookup = lookup
        self.routes = routes
        self.env = templates()
        self.static = static_files()

    def render(self, request):
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        # a client that goes away before its answer is not written to
        gone = []
        request.notifyFinish().addErrback(gone.append)
        d = defer.ensureDeferred(self._answer(request, gone))
        d.addErrback(self._crashed, request, gone)
        return server.NOT_DONE_YET

    def _crashed(self, failure, request, gone):
        log.failure("web: internal error on {path}", failure,
                    path=request.path.decode("latin-1"))
        if gone:
            return
        self._finish(request, 500, self.env.get_template("error.html").render(
            title="Internal error", message="Something went wrong; the log says what.",
            user=None, csrf="", notice=None))

    async def _answer(self, request, gone):
        path = request.path.decode("latin-1")
        if path.startswith("/static/") and request.method in (b"GET", b"HEAD"):
            return self._static(request, path[len("/static/"):])
        visit = Visit(request, _client_ip(request), generate_token(8), gone=gone)
        try:
            if not self.ready:
                raise Refused(503, "not_ready", "The gateway is starting; try again shortly.")
            found = self._match(request.method, path)
            await self._identify(visit)
            if found is None:
                raise Refused(404, "not_found", "There is no such page.")
            chosen, params = found
            visit.params = params
            visit.form = _form(request)
            if request.method == b"POST":
                self._check_csrf(visit)
            if chosen.login and visit.user is None:
                target = "/login?" + urlencode({"next": path})
                return self._send(visit, Redirect(target))
            answer = await chosen.handler(self, visit)
            if request.method == b"POST" and chosen.login and self.after_change is not None:
                self.after_change()
        except Refused as refused:
            answer = self._refusal(visit, refused)
        except NotFound:
            answer = self._refusal(visit, Refused(404, "not_found", "There is no such page."))
        except Conflict as e:
            answer = self._refusal(visit, Refused(409, "conflict", conflict_text(e)))
        except StoreUnavailable as e:
            log.error("[{trace}] web: store unavailable: {why}", trace=visit.trace, why=str(e))
            answer = self._refusal(visit, Refused(
                503, "store", "The database did not answer; try again shortly."))
        self._send(visit, answer)

    def _match(self, method: bytes, path: str):
        """@return: C{(route, params)}, or None for an unknown path; a known
        path with another method is refused with 405."""
        known = False
        for candidate in self.routes:
            m = candidate.pattern.match(path)
            if m is None:
                continue
            known = True
            if candidate.method == method or (method == b"HEAD" and candidate.method == b"GET"):
                return candidate, m.groupdict()
        if known:
            raise Refused(405, "method", "That page is not used that way.")
        return None

    async def _identify(self, visit: Visit) -> None:
        """The session of the cookie, if any; else the pre-session token."""
        request = visit.request
        token = request.getCookie(sessions.SESSION_COOKIE)
        if token:
            digest = passwords.token_digest(token.decode("latin-1"))
            try:
                found = await self.store.user_token(digest, "session")
            except NotFound:
                # expired or signed out elsewhere: the cookie goes
                visit.set_cookies.append(self.cookie(sessions.SESSION_COOKIE, "", 0))
            else:
                visit.user, visit.csrf = found.user, found.csrf_token
                visit.session_digest = digest
                return
        pre = request.getCookie(sessions.LOGIN_CSRF_COOKIE)
        if pre and re.fullmatch(rb"[A-Za-z0-9_-]{43}", pre):
            visit.csrf = pre.decode("ascii")
        else:
            visit.csrf = passwords.new_token()
            visit.set_cookies.append(self.cookie(sessions.LOGIN_CSRF_COOKIE, visit.csrf, None))

    def _check_csrf(self, visit: Visit) -> None:
        given = visit.request.args.get(sessions.CSRF_FIELD, [b""])[0]
        if not sessions.same_token(given, visit.csrf):
            raise Refused(403, "csrf", "This form has expired or did not come from this "
                                       "site. Go back, reload the page and try again.")

    def cookie(self, name: bytes, value: str, max_age: int | None) -> bytes:
        return sessions.cookie_header(name, value, secure=self.settings.secure,
                                      max_age=max_age)

    def _refusal(self, visit: Visit, refused: Refused) -> Page:
        request = visit.request
        log.info("[{trace}] web: {method} {path} from {ip} refused ({status}, {reason}) "
                 "for {user}", trace=visit.trace, method=request.method.decode("latin-1"),
                 path=request.path.decode("latin-1"), ip=visit.ip, status=refused.status,
                 reason=refused.reason, user=visit.user.email if visit.user else "-")
        if self.metrics is not None:
            self.metrics.web_refusals.labels(refused.reason).inc()
        return Page("error.html", {"title": _TITLES.get(refused.status, "Refused"),
                                   "message": refused.message}, refused.status)

    def _send(self, visit: Visit, answer) -> None:
        request = visit.request
        if visit.gone:
            return
        for value in visit.set_cookies:
            request.responseHeaders.addRawHeader(b"Set-Cookie", value)
        if isinstance(answer, Redirect):
            if answer.notice:
                text = ("error:" if answer.error else "ok:") + answer.notice
                request.responseHeaders.addRawHeader(b"Set-Cookie", self.cookie(
                    NOTICE_COOKIE, quote(text[:300], safe=""), 60))
            request.setResponseCode(303)
            request.setHeader(b"Location", answer.location.encode("utf-8"))
            request.finish()
            return
        notice = None
        raw = request.getCookie(NOTICE_COOKIE)
        if raw:
            kind, _, text = unquote(raw.decode("latin-1")).partition(":")
            notice = {"error": kind == "error", "text": text}
            request.responseHeaders.addRawHeader(b"Set-Cookie",
                                                 self.cookie(NOTICE_COOKIE, "", 0))
        context = dict(answer.context, user=visit.user, csrf=visit.csrf, notice=notice,
                       path=request.path.decode("latin-1"))
        server_ = context.get("server")
        if server_ is not None:
            context["base"] = (f"/orgs/{server_.organization_permalink}/servers/"
                               f"{server_.permalink}")
        body = self.env.get_template(answer.template).render(**context)
        self._finish(request, answer.status, body)

    @staticmethod
    def _finish(request, status: int, body: str) -> None:
        data = body.encode("utf-8")
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Content-Length", b"%d" % len(data))
        if request.method != b"HEAD":
            request.write(data)
        request.finish()

    def _static(self, request, name: str) -> None:
        data = self.static.get(name)
        if data is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.write(b"not found\n")
            request.finish()
            return
        ext = name[name.rfind("."):]
        request.setHeader(b"Content-Type", STATIC_TYPES[ext])
        request.setHeader(b"Cache-Control", b"max-age=3600")
        request.setHeader(b"Content-Length", b"%d" % len(data))
        if request.method != b"HEAD":
            request.write(data)
        request.finish()


_TITLES = {409: "Not possible", 403: "Forbidden", 404: "Not found", 405: "Not allowed", 429: "Too many attempts",
           503: "Unavailable", 400: "Bad request"}


def _client_ip(request) -> str:
    return getattr(request.getClientAddress(), "host", None) or ""


def _form(request) -> dict:
    """The request's fields (a POST's body, else its query) as text; the
    first value of each."""
    out = {}
    for key, values in (request.args or {}).items():
        try:
            out[key.decode("utf-8")] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(400, "encoding", "The form was not sent as UTF-8.") from None
    return out


def conflict_text(error: Exception) -> str:
    """A store refusal as a sentence for the user."""
    text = str(error) or "That change is not possible."
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


__all__ = ["Conflict", "Page", "Redirect", "Refused", "Route", "Visit", "WebInterface",
           "conflict_text", "route"]
