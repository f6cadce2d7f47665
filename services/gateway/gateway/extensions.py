"""The objects create_app makes once per app (clients, near cache, batchers), as the
code serving a request reaches them."""

from flask import current_app

from chinook.grpc_client import CacheClient
from chinook.rate_limited_log import RateLimitedLog

from .batching import CallBatcher
from .near_cache import NearCache


def cache() -> CacheClient:
    return current_app.extensions["cache_client"]


def near_cache() -> NearCache:
    return current_app.extensions["near_cache"]


def updates() -> CallBatcher:
    return current_app.extensions["update_batcher"]


def reads() -> CallBatcher:
    return current_app.extensions["read_batcher"]


def limited_log() -> RateLimitedLog:
    return current_app.extensions["limited_log"]
