"""Configuration from environment variables, with defaults for a local run.

Every variable is listed in docs/configuration.md and .env.example.
"""

import ipaddress
import os
import ssl
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# The most rows one write-back task may carry: a worker refuses a task of more, whatever
# WRITEBACK_BATCH_SIZE it was given itself, so the two need not be set alike.
MAX_WRITEBACK_BATCH_SIZE = 10_000


class ConfigError(Exception):
    """A variable is set to something unusable; the message names it."""


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/chinook"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # REDIS_URL names any node of a Redis Cluster (cache-svc only; the result backend
    # stays a single Redis).
    redis_cluster: bool = False
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    celery_result_backend: str = "redis://127.0.0.1:6379/1"
    # The type of the task queues: quorum (replicated), or classic for brokers without them.
    broker_queue_type: str = "quorum"
    # True where the broker's definitions declare the task queues, their exchange and
    # delayed delivery (compose and Kubernetes, whose broker accounts may not): processes
    # then only look for the queues, and never declare anything of the task topology.
    broker_predeclared: bool = False
    # The address the gateway listens on: loopback for a laptop; 0.0.0.0 in containers.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 5000
    # The address the gRPC servers listen on: loopback for a laptop; 0.0.0.0 in containers.
    grpc_host: str = "127.0.0.1"
    # Plaintext gRPC (no certificates) beyond loopback is refused without it: anyone who
    # reaches the port could call every method.
    allow_plaintext: bool = False
    cache_grpc_port: int = 50051
    persistence_grpc_port: int = 50052
    # gRPC targets: host:port, a name resolving to every replica (dns:///name:port), or
    # a list of addresses (ipv4:10.0.0.1:50051,10.0.0.2:50051); calls go round robin.
    cache_svc_addr: str = "127.0.0.1:50051"
    persistence_svc_addr: str = "127.0.0.1:50052"
    writeback_batch_size: int = 500
    writeback_delay_ms: int = 100
    # A claimed batch whose worker has not acknowledged it by then is scheduled again.
    writeback_lease_ms: int = 30_000
    # Above this many pending rows, new writes are refused (503 / RESOURCE_EXHAUSTED).
    writeback_max_pending: int = 1_000_000
    # Pending writes are split into this many shards, each in one Redis hash slot.
    writeback_shards: int = 16
    # An update is acknowledged only once this many Redis replicas hold it (WAIT), within
    # the timeout; else the client gets 503 and retries.
    writeback_min_replicas: int = 0
    writeback_replica_timeout_ms: int = 1000
    # Tries of a write Postgres refuses before it goes to the dead letters, and the
    # backoff between them (doubling, with full jitter).
    writeback_max_attempts: int = 5
    writeback_retry_backoff_ms: int = 1000
    cache_ttl_s: int = 3600
    # Every Redis key this system writes starts with it, so runs can share a Redis.
    redis_key_prefix: str = "chinook:"
    # If set (always, everysec or no), cache-svc turns on Redis' append-only file with
    # this fsync policy at start; if empty, it only warns when Redis does not persist.
    redis_appendfsync: str = ""
    grpc_timeout_s: float = 10.0
    # Rows each gateway process keeps in its near cache (LRU); 0 turns it off.
    gateway_near_cache_rows: int = 100_000
    # The longest a change may take from Redis to a gateway process: a subscriber that
    # falls further behind, or hears nothing (not even a heartbeat) for longer, is reset
    # and clears its near cache.
    near_cache_max_lag_ms: int = 1000
    # How long a single update, and a read that missed the near cache, waits in the gateway
    # for others to share its RPC, only while others are in progress; 0 sends each at once
    # (still gathering the ones that arrive while an RPC is in flight). For updates 3 ms
    # rather than 1 took a quarter less of cache-svc's CPU per update under 16 clients at
    # the same or better latency; for reads, whose call costs less, it cost latency and
    # throughput (bench/README.md).
    gateway_batch_linger_ms: float = 3.0
    gateway_read_batch_linger_ms: float = 1.0
    # Bearer tokens of the HTTP API: "role:token" pairs, comma-separated (development and
    # tests), and a file of "role sha256-hex-of-token [name]" lines (deployments).
    api_tokens: str = ""
    api_tokens_file: str = ""
    # The role of a request without a token: none, reader, writer or admin. Empty means
    # none when tokens are configured, admin (open, as the demo was) when none is.
    anonymous_role: str = ""
    # An open gateway (no token configured) refuses to listen beyond loopback without it.
    allow_anonymous: bool = False
    # Host names the gateway answers to, comma-separated, each optionally with :port; *
    # for any. Empty means the loopback names while a request without a token has a role,
    # any host otherwise (services/gateway/gateway/browsers.py says why).
    allowed_hosts: str = ""
    # The original demo's routes (GET /album, /update-album, ...); false removes them.
    legacy_routes: bool = True
    # Modules that register entities beyond album and artist (chinook.entities.register),
    # comma-separated and importable; every service imports them at start, so all must see
    # the same list.
    entity_modules: str = ""
    # Mutual TLS of every gRPC server and client (docs/security.md): the CA that signs the
    # certificates of the peers, and this process' own certificate and key. All three, or
    # none for plaintext.
    grpc_tls_ca_file: str = ""
    grpc_tls_cert_file: str = ""
    grpc_tls_key_file: str = ""
    # Or a folder of one folder per service (`make certs`' .certs): each process reads
    # <folder>/<its service>/ca.crt, tls.crt and tls.key. GRPC_TLS_*_FILE, when set, win.
    grpc_tls_dir: str = ""
    # Address and port of the process' own /metrics endpoint; port 0 means the service's default.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    log_level: str = "INFO"
    # text: one line of text per record; json: one JSON object per line.
    log_format: str = "text"


