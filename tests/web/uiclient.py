"""A small HTTP client for the web interface's tests: real requests over a
real socket (http.client on a worker thread), cookies kept as a browser
keeps them, redirects not followed (the tests look at each 303)."""
from __future__ import annotations

import html
import http.client
import re
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import urlencode

from twisted.internet.threads import deferToThread

CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


@dataclass
class Answer:
    """One response: status, headers (a C{http.client.HTTPMessage}), text."""
    status: int
    headers: object
    text: str

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")

    def cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []

    def csrf(self) -> str:
        m = CSRF.search(self.text)
        assert m, "no form with a CSRF token on the page:\n" + self.text[:2000]
        return html.unescape(m.group(1))


class UIClient:
    """One browser: its cookies, and the CSRF token of the last page seen."""

    def __init__(self, port: int, host: str = "127.0.0.1", context=None):
        """@param context: an C{ssl.SSLContext}: HTTPS with it."""
        self.port = port
        self.host = host
        self.context = context
        self.cookies: dict[str, str] = {}
        self.token = ""

    def _request(self, method: str, path: str, body: bytes | None, headers: dict) -> Answer:
        if self.context is not None:
            connection = http.client.HTTPSConnection(self.host, self.port, timeout=30,
                                                     context=self.context)
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = dict(headers, Connection="close")
        try:
            if self.cookies:
                headers = dict(headers, Cookie="; ".join(f"{k}={v}" for k, v in
                                                         self.cookies.items()))
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            answer = Answer(response.status, response.headers,
                            response.read().decode("utf-8", "replace"))
        finally:
            connection.close()
        for header in answer.cookies():
            cookie = SimpleCookie()
            cookie.load(header)
            for name, morsel in cookie.items():
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        if "csrf_token" in answer.text:
            self.token = answer.csrf()
        return answer

    def get(self, path: str):
        """@return: Deferred firing with the L{Answer}."""
        return deferToThread(self._request, "GET", path, None, {})

    def post(self, path: str, fields: dict | None = None, csrf: bool = True):
        """POST C{fields} as a form, with the CSRF token of the last page
        seen unless C{csrf} is False (or a token is among C{fields})."""
        fields = dict(fields or {})
        if csrf and "csrf_token" not in fields:
            fields["csrf_token"] = self.token
        body = urlencode(fields).encode("ascii")
        return deferToThread(self._request, "POST", path, body,
                             {"Content-Type": "application/x-www-form-urlencoded"})
