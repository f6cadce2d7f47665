"""Who may call what on the HTTP API: bearer tokens, each with a role.

Roles grow: a reader reads data and state; a writer also changes rows; an admin also
starts table-wide work (random titles, duplication, flushes) and retries or discards
dead letters, the writes that exist nowhere else yet. Tokens are kept as SHA-256 digests
and compared in constant time; no token is ever logged or put into a message. A token
shorter than MIN_TOKEN_LENGTH, or one given twice (which role would it have?), stops the
gateway at start.
"""

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from chinook.config import ConfigError, is_loopback

log = logging.getLogger(__name__)

# In ascending order: each role may do what the ones before it may.
ROLES = ("none", "reader", "writer", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES)}
# Short enough to guess is too short; secrets.token_urlsafe(32) gives 43 characters.
MIN_TOKEN_LENGTH = 16


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Token:
    role: str
    sha256: str
    name: str
    # Where it is configured, for messages: "API_TOKENS entry 2", "API_TOKENS_FILE tokens.txt line 3".
    source: str


@dataclass(frozen=True)
class Caller:
    """A request's role, and the name of its token ("anonymous" without one), for the audit log."""
    role: str
    name: str


def parse_api_tokens(text: str) -> list[Token]:
    """API_TOKENS: "role:token" pairs, comma-separated."""
    tokens = []
    for index, pair in enumerate(part.strip() for part in text.split(",")):
        if not pair:
            continue
        role, separator, token = pair.partition(":")
        if not separator or not token or role not in RANK or role == "none":
            raise ConfigError(f"API_TOKENS: entry {index + 1} must be role:token with a role of "
                              f"reader, writer or admin")
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"API_TOKENS: the token of entry {index + 1} is shorter than {MIN_TOKEN_LENGTH} "
                              "characters; make one with python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
        where = f"API_TOKENS entry {index + 1}"
        tokens.append(Token(role, digest(token), where, where))
    return tokens


def parse_tokens_file(path: str) -> list[Token]:
    """API_TOKENS_FILE: "role sha256-hex-of-token [name]" a line; # starts a comment."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"API_TOKENS_FILE={path!r} cannot be read: {exc.strerror}") from None
    tokens = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        role, hex_digest = words[0], (words[1].lower() if len(words) > 1 else "")
        if role not in RANK or role == "none" or len(hex_digest) != 64 \
                or any(c not in "0123456789abcdef" for c in hex_digest):
            raise ConfigError(f"API_TOKENS_FILE {path} line {number}: expected 'role sha256-hex [name]' "
                              "with a role of reader, writer or admin and 64 hex digits")
        name = " ".join(words[2:]) or f"{path} line {number}"
        tokens.append(Token(role, hex_digest, name, f"API_TOKENS_FILE {path} line {number}"))
    return tokens


def check_distinct(tokens: list[Token]):
    """Refuses a token configured twice, in API_TOKENS, API_TOKENS_FILE or both: compared
    as digests, so a file line and an API_TOKENS entry of the same token meet too."""
    first_of = {}
    for token in tokens:
        first = first_of.setdefault(token.sha256, token)
        if first is not token:
            raise ConfigError(f"{first.source} and {token.source} hold the same token: give each token once, "
                              "with one role")


class Access:
    """The role of each request, from its Authorization header."""

    def __init__(self, tokens: list[Token], anonymous_role: str):
        self.tokens = tokens
        self.anonymous_role = anonymous_role

    @classmethod
    def from_settings(cls, settings) -> "Access":
        tokens = parse_api_tokens(settings.api_tokens)
        if settings.api_tokens_file:
            tokens += parse_tokens_file(settings.api_tokens_file)
        check_distinct(tokens)
        anonymous = settings.anonymous_role or ("none" if tokens else "admin")
        if not tokens:
            if not is_loopback(settings.gateway_host) and not settings.allow_anonymous:
                raise ConfigError(
                    f"no API token is configured, so anyone could change and discard writes, and "
                    f"GATEWAY_HOST={settings.gateway_host} is reachable from other machines: set API_TOKENS "
                    f"or API_TOKENS_FILE, or ALLOW_ANONYMOUS=true if that is intended")
            log.warning("no API token is configured: every request is %s (set API_TOKENS or API_TOKENS_FILE)",
                        anonymous)
        return cls(tokens, anonymous)

    def caller_of(self, authorization: str | None) -> Caller | None:
        """Who is asking, and with which role; None for a token that is malformed or unknown."""
        if not authorization:
            return Caller(self.anonymous_role, "anonymous")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = digest(token.strip())
        caller = None
        # Every entry is compared, so the time taken says nothing about which one matched.
        for known in self.tokens:
            if hmac.compare_digest(known.sha256, presented):
                caller = Caller(known.role, known.name)
        return caller