_POSITIVE = {
    "gateway_port", "cache_grpc_port", "persistence_grpc_port", "writeback_batch_size",
    "writeback_lease_ms", "cache_ttl_s", "grpc_timeout_s", "writeback_max_pending", "writeback_max_attempts",
    "writeback_retry_backoff_ms", "near_cache_max_lag_ms", "writeback_shards", "writeback_replica_timeout_ms",
}
_CHOICES = {"redis_appendfsync": ("", "always", "everysec", "no"),
            "anonymous_role": ("", "none", "reader", "writer", "admin"),
            "broker_queue_type": ("quorum", "classic"),
            "log_format": ("text", "json")}
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def load_settings(environ=None) -> Settings:
    """Reads every setting from its upper-case variable, falling back to the default."""
    environ = os.environ if environ is None else environ
    values = {}
    for field in fields(Settings):
        name = field.name.upper()
        raw = environ.get(name)
        if raw is None or raw == "":
            continue
        kind = type(field.default)
        if kind is bool:
            if raw.lower() not in _BOOLEANS:
                raise ConfigError(f"{name}={raw!r} must be true or false")
            values[field.name] = _BOOLEANS[raw.lower()]
            continue
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
        if kind in (int, float) and (value < 0 or (field.name in _POSITIVE and value == 0)):
            raise ConfigError(f"{name}={raw!r} must be {'positive' if field.name in _POSITIVE else 'zero or more'}")
        if field.name in _CHOICES and value not in _CHOICES[field.name]:
            raise ConfigError(f"{name}={raw!r} must be one of {', '.join(c for c in _CHOICES[field.name] if c)}")
        values[field.name] = value
    settings = Settings(**values)
    if settings.writeback_batch_size > MAX_WRITEBACK_BATCH_SIZE:
        raise ConfigError(f"WRITEBACK_BATCH_SIZE={settings.writeback_batch_size} must be at most "
                          f"{MAX_WRITEBACK_BATCH_SIZE}: workers refuse a task of more rows")
    if "{" in settings.redis_key_prefix or "}" in settings.redis_key_prefix:
        raise ConfigError(f"REDIS_KEY_PREFIX={settings.redis_key_prefix!r} must not hold {{ or }}: cache-svc "
                          "puts each shard's keys in one Redis Cluster hash slot with a {...} tag of its own")
    tls = _tls_configured(settings)
    for name in ("CACHE_SVC_ADDR", "PERSISTENCE_SVC_ADDR"):
        _check_target(name, getattr(settings, name.lower()), tls)
    return settings


