"""The ``mailgw webhook`` verbs (docs/webhooks.md): a server's webhooks, the
outbox's deliveries, and the public key receivers verify signatures with.

A webhook's URL is checked before the store is opened: its form, then its
host, resolved now, against the private address rule (C{[webhooks]
allow_private_addresses}); the gateway checks it again at every request.
"""
from __future__ import annotations

from mailgw.admin.output import Output, cell, fields, iso8601, printable, table
from mailgw.webhooks.addresses import RefusedURL, Unresolvable, check_now, parse_url
from mailgw.webhooks.payloads import EVENTS
from mailgw.webhooks.signing import RequestSigner

WEBHOOK_COLUMNS = [("ID", "id"), ("SERVER", "server"), ("URL", "url"),
                   ("EVENTS", "events_text"), ("ENABLED", "enabled")]
REQUEST_COLUMNS = [("ID", "id"), ("CREATED", "created_at"), ("EVENT", "event"),
                   ("WEBHOOK", "webhook_id"), ("STATUS", "status"), ("ATTEMPTS", "attempts"),
                   ("LAST ANSWER", "last_answer")]
REQUEST_STATUSES = ("pending", "delivered", "failed")


def webhook_json(webhook) -> dict:
    return {"id": webhook.id, "uuid": webhook.uuid, "server": webhook.server,
            "name": webhook.name, "url": webhook.url, "all_events": webhook.all_events,
            "events": list(EVENTS if webhook.all_events else webhook.events),
            "enabled": webhook.enabled, "created_at": iso8601(webhook.created_at),
            "last_used_at": iso8601(webhook.last_used_at)}


def attempt_json(attempt) -> dict:
    return {"attempted_at": iso8601(attempt.attempted_at), "node": attempt.node,
            "status_code": attempt.status_code, "error": attempt.error,
            "will_retry": attempt.will_retry}


def request_json(request, attempts) -> dict:
    return {"id": request.id, "uuid": request.uuid, "webhook_id": request.webhook_id,
            "server": request.server, "event": request.event, "url": request.url,
            "status": request.status, "attempts": request.attempts,
            "next_attempt_at": iso8601(request.next_attempt_at)
            if request.status == "pending" else None,
            "last_error": request.last_error, "created_at": iso8601(request.created_at),
            "delivery_attempts": [attempt_json(a) for a in attempts]}


def _answer(attempts) -> str:
    if not attempts:
        return "-"
    last = attempts[-1]
    return f"HTTP {last.status_code}" if last.status_code is not None else (last.error or "-")


def event_names(values) -> tuple[str, ...]:
    """C{--events} values (each may hold several, comma-separated) as names.

    @raise ValueError: a name Postal does not have.
    """
    names = []
    for value in values or ():
        names += [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(EVENTS))
    if unknown:
        raise ValueError(f"unknown webhook event {', '.join(unknown)}: use "
                         f"{', '.join(EVENTS)}")
    return tuple(dict.fromkeys(names))


def check_webhook_add(args) -> None:
    """The events and the URL, before the store opens.

    @raise ValueError: with the line to show (a refused URL included).
    """
    args.events = event_names(args.events)
    if args.all_events and args.events:
        raise ValueError("give --events or --all-events, not both")
    if not args.all_events and not args.events:
        raise ValueError(f"give --events (some of {', '.join(EVENTS)}) or --all-events")
    try:
        check_now(parse_url(args.url), args.webhooks.allow_private_addresses)
    except RefusedURL as e:
        raise ValueError(str(e)) from None
    except Unresolvable as e:
        raise ValueError(f"webhook URL refused: {e} (it must resolve, to be checked)") \
            from None


def webhook_ref(text: str) -> int | str:
    """A webhook verb's C{ID}: digits are its id, anything else its uuid."""
    return int(text) if text.isdigit() else text


async def webhook_add(store, args) -> Output:
    webhook = await store.add_webhook(args.server, args.url, name=args.name or "",
                                      events=args.events, all_events=args.all_events)
    return Output(webhook_json(webhook), fields(webhook_json(webhook)))


async def webhook_list(store, args) -> Output:
    webhooks = await store.list_webhooks(args.server)
    rows = [webhook_json(w) for w in webhooks]
    for row, webhook in zip(rows, webhooks):
        row["events_text"] = "all" if webhook.all_events else ",".join(webhook.events)
    text = table(WEBHOOK_COLUMNS, rows, "no webhooks")
    for row in rows:
        del row["events_text"]
    return Output(rows, text)


