"""The web interface's session cookies and CSRF tokens (docs/web.md,
"Security model"); passwords and tokens are L{mailgw.auth.passwords}'.

  - A session is a random token in a cookie (C{HttpOnly}, C{SameSite=Strict},
    C{Secure} under TLS, C{Max-Age} the session's lifetime); the store keeps
    only its SHA-256 digest. Each sign-in makes a new token (no fixation).
  - Every form of a session carries the session's CSRF token; the forms of a
    visitor who is not signed in (sign-in, set password) carry the value of
    a separate pre-session cookie (a double-submit token). Both are compared
    in constant time.
"""
from __future__ import annotations

import hmac

SESSION_COOKIE = b"mailgw_session"
#: the double-submit token of the forms shown before sign-in
LOGIN_CSRF_COOKIE = b"mailgw_login_csrf"
#: the name of every form's CSRF field
CSRF_FIELD = b"csrf_token"


def same_token(given, expected: str) -> bool:
    """Constant-time comparison of a submitted token (bytes or str) with
    the expected one; an empty expected token matches nothing."""
    if not expected or not given:
        return False
    if isinstance(given, str):
        given = given.encode("utf-8", "replace")
    return hmac.compare_digest(given, expected.encode("ascii"))


def cookie_header(name: bytes, value: str, *, secure: bool, max_age: int | None,
                  same_site: str = "Strict") -> bytes:
    """A C{Set-Cookie} value (RFC 6265 section 4.1) for the whole site;
    C{max_age} 0 deletes the cookie, C{None} makes it last the browser
    session."""
    parts = [name + b"=" + value.encode("ascii"), b"Path=/", b"HttpOnly",
             b"SameSite=" + same_site.encode("ascii")]
    if max_age is not None:
        parts.append(b"Max-Age=%d" % max_age)
    if secure:
        parts.append(b"Secure")
    return b"; ".join(parts)