# gRPC's targets that list addresses, and the kind of address each lists.
_ADDRESS_LISTS = {"ipv4": ipaddress.IPv4Address, "ipv6": ipaddress.IPv6Address}


def listed_addresses(target: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a gRPC target that lists addresses,
    `ipv4:10.0.0.1:50051,10.0.0.2:50051` or `ipv6:[::1]:50051,[::1]:50061`; empty for any
    other target (`host:port`, `dns:///name:port`). Raises ValueError naming a malformed
    entry."""
    scheme, _, rest = target.partition(":")
    kind = _ADDRESS_LISTS.get(scheme)
    if kind is None:
        return []
    pairs = []
    for entry in rest.split(","):
        host, _, port = entry.rpartition(":")
        if kind is ipaddress.IPv6Address:
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
        try:
            kind(host)
            number = int(port)
        except ValueError:
            example = "10.0.0.1:50051" if kind is ipaddress.IPv4Address else "[fd00::1]:50051"
            raise ValueError(f"{entry!r} is not an {scheme} address with a port, like {example}") from None
        if not 0 < number < 65536:
            raise ValueError(f"{entry!r}: the port must be 1-65535")
        pairs.append((host, number))
    return pairs


def tls_server_name(target: str) -> str | None:
    """The name a server's certificate must carry when the target lists addresses: their
    common host (gRPC would otherwise check the whole list against it); None for other
    targets, whose host gRPC checks itself."""
    hosts = {host for host, _ in listed_addresses(target)}
    return hosts.pop() if len(hosts) == 1 else None


def _check_target(name: str, target: str, tls: bool):
    try:
        pairs = listed_addresses(target)
    except ValueError as exc:
        raise ConfigError(f"{name}={target!r}: {exc}") from None
    if not pairs and "," in target:
        try:
            listed_addresses(f"ipv4:{target}")
            as_list = f"ipv4:{target}"
        except ValueError:
            as_list = "ipv4:10.0.0.1:50051,10.0.0.2:50051 (ipv6:[fd00::1]:50051,... for IPv6; addresses, not names)"
        raise ConfigError(f"{name}={target!r} lists several addresses without saying which kind: write them as "
                          f"gRPC's target {as_list}, or give one name that resolves to every replica "
                          "(dns:///name:port)")
    if tls and len({host for host, _ in pairs}) > 1:
        raise ConfigError(f"{name}={target!r} lists addresses of several hosts, which one certificate name cannot "
                          "cover with mutual TLS (GRPC_TLS_*): give the replicas one name that resolves to each "
                          "of them (dns:///name:port) and put it in their certificates")


@dataclass(frozen=True)
class TlsFiles:
    """The PEM texts of the GRPC_TLS_* files, as gRPC's credentials take them."""

    ca: bytes
    cert: bytes
    key: bytes


def _tls_variables(settings: Settings) -> dict[str, str]:
    return {"GRPC_TLS_CA_FILE": settings.grpc_tls_ca_file, "GRPC_TLS_CERT_FILE": settings.grpc_tls_cert_file,
            "GRPC_TLS_KEY_FILE": settings.grpc_tls_key_file}


# The files of a service's folder under GRPC_TLS_DIR, named as cert-manager's Secrets name them.
TLS_DIR_FILES = ("ca.crt", "tls.crt", "tls.key")


@dataclass(frozen=True)
class TlsPaths:
    """Where the CA, certificate and key are, and how a message names each: by the
    variable that set it, or by its place under GRPC_TLS_DIR."""

    ca: str
    cert: str
    key: str
    labels: tuple[str, str, str]

    @property
    def files(self) -> tuple[str, str, str]:
        return self.ca, self.cert, self.key


def tls_paths(settings: Settings, identity: str | None = None) -> TlsPaths | None:
    """The files of this process' mutual TLS: GRPC_TLS_*_FILE when any is set (all three
    or an error), else identity's folder under GRPC_TLS_DIR; None for plaintext. identity
    is the service the process is (chinook.callers.SERVICE_HOSTS)."""
    variables = _tls_variables(settings)
    given = [name for name, path in variables.items() if path]
    if given:
        if len(given) < len(variables):
            missing = [name for name in variables if name not in given]
            raise ConfigError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but "
                              f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: set all "
                              "three GRPC_TLS_* variables for mutual TLS between the services, or none for "
                              "plaintext")
        return TlsPaths(*variables.values(), labels=tuple(f"{name}={path!r}" for name, path in variables.items()))
    if not settings.grpc_tls_dir:
        return None
    if identity is None:
        raise ConfigError(f"GRPC_TLS_DIR={settings.grpc_tls_dir!r} holds a folder per service, and this program "
                          "is none of them: say whose certificate it presents (--identity), or set the three "
                          "GRPC_TLS_*_FILE variables")
    paths = [str(Path(settings.grpc_tls_dir) / identity / name) for name in TLS_DIR_FILES]
    return TlsPaths(*paths, labels=tuple(f"{path!r} (GRPC_TLS_DIR's {identity}/{name})"
                                         for path, name in zip(paths, TLS_DIR_FILES, strict=False)))


