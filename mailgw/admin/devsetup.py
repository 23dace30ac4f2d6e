"""``make run``'s first step: a development gateway that works out of the box.

``python -m mailgw.admin.devsetup --config var/mailgw.toml`` writes the config
file and a self-signed certificate when they are missing, brings the database
schema up to date, creates a demo organization, server, verified domain and
SMTP credential on an empty database, and prints that credential's key with
ready-to-paste client command lines. Every run after the first changes nothing
and prints the same key again.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from pathlib import Path

from mailgw.config import ConfigError, load_config
from mailgw.interfaces import StoreUnavailable
from mailgw.model import generate_key
from mailgw.store.files import private_directory

DEMO_ORG, DEMO_SERVER, DEMO_DOMAIN, DEMO_CREDENTIAL = "demo", "main", "example.com", "demo"
DEMO_API_CREDENTIAL = "demo-api"
#: the web interface's first user on a development gateway (docs/web.md)
DEV_ADMIN = "admin@example.com"

CONFIG_TEMPLATE = """\
# Development config written by `make run` (python -m mailgw.admin.devsetup).
# Relative paths resolve against this file's folder. Every key is listed with
# its default and meaning in etc/mailgw.toml.example.
hostname = "localhost"
spool_directory = "spool"

[database]
url = "sqlite:mailgw.sqlite3"

[relay]
# Accepted mail stays in the queue (see `mailgw queue list`): a development
# gateway should not send real mail by surprise. Set true, and a smarthost, to
# deliver it.
enabled = false

[dns]
# The demo domain, example.com, is not yours: its records would never check
# OK. With a domain of your own, remove this line (checks then run hourly;
# `mailgw domain check NAME` runs one now).
check_interval = 0

[metrics]
# /health and /metrics
endpoint = "tcp:9091:interface=127.0.0.1"

[http_api]
# Postal's HTTP send API (/api/v1/send/message and /send/raw), with the demo
# api credential's key in X-Server-API-Key.
endpoint = "tcp:8025:interface=127.0.0.1"

[web]
# The web interface (docs/web.md): organizations, servers, credentials,
# domains and the queue. Users come from `mailgw user add`; make run prints a
# set-password link for the first one, admin@example.com.
endpoint = "tcp:8080:interface=127.0.0.1"

[auth_throttle]
# You, trying things on this machine, are never locked out by a mistyped key.
# In production exempt only networks you trust: a lock-out there also stops
# guesses from anyone who reaches the gateway through them.
exempt = ["127.0.0.0/8", "::1"]

[tls]
# A self-signed certificate for localhost and 127.0.0.1, made on first run.
certificate = "tls/cert.pem"
private_key = "tls/key.pem"

[[listeners]]
endpoint = "tcp:2525:interface=127.0.0.1"
tls = "starttls"
# AUTH only after STARTTLS, as in production. To try AUTH over plain text
# (e.g. with a client that cannot do TLS), set this to false.
auth_requires_tls = true

