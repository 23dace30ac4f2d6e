"""The store's operations on the web interface's users, their
organizations, sessions and set-password links (docs/web.md), written once
for every engine as L{mailgw.store.base} writes the others: generators of
L{Q} statements, each run as one transaction.

Tokens are never stored: only the SHA-256 digest of each (see
L{mailgw.store.base.key_digest}), so a copy of the database opens no session.
"""
from __future__ import annotations

from mailgw.interfaces import Conflict, NotFound
from mailgw.model import User, UserToken
from mailgw.store.base import Q

TOKEN_PURPOSES = ("session", "set_password")

_USER_SELECT = "SELECT u.id, u.email, u.admin, u.password_hash FROM users u"


def _memberships(user_ids):
    """@return: user id -> the permalinks of its organizations, sorted."""
    if not user_ids:
        return {}
    marks = ", ".join("?" for _ in user_ids)
    rows = yield Q("SELECT m.user_id, o.permalink FROM user_organizations m "
                   "JOIN organizations o ON o.id = m.organization_id "
                   f"WHERE m.user_id IN ({marks}) ORDER BY o.permalink", tuple(user_ids))
    found = {i: [] for i in user_ids}
    for user_id, permalink in rows:
        found[user_id].append(permalink)
    return found


def _users(rows):
    orgs = yield from _memberships([r[0] for r in rows])
    return [User(id=r[0], email=r[1], admin=bool(r[2]), organizations=tuple(orgs[r[0]]),
                 password_hash=r[3]) for r in rows]


def _require_user(ref):
    """The user with id C{ref} (an int) or e-mail address C{ref} (a str)."""
    if isinstance(ref, int):
        rows = yield Q(_USER_SELECT + " WHERE u.id = ?", (ref,))
    else:
        rows = yield Q(_USER_SELECT + " WHERE u.email = ?", (ref.lower(),))
    if not rows:
        raise NotFound(f"no user {ref}")
    return (yield from _users(rows))[0]


def _organization_id(permalink):
    rows = yield Q("SELECT id FROM organizations WHERE permalink = ?", (permalink,))
    if not rows:
        raise NotFound(f"no organization {permalink}")
    return rows[0][0]


def add_user(email, admin, organizations, now):
    email = email.lower()
    rows = yield Q("SELECT 1 FROM users WHERE email = ?", (email,))
    if rows:
        raise Conflict(f"user {email} already exists")
    org_ids = []
    for permalink in organizations:
        org_ids.append((yield from _organization_id(permalink)))
    rows = yield Q("INSERT INTO users (email, admin, created_at) VALUES (?, ?, ?) "
                   "RETURNING id", (email, bool(admin), now))
    user_id = rows[0][0]
    for org_id in sorted(set(org_ids)):
        yield Q("INSERT INTO user_organizations (user_id, organization_id) VALUES (?, ?)",
                (user_id, org_id))
    return (yield from _require_user(user_id))


def list_users():
    rows = yield Q(_USER_SELECT + " ORDER BY u.email")
    return (yield from _users(rows))


def get_user(ref):
    return (yield from _require_user(ref))


def remove_user(ref):
    user = yield from _require_user(ref)
    yield Q("DELETE FROM users WHERE id = ?", (user.id,))


def grant_organization(ref, permalink):
    user = yield from _require_user(ref)
    org_id = yield from _organization_id(permalink)
    yield Q("INSERT INTO user_organizations (user_id, organization_id) VALUES (?, ?) "
            "ON CONFLICT DO NOTHING", (user.id, org_id))
    return (yield from _require_user(user.id))


def set_password(ref, password_hash):
    """A new password ends every session and link of the user."""
    user = yield from _require_user(ref)
    yield Q("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user.id))
    yield Q("DELETE FROM user_tokens WHERE user_id = ?", (user.id,))
    return (yield from _require_user(user.id))


def add_token(ref, digest, purpose, csrf_token, expires_at, now):
    if purpose not in TOKEN_PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    user = yield from _require_user(ref)
    # expired tokens of anyone go as new ones come, using the index
    yield Q("DELETE FROM user_tokens WHERE expires_at <= ?", (now,))
    yield Q("INSERT INTO user_tokens (digest, user_id, purpose, csrf_token, created_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
            (digest, user.id, purpose, csrf_token, now, float(expires_at)))
    return user


def token_user(digest, purpose, now):
    rows = yield Q("SELECT user_id, expires_at, csrf_token FROM user_tokens "
                   "WHERE digest = ? AND purpose = ? AND expires_at > ?",
                   (digest, purpose, now))
    if not rows:
        raise NotFound(f"no {purpose} token (or it has expired)")
    user = yield from _require_user(rows[0][0])
    return UserToken(user=user, purpose=purpose, expires_at=rows[0][1],
                     csrf_token=rows[0][2])


def remove_token(digest):
    yield Q("DELETE FROM user_tokens WHERE digest = ?", (digest,))


def set_password_with_token(digest, password_hash, now):
    """Use a set-password link once: the password is set, the link (and every
    session of the user) is gone."""
    found = yield from token_user(digest, "set_password", now)
    return (yield from set_password(found.user.id, password_hash))

