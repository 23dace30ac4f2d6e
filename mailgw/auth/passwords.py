"""Passwords of the web interface's users and the random tokens of their
sessions and set-password links (docs/web.md).

Passwords are hashed with Argon2id (C{argon2-cffi}'s defaults, RFC 9106), on
the reactor's thread pool in the gateway (a hash takes tens of
milliseconds). Tokens are 256 bits from the CSPRNG; the store keeps only
their SHA-256 digest.
"""
from __future__ import annotations

import functools
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool


#: the shortest password accepted (NIST SP 800-63B section 5.1.1.2)
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the address has no user, so that a wrong
    address takes as long as a wrong password (made once, when first needed)."""
    return _hasher.hash(secrets.token_urlsafe(16))


def new_token() -> str:
    """A session, link or CSRF token: 256 bits from the CSPRNG."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the store knows a token by: its SHA-256, in hex (as credential
    keys are looked up, L{mailgw.store.base.key_digest})."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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
        return _hasher.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
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
