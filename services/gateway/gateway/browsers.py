"""What a web page may make the gateway do through the browser of someone who can reach it.

Accepted writes exist nowhere else yet, and `make run` serves an open gateway (anonymous
admin) on loopback: any page its user visits could otherwise change or discard data
through their browser, with a form, an <img>, or DNS rebinding (a name of the page's
site that resolves to 127.0.0.1 a moment later, making the gateway its "own" origin).
Refused, before any route runs:

- a Host header ALLOWED_HOSTS does not list (DNS rebinding names the attacker's host);
- a change of state (POST, PUT, PATCH, DELETE, and the demo's GET routes that write)
  that a browser marks as sent by another site's page: `Sec-Fetch-Site: cross-site`
  (OWASP's Fetch Metadata), or an Origin other than the gateway's own;
- the body of a change that is not application/json, which a page of another origin can
  send only after a CORS preflight, and the gateway allows none.

Reads stay open to any page: where tokens are configured they need one, which no other
site's page holds.
"""

import re

from chinook.config import ConfigError

STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_MEDIA_TYPE = "application/json"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY_HOST = "*"
# A host name or an IPv4 address, or an IPv6 address in brackets; then an optional port.
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::([0-9]{1,5}))?")


def changes_state(view):
    """Marks a GET route that changes data (the demo's): refused cross-site as a POST is."""
    view.changes_state = True
    return view


def is_state_change(method: str, view) -> bool:
    return view is not None and (method in STATE_CHANGING_METHODS or getattr(view, "changes_state", False))


def _split_host(value: str) -> tuple[str, int | None] | None:
    """(name, port or None) of a Host header or an ALLOWED_HOSTS entry; None if it is neither."""
    match = _HOST.fullmatch(value.strip().lower())
    if match is None:
        return None
    port = int(match[2]) if match[2] else None
    if port is not None and not 0 < port < 65536:
        return None
    return match[1], port


class AllowedHosts:
    """The Host names the gateway answers to (ALLOWED_HOSTS); a name without a port
    allows every port."""

    def __init__(self, entries: frozenset[tuple[str, int | None]] | None):
        # None: any host.
        self.entries = entries

    @classmethod
    def from_settings(cls, settings, anonymous_role: str) -> "AllowedHosts":
        items = [item.strip() for item in settings.allowed_hosts.split(",") if item.strip()]
        if not items:
            # A rebinding page sends no token, so it may do what a request without one
            # may: nothing where tokens are needed (any host is then safe), everything
            # on an open gateway, which therefore answers to its loopback names only.
            if anonymous_role == "none":
                return cls(None)
            items = list(LOOPBACK_HOSTS)
        if ANY_HOST in items:
            return cls(None)
        entries = set()
        for item in items:
            entry = _split_host(item)
            if entry is None:
                raise ConfigError(f"ALLOWED_HOSTS: {item!r} is not a host name with an optional :port, such as "
                                  "localhost, api.example.com:8443 or [::1]:5000 (or * for any host)")
            entries.add(entry)
        return cls(frozenset(entries))

    def allows(self, host: str) -> bool:
        if self.entries is None:
            return True
        entry = _split_host(host)
        return entry is not None and (entry in self.entries or (entry[0], None) in self.entries)


def own_origin(request) -> str:
    """scheme://host[:port] of the request as the browser addressed it. A proxy that
    terminates TLS in front of the gateway says https in X-Forwarded-Proto; a page of
    another origin cannot send that header without a preflight."""
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip().lower()
    return f"{scheme}://{request.host.lower()}"


def refusal(request, view, allowed_hosts: AllowedHosts) -> tuple[int, str, str] | None:
    """(status, error code, message) when the request is one of the above; else None."""
    if not allowed_hosts.allows(request.host):
        return 400, "invalid_argument", (f"Host {request.headers.get('Host', '')!r} is not one this gateway answers "
                                         "to: ALLOWED_HOSTS lists those (docs/security.md, Browsers)")
    if not is_state_change(request.method, view):
        return None
    if request.headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
        return 403, "permission_denied", ("Sec-Fetch-Site: cross-site: a page of another site may not change "
                                          "data here; call the API directly or from the gateway's own pages")
    origin = request.headers.get("Origin")
    if origin is not None and origin.strip().lower() != own_origin(request):
        return 403, "permission_denied", (f"Origin {origin!r} is not this gateway's own ({own_origin(request)}): "
                                          "a page of another origin may not change data here")
    return None


def media_type_refusal(request, view) -> str | None:
    """Why the body of a change is refused (415), or None. A change without a body (a
    flush, a retry, a DELETE) needs no Content-Type; a form always sends one."""
    if request.method not in STATE_CHANGING_METHODS or view is None or request.mimetype == JSON_MEDIA_TYPE:
        return None
    has_body = bool(request.content_length) or "Transfer-Encoding" in request.headers
    if not request.content_type and not has_body:
        return None
    given = repr(request.mimetype) if request.content_type else "no Content-Type"
    return f"request body: expected Content-Type: {JSON_MEDIA_TYPE}, got {given}"