def _tls_configured(settings: Settings) -> bool:
    """Whether the processes speak mutual TLS; checks what can be checked before knowing
    which service reads the settings."""
    if any(_tls_variables(settings).values()):
        return read_tls_files(settings) is not None
    if settings.grpc_tls_dir and not Path(settings.grpc_tls_dir).is_dir():
        raise ConfigError(f"GRPC_TLS_DIR={settings.grpc_tls_dir!r} is not a folder: run `make certs` "
                          "(it writes .certs/<service>/), or point it at such a folder")
    return bool(settings.grpc_tls_dir)


class _EncryptedKey(Exception):
    pass


def _no_password():
    # An encrypted key would otherwise make OpenSSL prompt on the terminal.
    raise _EncryptedKey


def read_tls_files(settings: Settings, identity: str | None = None) -> TlsFiles | None:
    """The CA, certificate and key of tls_paths(), read and checked; None for plaintext."""
    paths = tls_paths(settings, identity)
    if paths is None:
        return None
    ca_label, cert_label, key_label = paths.labels
    texts = []
    for path, label, marker, kind in zip(paths.files, paths.labels,
                                         (b"-----BEGIN CERTIFICATE-----",) * 2 + (b"PRIVATE KEY-----",),
                                         ("certificate", "certificate", "private key"), strict=False):
        try:
            texts.append(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigError(f"{label} cannot be read: {exc.strerror or exc}") from None
        if marker not in texts[-1]:
            raise ConfigError(f"{label} holds no PEM {kind}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=texts[0].decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{ca_label} is not a usable CA certificate: {exc}") from None
    try:
        context.load_cert_chain(paths.cert, paths.key, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(f"{key_label}: the key is encrypted; give the services an unencrypted key file") from None
    except ssl.SSLError as exc:
        raise ConfigError(f"{key_label} is not the key of {cert_label}: {exc.reason or exc}") from None
    return TlsFiles(*texts)


def is_loopback(host: str) -> bool:
    """Whether an address to listen on is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """The URL with its password as ***, for every log line and message that shows one."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def settings_or_exit(environ=None) -> Settings:
    """load_settings() for entry points: a bad value stops the process with its name."""
    try:
        return load_settings(environ)
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc} (docs/configuration.md and .env.example list every variable)")
