"""The configuration file: TOML in, a frozen and validated `Config` out.

Every section is a frozen dataclass whose fields are the keys, with their
defaults; `load_config` walks the file against those dataclasses so that a wrong
key, type or value fails at start with one line naming the key
(``config error: limits.max_recipients: must be an integer >= 1``).
Relative paths are resolved against the folder of the config file.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Config", "ConfigError", "DatabaseConfig", "ListenerConfig", "LimitsConfig",
    "TLSConfig", "AuthThrottleConfig", "RelayConfig", "HTTPAPIConfig", "MetricsConfig", "WebConfig",
    "DNSConfig", "WebhooksConfig", "ServerConfig",
    "load_config", "parse_config", "config_as_data",
]


class ConfigError(Exception):
    """A configuration problem, worded for the operator in one line."""


def _positive(v):
    return None if v > 0 else "must be greater than 0"


def _non_negative(v):
    return None if v >= 0 else "must be 0 or greater"


def _one_of(*choices):
    def check(v):
        return None if v in choices else "must be one of " + ", ".join(
            repr(c) for c in choices)
    return check


def _networks(values):
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            return f"{v!r} is not a valid IPv4 or IPv6 network"
    return None


def _prefix_length(v):
    return None if 1 <= v <= 128 else "must be between 1 and 128"


def _between(low, high):
    def check(v):
        return None if low <= v <= high else f"must be an integer from {low} to {high}"
    return check


def _check(fn):
    return {"check": fn}


def _path():
    return {"path": True}


@dataclass(frozen=True)
class DatabaseConfig:
    #: ``sqlite:PATH`` (embedded default) or ``postgresql://user:pass@host:port/db``
    url: str = "sqlite:var/mailgw.sqlite3"
    #: connections to PostgreSQL (SQLite always uses one writer)
    pool_size: int = field(default=4, metadata=_check(_positive))
    #: seconds a store operation may wait (a locked SQLite file, a slow
    #: PostgreSQL) before the client gets 451
    store_timeout: float = field(default=5.0, metadata=_check(_positive))


@dataclass(frozen=True)
class TLSConfig:
    certificate: str = field(default="", metadata=_path())
    private_key: str = field(default="", metadata=_path())
    min_version: str = field(default="1.2", metadata=_check(_one_of("1.2", "1.3")))
    #: OpenSSL cipher string for TLS 1.2; empty means Mozilla's "intermediate"
    #: list (ECDHE with AEAD ciphers only)
    ciphers: str = ""
    #: key exchange groups, most preferred first
    curves: tuple[str, ...] = ("X25519", "P-256", "P-384")
    #: warn (log and metric) when the certificate expires within this many days
    expiry_warning_days: int = field(default=14, metadata=_check(_non_negative))
    #: seconds between checks of the files' modification time (0: never)
    reload_interval: float = field(default=60.0, metadata=_check(_non_negative))


@dataclass(frozen=True)
class LimitsConfig:
    max_message_size_mb: int = field(default=14, metadata=_check(_positive))
    max_recipients: int = field(default=100, metadata=_check(_positive))
    #: the largest header section accepted, in KiB; a larger one is refused whole
    max_header_size_kb: int = field(default=1024, metadata=_check(_positive))
    #: accept RCPT TO addresses whose domain is an address literal (x@[192.0.2.1])
    allow_address_literals: bool = False

    @property
    def max_message_size(self) -> int:
        return self.max_message_size_mb * 1024 * 1024

    @property
    def max_header_size(self) -> int:
        return self.max_header_size_kb * 1024


@dataclass(frozen=True)
class ListenerConfig:
    endpoint: str = ""
    tls: str = field(default="none",
                     metadata=_check(_one_of("none", "starttls", "implicit")))
    #: None means "true when tls is not none"
    auth_requires_tls: bool | None = None
    proxy_protocol: bool = False
    trusted_proxies: tuple[str, ...] = field(default=(), metadata=_check(_networks))
    max_connections: int = field(default=1000, metadata=_check(_positive))
    max_connections_per_ip: int = field(default=50, metadata=_check(_positive))
    idle_timeout: float = field(default=300.0, metadata=_check(_positive))
    data_timeout: float = field(default=300.0, metadata=_check(_positive))
    tls_handshake_timeout: float = field(default=30.0, metadata=_check(_positive))
    #: bytes per second a client must keep up during DATA, on top of data_timeout
    min_data_rate: int = field(default=1024, metadata=_check(_non_negative))
    #: seconds a whole session may last (0: no limit)
    max_session_time: float = field(default=0.0, metadata=_check(_non_negative))

    @property
    def requires_tls_for_auth(self) -> bool:
        if self.auth_requires_tls is None:
            return self.tls != "none"
        return self.auth_requires_tls


@dataclass(frozen=True)
class AuthThrottleConfig:
    max_failures: int = field(default=10, metadata=_check(_positive))
    window: float = field(default=600.0, metadata=_check(_positive))
    lockout: float = field(default=900.0, metadata=_check(_non_negative))
    exempt: tuple[str, ...] = field(default=(), metadata=_check(_networks))
    #: IPv6 clients are counted per prefix of this length (one /64 is one site)
    ipv6_prefix: int = field(default=64, metadata=_check(_prefix_length))
    #: attempts without any key (RCPT TO without authentication, an API call
    #: without X-Server-API-Key) allowed per address within the window; past
    #: it only such attempts are refused, so working keys are never locked out
    anonymous_max_failures: int = field(default=100, metadata=_check(_positive))


def _host_port(value):
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT"
    return None


@dataclass(frozen=True)
class RelayConfig:
    #: deliver the queue from this node (several nodes may share a database)
    enabled: bool = True
    #: "host:port" of a smarthost; empty means direct delivery to MX hosts
    smarthost: str = field(default="", metadata=_check(_host_port))
    username: str = ""
    password: str = field(default="", repr=False)
    #: how to reach the smarthost
    tls: str = field(default="starttls",
                     metadata=_check(_one_of("none", "starttls", "implicit")))
    #: verify the smarthost's certificate (service-identity)
    verify: bool = True
    #: "host:port" of the DNS server for MX look-ups; empty: /etc/resolv.conf
    resolver: str = field(default="", metadata=_check(_host_port))
    #: the port MX hosts are reached on (25 outside tests)
    mx_port: int = field(default=25, metadata=_check(_positive))
    #: deliveries under way at once
    concurrency: int = field(default=10, metadata=_check(_positive))
    #: seconds after which a message that still fails temporarily is failed
    max_queue_age: float = field(default=432000.0, metadata=_check(_positive))
    #: first retry delay, doubled each attempt up to retry_max (with jitter)
    retry_base: float = field(default=60.0, metadata=_check(_positive))
    retry_max: float = field(default=3600.0, metadata=_check(_positive))
    #: seconds between looks at the queue when idle
    poll_interval: float = field(default=5.0, metadata=_check(_positive))
    #: seconds a claimed entry stays with this node if it dies mid-delivery
    lease: float = field(default=600.0, metadata=_check(_positive))
    connect_timeout: float = field(default=30.0, metadata=_check(_positive))
    command_timeout: float = field(default=300.0, metadata=_check(_positive))
    #: let MX delivery connect to loopback, link-local, unspecified or multicast
    #: addresses and to this node's own addresses (the smarthost is always allowed)
    allow_local_destinations: bool = False


@dataclass(frozen=True)
class HTTPAPIConfig:
    #: where the Postal-compatible HTTP API listens (a Twisted endpoint string)
    endpoint: str = "tcp:8025:interface=127.0.0.1"
    #: serve HTTPS with the [tls] certificate
    tls: bool = False
    #: open API connections, in all and from one client address
    max_connections: int = field(default=1000, metadata=_check(_positive))
    max_connections_per_ip: int = field(default=50, metadata=_check(_positive))
    #: seconds a connection may sit idle between requests
    idle_timeout: float = field(default=60.0, metadata=_check(_positive))
    #: seconds to send a request's headers, and its whole body
    header_timeout: float = field(default=30.0, metadata=_check(_positive))
    body_timeout: float = field(default=300.0, metadata=_check(_positive))


@dataclass(frozen=True)
class WebConfig:
    """The web interface (docs/web.md): organizations, servers, credentials,
    domains and the queue, for the users of C{mailgw user}."""
    #: where it listens (a Twisted endpoint string)
    endpoint: str = "tcp:8080:interface=127.0.0.1"
    #: serve HTTPS with the [tls] certificate (session cookies are then Secure)
    tls: bool = False
    #: seconds a session lasts after sign-in
    session_lifetime: float = field(default=8 * 3600.0, metadata=_check(_positive))
    #: seconds a set-password link from `mailgw user add` stays valid
    link_lifetime: float = field(default=24 * 3600.0, metadata=_check(_positive))
    #: the address users reach it at, for set-password links printed by
    #: `mailgw user`; empty: made from the endpoint (e.g. http://127.0.0.1:8080)
    public_url: str = ""
    #: the SMTP host name shown to clients on the credentials page; empty:
    #: the top-level hostname
    smtp_host: str = ""


@dataclass(frozen=True)
class MetricsConfig:
    #: /health and /metrics (Prometheus); empty string: no metrics listener
    endpoint: str = "tcp:9091:interface=127.0.0.1"


def _domain_name(value):
    if not value:
        return None
    from mailgw.address import normalise_domain
    normal = normalise_domain(value)
    return None if normal and not normal.startswith("[") else "must be a domain name"


@dataclass(frozen=True)
class DNSConfig:
    """The DNS records C{mailgw domain dns} asks operators to publish, and
    where domains' records are looked up when they are checked."""
    #: the domain whose SPF record lists this platform's sending addresses,
    #: named in each domain's SPF record as C{include:<it>} (RFC 7208
    #: section 5.2); empty: the record lists the domain's own a and mx
    spf_include: str = field(default="", metadata=_check(_domain_name))
    #: the host the return-path CNAME C{psrp.<domain>} points to (bounces
    #: come back there, as in Postal); empty: no return-path record
    return_path_domain: str = field(default="", metadata=_check(_domain_name))
    #: "host:port" of the DNS server for domain checks; empty: C{[relay]
    #: resolver}, and when that is empty too /etc/resolv.conf
    resolver: str = field(default="", metadata=_check(_host_port))
    #: seconds between two checks of a domain's records (each domain is
    #: checked by one node per interval); 0: no periodic check
    check_interval: float = field(default=3600.0, metadata=_check(_non_negative))


