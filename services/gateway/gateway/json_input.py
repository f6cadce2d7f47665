"""Request bodies as JSON objects, refusing with 400 what no route takes before it can cost
more than its size: nesting deeper than the API's shapes, integers longer than any field."""

import json

from flask import request

from .errors import ApiError

# The deepest body the API takes is a bulk's {"updates": [{...}]}, three levels; a value
# nested in a column (refused by its check, with its name) adds a few.
MAX_JSON_DEPTH = 8
# No field takes more: ids are in Postgres' int range, versions below 2^53 (16 digits).
MAX_INTEGER_DIGITS = 20

# Every byte but the brackets and quotes, which are what nesting is made of.
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b'[]{}"')
# Objects and arrays alike: nesting is counted, not matched (the parser does that).
_OPENERS_CLOSERS = bytes.maketrans(b"{}", b"[]")


def nested_deeper_than(data: bytes, limit: int) -> bool:
    """Whether the JSON text holds brackets, outside strings, more than `limit` deep; in C
    speed (bytes methods), so that it costs little beside the parse it guards.

    Each pass of replace(b"[]") removes the innermost level of every closed container.
    A text no deeper than the limit has none left after `limit` passes but its unclosed
    brackets (a malformed text, which the parser then refuses without going deep); a
    deeper one still holds a closed pair, or more unclosed openers than the limit."""
    if b"\\" in data:
        # Escaped quotes and backslashes end no string.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = data.translate(_OPENERS_CLOSERS, _NOT_STRUCTURE)
    # Two quotes side by side: an empty string, or the end of one and the start of the
    # next with no bracket between; either way no bracket of the structure is lost.
    brackets = brackets.replace(b'""', b"")
    if b'"' in brackets:
        brackets = b"".join(brackets.split(b'"')[::2])
    for _ in range(limit):
        if b"[]" not in brackets:
            break
        brackets = brackets.replace(b"[]", b"")
    return b"[]" in brackets or brackets.count(b"[") > limit


def _refuse_constant(name: str):
    # Python's json takes NaN and Infinity; JSON does not.
    raise ValueError(f"{name} is not a JSON value")


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise ApiError(400, "invalid_argument", f"request body: an integer of {len(digits.lstrip('-'))} digits; "
                                                f"no field takes more than {MAX_INTEGER_DIGITS}")
    return int(digits)


def json_body() -> dict:
    # get_data, not request.data: that would first try to parse the body as a form.
    return json_object(request.get_data())


def json_object(data: bytes) -> dict:
    """The body as a JSON object; ApiError 400 saying what is wrong with it otherwise."""
    if not data:
        raise ApiError(400, "invalid_argument", "request body: expected a JSON object")
    if nested_deeper_than(data, MAX_JSON_DEPTH):
        raise ApiError(400, "invalid_argument", f"request body: arrays and objects nested deeper than "
                                                f"{MAX_JSON_DEPTH} levels; the API's bodies need at most 3")
    try:
        body = json.loads(data, parse_constant=_refuse_constant, parse_int=_bounded_int)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_argument", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_argument", "request body: expected a JSON object")
    return body
