"""Consistency tokens: a client reads its own writes, and never an older value than one it
has seen, through any gateway process (docs/write-back.md, guarantee 5).

A token is a version, `v1.<version>`: the newest the client wrote or read. Versions are
cache-svc's hybrid clock (microseconds of Redis' time, growing per row), so one number
covers every row. Writes answer with it, and so do reads that present one (the newest of
it and the version read), in the header X-Consistency-Token and in the cookie wb_token,
which a browser sends back by itself. A read presenting a token is served from the near
cache only once the process has applied every change up to it (NearCache.get).
"""

import math
import re
import time

from werkzeug.http import parse_cookie

from .errors import ApiError
from .near_cache import NO_TOKEN

HEADER = "X-Consistency-Token"
COOKIE = "wb_token"
PREFIX = "v1."
# The header as WSGI names it in the environ.
HEADER_KEY = "HTTP_X_CONSISTENCY_TOKEN"
# The cookie named in a Cookie header, whether or not its value is one a cookie may have.
COOKIE_NAMED = re.compile(rf"(?:^|;)\s*{COOKIE}\s*=")
# A version is microseconds since the epoch: a token further ahead of this process'
# clock was not made by this system.
MAX_AHEAD_US = 10 * 60 * 1_000_000
# Digits of the largest version (2^53 - 2^32: entities.MAX_VERSION).
MAX_DIGITS = 16
# The cookie outlives the lag bound (NEAR_CACHE_MAX_LAG_MS) this many times: past it,
# every process that serves has applied the writes the token covers anyway.
COOKIE_LIFETIME_LAGS = 3


def cookie_max_age_s(max_lag_ms: int) -> int:
    return max(1, math.ceil(COOKIE_LIFETIME_LAGS * max_lag_ms / 1000))


def parse(raw: str, source: str, now_us: int) -> int:
    """The version a token names; ApiError 400 naming `source` if it is not a token."""
    digits = raw[len(PREFIX):] if raw.startswith(PREFIX) else None
    if digits is not None and digits.isascii() and digits.isdigit() and len(digits) <= MAX_DIGITS:
        version = int(digits)
        if version <= now_us + MAX_AHEAD_US:
            return version
        raise ApiError(400, "invalid_argument", f"{source}: {raw!r} is more than 10 minutes ahead of this "
                                                "gateway's clock; send the token a response gave")
    shown = raw if len(raw) <= 40 else raw[:40] + "..."
    problem = "must not be negative" if digits is not None and digits.startswith("-") else \
        f"expected {PREFIX}<version> as a response gave it"
    raise ApiError(400, "invalid_argument", f"{source}: {problem}, got {shown!r}")


def presented(environ) -> int:
    """The version of the token the request of this WSGI environ presents (the header
    wins over the cookie), NO_TOKEN if none. Either one malformed is bad input, even
    beside a good other one."""
    in_header = environ.get(HEADER_KEY)
    cookies = environ.get("HTTP_COOKIE")
    # Parsed as Flask's request.cookies parses them.
    in_cookie = parse_cookie(cookies).get(COOKIE) if cookies is not None and COOKIE in cookies else None
    if in_cookie is None and cookies is not None and COOKIE_NAMED.search(cookies):
        # Werkzeug skips a pair whose value no cookie may have (a space, a quote inside).
        raise ApiError(400, "invalid_argument", f"{COOKIE} cookie: expected {PREFIX}<version> as a response "
                                                "set it, got a value no cookie may have")
    if in_header is None and in_cookie is None:
        return NO_TOKEN
    now_us = time.time_ns() // 1000
    version = NO_TOKEN if in_header is None else parse(in_header, f"{HEADER} header", now_us)
    from_cookie = NO_TOKEN if in_cookie is None else parse(in_cookie, f"{COOKIE} cookie", now_us)
    return from_cookie if in_header is None else version


def answer(response, version: int, max_age_s: int):
    """Gives the client `version` as its token, in the header and the cookie."""
    (_, token), (_, cookie) = token_headers(version, max_age_s)
    response.headers[HEADER] = token
    response.headers.add("Set-Cookie", cookie)
    return response


def token_headers(version: int, max_age_s: int) -> list[tuple[str, str]]:
    """The header and the cookie that give the client `version` as its token."""
    token = f"{PREFIX}{version}"
    return [(HEADER, token), ("Set-Cookie", f"{COOKIE}={token}; Max-Age={max_age_s}; Path=/; HttpOnly; SameSite=Strict")]