async def webhook_enable(store, args) -> Output:
    webhook = await store.set_webhook_enabled(args.id, args.enabled)
    return Output(webhook_json(webhook), fields(webhook_json(webhook)))


async def webhook_remove(store, args) -> Output:
    webhook = await store.remove_webhook(args.id)
    return Output({"removed": "webhook", "id": webhook.id, "uuid": webhook.uuid},
                  f"removed webhook {webhook.id} ({printable(webhook.url)})")


async def webhook_key(store, args) -> Output:
    """The public half of the signing key, made now if there is none yet."""
    signer = RequestSigner(await store.webhook_signing_key())
    return Output({"public_key": signer.public_pem, "kid": signer.kid},
                  signer.public_pem.rstrip("\n"))


async def webhook_deliveries(store, args) -> Output:
    found = await store.list_webhook_requests(server=args.server, webhook=args.webhook,
                                              status=args.status, limit=args.limit)
    rows = [request_json(r, a) for r, a in found]
    shown = [dict(row, last_answer=cell(_answer(a))) for row, (_, a) in zip(rows, found)]
    return Output(rows, table(REQUEST_COLUMNS, shown, "no webhook deliveries"))


def check_settings(settings) -> dict:
    """C{[webhooks]} as C{config check} shows it, its CA file read as the
    gateway reads it at start.

    @param settings: a L{mailgw.config.WebhooksConfig}.
    @raise ValueError: C{ca_certificates} cannot be used.
    """
    from mailgw.webhooks.sender import tls_policy
    try:
        tls_policy(settings.ca_certificates)
    except ValueError as e:
        raise ValueError(f"config error: webhooks.ca_certificates: {e}") from None
    return {"enabled": settings.enabled,
            "allow_private_addresses": settings.allow_private_addresses,
            "retry_delays": list(settings.retry_delays),
            "ca_certificates": settings.ca_certificates or None}


def settings_text(data: dict) -> str:
    """L{check_settings}' answer, readable."""
    if not data["enabled"]:
        return "off on this node (webhooks.enabled = false): other nodes send the outbox"
    private = "allowed" if data["allow_private_addresses"] else "refused"
    trust = data["ca_certificates"] or "the system's CAs"
    return (f"on (private addresses {private}; {len(data['retry_delays'])} retries; "
            f"https trusts {trust})")


def add_verbs(verb, positive_int) -> None:
    """The C{webhook} noun's verbs on the command line's parser."""
    p = verb("add", webhook_add, "add a webhook to a server; its URL is checked now "
             "(and at every request) against private addresses", check=check_webhook_add)
    p.add_argument("server", metavar="ORG/SERVER")
    p.add_argument("url", metavar="URL", help="an http:// or https:// URL")
    p.add_argument("--name", default="", help="a label")
    p.add_argument("--events", nargs="+", metavar="EVENT",
                   help=f"the events to send (space or comma separated): "
                        f"{', '.join(EVENTS)}")
    p.add_argument("--all-events", action="store_true", help="send every event")
    p = verb("list", webhook_list, "list webhooks")
    p.add_argument("server", metavar="ORG/SERVER", nargs="?")
    for name, run, help, extra in (
            ("enable", webhook_enable, "send new events to a webhook again",
             {"enabled": True}),
            ("disable", webhook_enable, "stop writing new events for a webhook (requests "
             "already in the outbox are still sent)", {"enabled": False}),
            ("remove", webhook_remove, "remove a webhook with its pending requests and "
             "history", {})):
        verb(name, run, help, **extra).add_argument(
            "id", metavar="ID", type=webhook_ref, help="the webhook's ID or UUID")
    verb("key", webhook_key, "print the public key (PEM) receivers verify "
         "X-Postal-Signature and X-Postal-Signature-256 with")
    p = verb("deliveries", webhook_deliveries, "list webhook requests, newest first, with "
             "their attempts (--json)")
    p.add_argument("--server", metavar="ORG/SERVER")
    p.add_argument("--webhook", metavar="ID", type=webhook_ref)
    p.add_argument("--status", choices=REQUEST_STATUSES)
    p.add_argument("--limit", type=positive_int, metavar="N", default=50,
                   help="the newest N requests (default: 50)")