def _delays(values):
    if not all(v > 0 for v in values):
        return "every delay must be greater than 0"
    return None


@dataclass(frozen=True)
class WebhooksConfig:
    """Sending webhook requests from the outbox (docs/webhooks.md)."""
    #: send this node's share of the outbox (several nodes may share a database)
    enabled: bool = True
    #: let webhook URLs reach loopback, private, link-local and this node's
    #: own addresses (refused by default: a tenant chooses the URL)
    allow_private_addresses: bool = False
    #: seconds to wait before each retry after a failed attempt; one attempt
    #: more than there are delays, then the request is failed (Postal's schedule)
    retry_delays: tuple[float, ...] = field(default=(120.0, 180.0, 360.0, 600.0, 900.0),
                                            metadata=_check(_delays))
    #: seconds an attempt may take, connection and answer included
    timeout: float = field(default=5.0, metadata=_check(_positive))
    #: requests sent at once by this node
    concurrency: int = field(default=10, metadata=_check(_positive))
    #: seconds between looks at the outbox when idle
    poll_interval: float = field(default=2.0, metadata=_check(_positive))
    #: seconds a claimed request stays with this node if it dies mid-request
    lease: float = field(default=60.0, metadata=_check(_positive))
    #: days delivered and failed requests (and their attempts) are kept
    retention_days: float = field(default=7.0, metadata=_check(_positive))
    #: PEM file of extra certificate authorities to trust for https URLs
    #: (besides the system's); empty: the system's only
    ca_certificates: str = field(default="", metadata=_path())