[[listeners]]
endpoint = "tcp:2465:interface=127.0.0.1"
tls = "implicit"
auth_requires_tls = true
"""


def say(message: str) -> None:
    print(f"devsetup: {message}")


def write_config(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONFIG_TEMPLATE, encoding="utf-8")
    say(f"wrote {path}")


def make_certificate(hostname: str = "localhost", *, days: float = 3650,
                     key_type: str = "ec") -> tuple[bytes, bytes]:
    """A self-signed certificate for C{hostname} and 127.0.0.1.

    @param days: how long from now it is valid (a negative number makes one
        that has expired).
    @param key_type: C{"ec"} (P-256, what C{make run} writes) or C{"rsa"} (2048 bits).
    @return: C{(certificate PEM, unencrypted PKCS#8 private key PEM)}.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=max(0, -days), minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(certificate: str, private_key: str) -> None:
    """Write a fresh pair unless both files are there already."""
    if os.path.exists(certificate) and os.path.exists(private_key):
        return
    cert_pem, key_pem = make_certificate()
    for path in (certificate, private_key):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # The key is created private (0600), never readable for a moment.
    fd = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    with open(certificate, "wb") as f:
        f.write(cert_pem)
    say(f"wrote a self-signed certificate for localhost: {certificate}")


async def demo_key(store) -> tuple[str | None, str | None]:
    """The demo credentials' keys (smtp, api), creating the demo tenant on an
    empty database. C{None} for one the database does not have (other
    tenants, or a database made before the api credential was)."""
    from mailgw.interfaces import NotFound
    if not await store.list_organizations():
        server = (DEMO_ORG, DEMO_SERVER)
        await store.add_organization(DEMO_ORG, "Demo")
        await store.add_server(DEMO_ORG, DEMO_SERVER, "Demo mail server")
        await store.add_domain(DEMO_DOMAIN, server=server, verified=True)
        smtp = await store.add_credential(server, "smtp", generate_key(), name=DEMO_CREDENTIAL)
        api = await store.add_credential(server, "api", generate_key(), name=DEMO_API_CREDENTIAL)
        say(f"created organization {DEMO_ORG}, server {DEMO_ORG}/{DEMO_SERVER}, verified "
            f"domain {DEMO_DOMAIN}, SMTP credential {DEMO_CREDENTIAL!r} and API credential "
            f"{DEMO_API_CREDENTIAL!r}")
        return smtp.key, api.key
    try:
        credentials = await store.list_credentials((DEMO_ORG, DEMO_SERVER))
    except NotFound:
        return None, None
    keys = {(c.type, c.name): c.key for c in credentials}
    return (keys.get(("smtp", DEMO_CREDENTIAL)), keys.get(("api", DEMO_API_CREDENTIAL)))


async def dev_admin(store, config) -> str | None:
    """The web interface's first user, L{DEV_ADMIN} (an admin, a member of
    the demo organization), made on a database without users.

    @return: a fresh set-password link while the admin has no password;
        None once it has one (or when the database has other users only).
    """
    import time

    from mailgw.admin.users import LINK_PATH, base_url
    from mailgw.auth import passwords
    from mailgw.interfaces import NotFound
    if not await store.list_users():
        orgs = [o.permalink for o in await store.list_organizations()
                if o.permalink == DEMO_ORG]
        await store.add_user(DEV_ADMIN, admin=True, organizations=orgs)
    try:
        user = await store.get_user(DEV_ADMIN)
    except NotFound:
        return None
    if user.has_password:
        return None
    token = passwords.new_token()
    await store.add_user_token(user.id, passwords.token_digest(token), "set_password",
                               time.time() + config.web.link_lifetime)
    return base_url(config.web) + LINK_PATH + token


def prepare_store(config) -> str | None:
    """Upgrade the schema and find (or make) the demo key and, when the web
    interface is on, its first user's set-password link, under react."""
    from twisted.internet.task import react

    from mailgw.store import open_store
    found = []

    async def main(reactor):
        store = open_store(config.database.url, reactor, config.database.pool_size)
        try:
            await store.start()
            await store.upgrade()
            keys = await demo_key(store)
            link = await dev_admin(store, config) if config.web is not None else None
            found.append((*keys, link))
        except Exception as e:  # raised again below, outside the reactor
            found.append(e)
        finally:
            await store.close()

    try:
        react(main)
    except SystemExit:
        pass
    if isinstance(found[0], Exception):
        raise found[0]
    return found[0]


def submission_address(config) -> tuple[str, int]:
    """Host and port of the first STARTTLS TCP listener (the one to try)."""
    for listener in config.listeners:
        m = re.match(r"^tcp:(\d+)(?::.*interface=([^:]+))?", listener.endpoint)
        if m and listener.tls == "starttls":
            return m.group(2) or "127.0.0.1", int(m.group(1))
    return "127.0.0.1", 2525


def api_address(config) -> str | None:
    """The base URL of the HTTP API when it listens on a TCP port."""
    if config.http_api is None:
        return None
    m = re.match(r"^tcp:(\d+)(?::.*interface=([^:]+))?", config.http_api.endpoint)
    if m is None:
        return None
    scheme = "https" if config.http_api.tls else "http"
    return f"{scheme}://{m.group(2) or '127.0.0.1'}:{m.group(1)}"


def shown_path(path: str) -> str:
    """C{path} as the user can type it here: relative below the current folder."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def instructions(key: str, host: str, port: int, certificate: str | None = None,
                 api_key: str | None = None, api_url: str | None = None,
                 config_path: str = "var/mailgw.toml") -> str:
    """The demo key and client lines that check the development certificate
    (C{certificate}, trusted as its own CA) rather than skipping the check."""
    ca_swaks = f" --tls-verify --tls-ca-path {certificate}" if certificate else ""
    context = (f"c = ssl.create_default_context(cafile=\"{certificate}\"); "
               if certificate else "c = ssl.create_default_context(); ")
    smtplib_line = (
        f"python3 -c 'import smtplib, ssl; {context}"
        f"s = smtplib.SMTP(\"{host}\", {port}); s.starttls(context=c); "
        f"s.login(\"any\", \"{key}\"); s.sendmail(\"you@example.com\", "
        "[\"someone@example.net\"], \"From: you@example.com\\r\\nSubject: hello\\r\\n\\r\\nHello.\\r\\n\"); s.quit()'")
    lines = [
        f"demo credential key (server {DEMO_ORG}/{DEMO_SERVER}): {key}",
        "try it (the clients trust the development certificate; see docs/clients.md):",
        f"  swaks --server {host}:{port} --tls{ca_swaks} --auth PLAIN --auth-user any "
        f"--auth-password {key} --from you@example.com --to someone@example.net",
        f"  {smtplib_line}",
    ]
    if api_key and api_url:
        lines += [
            f"demo api key: {api_key}; the HTTP API:",
            f"  curl -sS {api_url}/api/v1/send/message -H 'X-Server-API-Key: {api_key}' "
            "-H 'Content-Type: application/json' -d '{\"to\": [\"someone@example.net\"], "
            "\"from\": \"you@example.com\", \"subject\": \"hello\", "
            "\"plain_body\": \"Hello.\"}'",
        ]
    lines.append(f"accepted mail stays in the queue: .venv/bin/mailgw --config {config_path} "
                 "queue list")
    return "\n".join(lines)


def web_instructions(config, link: str | None, config_path: str) -> str:
    """Where the web interface is, and how to sign in the first time."""
    if config.web is None:
        return (f"web interface: off; add a [web] table to {config_path} to turn it on "
                "(docs/web.md)")
    from mailgw.admin.users import base_url
    url = base_url(config.web)
    if link is None:
        return (f"web interface: {url}/ (sign in as {DEV_ADMIN}; a new password: "
                f".venv/bin/mailgw --config {config_path} user passwd {DEV_ADMIN})")
    return (f"web interface: {url}/\n"
            f"  set the password of {DEV_ADMIN} (an admin) here, once, then sign in:\n"
            f"  {link}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mailgw.admin.devsetup",
        description="Write a development config, certificate and demo tenant.")
    parser.add_argument("--config", default="var/mailgw.toml", metavar="FILE")
    args = parser.parse_args(argv)
    path = Path(args.config)
    try:
        if not path.exists():
            write_config(path)
        config = load_config(path)
        if config.tls is not None:
            ensure_certificate(config.tls.certificate, config.tls.private_key)
        private_directory(config.spool_directory)
        key = prepare_store(config)
    except (ConfigError, StoreUnavailable, ValueError, LookupError, OSError) as e:
        print(f"devsetup: {e}", file=sys.stderr)
        return 1
    key, api_key, link = key
    if key is None:
        say(f"no demo credential: the database has organizations but no "
            f"{DEMO_ORG}/{DEMO_SERVER} credential named {DEMO_CREDENTIAL!r}; "
            f"add one with `mailgw --config {path} credential add ORG/SERVER --type smtp`")
        print(web_instructions(config, link, str(path)))
        return 0
    host, port = submission_address(config)
    certificate = shown_path(config.tls.certificate) if config.tls is not None else None
    print(instructions(key, host, port, certificate, api_key, api_address(config), str(path)))
    print(web_instructions(config, link, str(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
