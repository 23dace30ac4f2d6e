"""Sign-in for the web interface: password hashes, session cookies and CSRF
tokens (docs/web.md, "Security model").

  - Passwords are hashed with Argon2id (C{argon2-cffi}'s defaults, RFC 9106)
    on a worker thread: one hash takes tens of milliseconds, too long for
    the reactor thread.
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
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from mailgw.store.base import key_digest

SESSION_COOKIE = b"mailgw_session"
#: the double-submit token of the forms shown before sign-in
LOGIN_CSRF_COOKIE = b"mailgw_login_csrf"
#: the name of every form's CSRF field
CSRF_FIELD = b"csrf_token"
#: the shortest password accepted (NIST SP 800-63B section 5.1.1.2)
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024

_hasher = PasswordHasher()
#: verified against when the address has no user, so that a wrong address
#: takes as long as a wrong password
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def new_token() -> str:
    """A session, link or CSRF token: 256 bits from the CSPRNG."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the store knows a token by."""
    return key_digest(token)


def same_token(given, expected: str) -> bool:
    """Constant-time comparison of a submitted token (bytes or str) with
    the expected one; an empty expected token matches nothing."""
    if not expected or not given:
        return False
    if isinstance(given, str):
        given = given.encode("utf-8", "replace")
    return hmac.compare_digest(given, expected.encode("ascii"))


def password_problem(password: str) -> str | None:
    """Why C{password} cannot be used, or C{None}."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"A password needs at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"A password may have at most {MAX_PASSWORD_LENGTH} characters."
    return None


def hash_password_now(password: str) -> str:
    """The Argon2id hash of C{password}, on this thread (the command line)."""
    return _hasher.hash(password)


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def _in_thread(reactor, fn, *args):
    pool = getattr(reactor, "getThreadPool", None)
    if pool is None:  # a test's clock: run here
        return defer.maybeDeferred(fn, *args)
    return deferToThreadPool(reactor, pool(), fn, *args)


def hash_password(reactor, password: str):
    """@return: Deferred firing with the Argon2id hash of C{password},
    computed on the reactor's thread pool."""
    return _in_thread(reactor, hash_password_now, password)


def verify_password(reactor, password_hash: str | None, password: str):
    """@param password_hash: the user's hash, or C{None} (no user, or no
        password yet): then a dummy hash is verified, taking as long, and
        the answer is False.
    @return: Deferred firing with whether C{password} matches."""
    return _in_thread(reactor, _verify, password_hash, password)


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