#: the most gateway processes C{[server] workers} may ask for
MAX_WORKERS = 64


@dataclass(frozen=True)
class ServerConfig:
    """How the gateway runs on this machine (docs/deployment.md, "Several
    processes on one machine")."""
    #: gateway processes serving the SMTP listeners: twistd's own and
    #: C{workers - 1} worker processes sharing its listening sockets
    workers: int = field(default=1, metadata=_check(_between(1, MAX_WORKERS)))


@dataclass(frozen=True)
class Config:
    #: the name in the greeting, Received headers and CRAM-MD5 challenges
    hostname: str = field(default_factory=socket.gethostname)
    #: where bodies are spooled while DATA arrives
    spool_directory: str = field(default="var/spool", metadata=_path())
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    tls: TLSConfig | None = None
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    listeners: tuple[ListenerConfig, ...] = ()
    auth_throttle: AuthThrottleConfig = field(default_factory=AuthThrottleConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    #: no [http_api] table: no HTTP listener
    http_api: HTTPAPIConfig | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    #: no [web] table: no web interface
    web: WebConfig | None = None
    dns: DNSConfig = field(default_factory=DNSConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    #: seconds in-flight transactions get to finish on shutdown
    shutdown_grace: float = field(default=30.0, metadata=_check(_non_negative))
    #: the file this came from (None when built in code)
    source: str | None = field(default=None, metadata={"internal": True})


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate the TOML file at C{path}.

    @raise ConfigError: the file is missing, not TOML, or a key is wrong.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(data, base=path.resolve().parent, source=str(path))


def parse_config(data: dict, base: Path | None = None,
                 source: str | None = None) -> Config:
    """Build a L{Config} from already-parsed TOML data."""
    base = base or Path.cwd()
    config = _build(Config, data, "", base)
    config = dataclasses.replace(config, source=source)
    _cross_checks(config)
    url = config.database.url
    if url.startswith("sqlite:"):
        database = dataclasses.replace(
            config.database, url="sqlite:" + sqlite_path(url, base))
        config = dataclasses.replace(config, database=database)
    return config


def config_as_data(config: Config) -> dict:
    """The TOML data (tables, lists and scalars) that L{parse_config} turns
    back into C{config}: how worker processes get the config their parent
    read, rather than the file as it may have been edited since."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    data = dataclasses.asdict(config)
    for f in dataclasses.fields(Config):
        if f.metadata.get("internal"):
            del data[f.name]
    return plain(data)


def _cross_checks(config: Config) -> None:
    if not config.hostname or any(c.isspace() for c in config.hostname):
        raise ConfigError("config error: hostname: must be a host name without spaces")
    for i, listener in enumerate(config.listeners):
        where = f"listeners[{i}]"
        if not listener.endpoint:
            raise ConfigError(f"config error: {where}.endpoint: is required")
        if listener.tls != "none" and config.tls is None:
            raise ConfigError(
                f"config error: {where}.tls: {listener.tls!r} needs a [tls] section")
        if listener.proxy_protocol and not listener.trusted_proxies:
            raise ConfigError(
                f"config error: {where}.trusted_proxies: required when proxy_protocol is true")
    if config.http_api is not None and config.http_api.tls and config.tls is None:
        raise ConfigError("config error: http_api.tls: true needs a [tls] section")
    if config.web is not None and config.web.tls and config.tls is None:
        raise ConfigError("config error: web.tls: true needs a [tls] section")
    if config.tls is not None:
        for key in ("certificate", "private_key"):
            if not getattr(config.tls, key):
                raise ConfigError(f"config error: tls.{key}: is required")
    if config.server.workers > 1:
        for i, listener in enumerate(config.listeners):
            if listener.endpoint.startswith("unix:"):
                # A worker that stops would remove the socket's file for all.
                raise ConfigError(f"config error: listeners[{i}].endpoint: a unix socket "
                                  "cannot be shared by workers (server.workers > 1)")
    url = config.database.url
    if not (url.startswith("sqlite:") or url.startswith("postgresql://")
            or url.startswith("postgres://")):
        raise ConfigError(
            "config error: database.url: must start with sqlite: or postgresql://")


def _build(cls, data, prefix: str, base: Path):
    if not isinstance(data, dict):
        raise ConfigError(f"config error: {prefix.rstrip('.') or 'top level'}: must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            raise ConfigError(f"config error: {prefix}{key}: unknown key")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _value(hints[name], data[name], f"{prefix}{name}", base, f.metadata)
        elif f.metadata.get("path") and f.default:
            # A default path means the same as when written in the file.
            values[name] = _value(hints[name], f.default, f"{prefix}{name}", base, f.metadata)
    return cls(**values)


def _value(hint, raw, where: str, base: Path, metadata):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        return _value(inner, raw, where, base, metadata)
    if dataclasses.is_dataclass(hint):
        return _build(hint, raw, where + ".", base)
    if origin is tuple:
        if not isinstance(raw, list):
            raise ConfigError(f"config error: {where}: must be a list")
        item = args[0]
        if dataclasses.is_dataclass(item):
            value = tuple(_build(item, r, f"{where}[{i}].", base) for i, r in enumerate(raw))
        else:
            value = tuple(_scalar(item, r, f"{where}[{i}]") for i, r in enumerate(raw))
    else:
        value = _scalar(hint, raw, where)
    check = metadata.get("check")
    problem = check(value) if check else None
    if problem:
        raise ConfigError(f"config error: {where}: {problem}")
    if metadata.get("path") and value:
        value = str((base / value).resolve()) if not os.path.isabs(value) else value
    return value


_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _scalar(hint, raw, where: str):
    ok = isinstance(raw, hint) and not (hint is int and isinstance(raw, bool))
    if hint is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if not ok:
        raise ConfigError(f"config error: {where}: must be {_TYPE_WORDS[hint]}")
    return raw


def sqlite_path(url: str, base: Path | None = None) -> str:
    """The file of a ``sqlite:PATH`` URL (``sqlite:///abs`` and ``sqlite:rel`` both work)."""
    path = url[len("sqlite:"):]
    if path.startswith("///"):
        path = path[2:]
    elif path.startswith("//"):
        path = path[2:]
    if path == ":memory:":
        return path
    if base is not None and not os.path.isabs(path):
        path = str((base / path).resolve())
    return path
