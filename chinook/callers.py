"""Who may call which gRPC method (docs/security.md, "Who may call what").

A caller is the service its verified client certificate names: the identity whose host
names (below, in every form compose and Kubernetes resolve them) appear among the
certificate's subject alternative names. A certificate naming several services, or none,
is nobody. The table below allows each method to the services whose code calls it;
grpc_server.CallerCheck enforces it on every server with mutual TLS. The standard health
and reflection services stay open to any certificate of the CA (probes, grpcurl list).
"""

from functools import lru_cache

CACHE_SERVICE = "chinook.cache.v1.CacheService"
PERSISTENCE_SERVICE = "chinook.persistence.v1.PersistenceService"
OPEN_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})

NAMESPACE = "chinook"
# The hosts each service's certificate names: compose service names, which are also the
# Kubernetes Service and Deployment names (`make certs` and k8s/components/mtls issue them).
SERVICE_HOSTS = {
    "gateway": ["gateway"],
    "cache-svc": ["cache-svc"],
    "persistence-svc": ["persistence-svc"],
    "workers": ["db-write-back-worker", "db-duplication-worker"],
}
# The caller label of a certificate that names no single service.
UNKNOWN = "unknown"


def dns_names(hosts: list[str]) -> list[str]:
    """Each host as compose resolves it and as Kubernetes' DNS does, in every form."""
    names = []
    for host in hosts:
        names += [host, f"{host}.{NAMESPACE}", f"{host}.{NAMESPACE}.svc", f"{host}.{NAMESPACE}.svc.cluster.local"]
    return names


IDENTITY_OF_NAME = {name: identity for identity, hosts in SERVICE_HOSTS.items() for name in dns_names(hosts)}

GATEWAY, WORKERS, CACHE_SVC = frozenset({"gateway"}), frozenset({"workers"}), frozenset({"cache-svc"})

# Full method name -> the identities that may call it. The gateway's are what its routes
# call (services/gateway), plus GetRow and UpdateRow, the one-row forms of the GetRows and
# UpdateRows it sends, for an operator's grpcurl with its certificate; the workers' are a
# flush's and a duplication's calls (workers/worker/jobs.py); cache-svc's are its reads of
# Postgres (services/cache-svc). Nobody else, persistence-svc included, calls anything.
ALLOWED_CALLERS: dict[str, frozenset[str]] = {
    f"/{CACHE_SERVICE}/GetRow": GATEWAY,
    f"/{CACHE_SERVICE}/GetRows": GATEWAY,
    f"/{CACHE_SERVICE}/UpdateRow": GATEWAY,
    f"/{CACHE_SERVICE}/UpdateRows": GATEWAY,
    f"/{CACHE_SERVICE}/BulkUpdate": GATEWAY,
    f"/{CACHE_SERVICE}/RandomizeAlbumTitles": GATEWAY,
    f"/{CACHE_SERVICE}/GetWriteBackStatus": GATEWAY,
    f"/{CACHE_SERVICE}/Flush": GATEWAY,
    f"/{CACHE_SERVICE}/AckFlushed": WORKERS,
    f"/{CACHE_SERVICE}/DeadLetter": WORKERS,
    f"/{CACHE_SERVICE}/ListDeadLetters": GATEWAY,
    f"/{CACHE_SERVICE}/RetryDeadLetter": GATEWAY,
    f"/{CACHE_SERVICE}/DiscardDeadLetter": GATEWAY,
    f"/{CACHE_SERVICE}/InspectRow": GATEWAY,
    f"/{CACHE_SERVICE}/StartDuplication": GATEWAY,
    f"/{CACHE_SERVICE}/GetTask": GATEWAY,
    f"/{CACHE_SERVICE}/WatchChanges": GATEWAY,
    f"/{PERSISTENCE_SERVICE}/GetRows": CACHE_SVC,
    f"/{PERSISTENCE_SERVICE}/GetVersions": CACHE_SVC,
    f"/{PERSISTENCE_SERVICE}/ApplyWrites": WORKERS,
    f"/{PERSISTENCE_SERVICE}/ListIds": CACHE_SVC,
    f"/{PERSISTENCE_SERVICE}/DuplicateRows": WORKERS,
}


def service_of(method: str) -> str:
    """`chinook.cache.v1.CacheService` of `/chinook.cache.v1.CacheService/GetRow`."""
    return method[1:].partition("/")[0]


@lru_cache(maxsize=256)
def identity_of(names: tuple[bytes, ...]) -> str | None:
    """The one service among a certificate's subject alternative names (as gRPC's auth
    context gives them), or None for none or several. Cached: a caller presents the same
    names on every call."""
    found = {IDENTITY_OF_NAME.get(name.decode("ascii", "replace")) for name in names} - {None}
    return found.pop() if len(found) == 1 else None


def describe(names: tuple[bytes, ...], limit: int = 4, width: int = 64) -> str:
    """A certificate's names for a message or log line, cut short, since they come from
    the caller."""
    shown = [repr(name.decode("ascii", "replace")[:width]) for name in names[:limit]]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"[{', '.join(shown)}{more}]"
