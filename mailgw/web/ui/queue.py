"""A server's messages in the web interface: the recent queue, searched by
queue id, address or status; one message's entries, attempts and header
section; release, retry and remove (as `mailgw queue`), docs/web.md.
"""
from __future__ import annotations

import re

from mailgw.interfaces import NotFound
from mailgw.model import QUEUE_STATUSES
from mailgw.web.messages import header_section
from mailgw.web.ui.app import Page, Redirect, conflict_text
from mailgw.web.ui.pages import base_path, changed, server_of

#: messages shown on a server's queue page
RECENT_MESSAGES = 200
_QUEUE_ID = re.compile(r"[A-Za-z0-9]{12}\Z")

async def messages(web, visit):
    org, srv = await server_of(web, visit)
    query, status = visit.field("q"), visit.field("status")
    if status not in QUEUE_STATUSES:
        status = ""
    if _QUEUE_ID.match(query):
        try:
            found = await web.store.message_for_server(srv.id, query.upper())
            entries = list(found.entries)
        except NotFound:
            entries = []
    else:
        entries = await web.store.list_entries(status=status or None, server=srv.full_name,
                                               limit=None if query else RECENT_MESSAGES,
                                               newest_first=True)
        if query:
            wanted = query.lower()
            entries = [e for e in entries
                       if wanted in e.mail_from.lower() or wanted in e.rcpt_to.lower()]
            entries = entries[:RECENT_MESSAGES]
    if status:
        entries = [e for e in entries if e.status == status]
    return Page("messages.html", {"org": org, "server": srv, "tab": "messages",
                                  "entries": entries, "query": query, "status": status,
                                  "statuses": QUEUE_STATUSES})


async def _message(web, visit):
    org, srv = await server_of(web, visit)
    return srv, await web.store.message_for_server(srv.id, visit.params["token"].upper())


async def message(web, visit):
    srv, found = await _message(web, visit)
    message_id = found.entries[0].message_id
    data, seq = b"", 0
    while b"\r\n\r\n" not in data and seq < 64:
        chunk = await web.store.read_body_chunk(message_id, seq)
        if not chunk:
            break
        data, seq = data + chunk, seq + 1
    headers = header_section(data).decode("utf-8", "replace").replace("\r\n", "\n")
    return Page("message.html", {"org": None, "server": srv, "tab": "messages",
                                 "entries": found.entries, "attempts": found.attempts,
                                 "token": found.entries[0].token, "headers": headers})


_MESSAGE_ACTIONS = {"release": "release_message", "retry": "retry_message",
                    "remove": "remove_message"}


async def message_action(web, visit, action: str):
    srv, found = await _message(web, visit)
    token = found.entries[0].token
    back = f"{base_path(srv)}/messages/{token}"
    try:
        done = await getattr(web.store, _MESSAGE_ACTIONS[action])(token)
    except NotFound:
        raise
    except ValueError as e:  # Conflict: nothing to release or retry
        return Redirect(back, conflict_text(e), error=True)
    changed(visit, f"{action}d message {token} of {srv.full_name} ({len(done)} entries)")
    if action == "remove":
        return Redirect(base_path(srv) + "/messages", f"Message {token} removed.")
    return Redirect(back, f"Message {token}: {len(done)} entries {action}d.")
