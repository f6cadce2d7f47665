"""The gateway's Flask app: create_app makes the clients, the near cache and the contract
once, and wires the blueprints (api, legacy, console_docs, service) and the checks that run
around every route (request_hooks)."""

import logging

from flask import Flask

from chinook import tracing
from chinook.config import Settings
from chinook.grpc_client import CacheClient
from chinook.rate_limited_log import RateLimitedLog
from chinook.tls import channel_credentials

from . import IDENTITY, consistency, errors, openapi, request_hooks
from .api import SegmentConverter, api
from .auth import Access
from .batching import CallBatcher
from .browsers import AllowedHosts
from .console_docs import console_docs
from .direct_rows import DirectRows
from .legacy import legacy
from .near_cache import ChangeWatcher, NearCache
from .service_routes import service

MAX_BODY_BYTES = 16 * 1024 * 1024
# Refusals (401, 403, a Host not allowed) and readiness failures: a log line per client
# address and status (or per problem) and window.
REFUSAL_LOG_WINDOW_S = 10

log = logging.getLogger(__name__)


def create_app(settings: Settings, cache_client: CacheClient | None = None) -> Flask:
    """Builds the app for the entities registered now; the cache client, the near cache
    and the thread that keeps it subscribed are created here, in the serving process."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    client = cache_client or CacheClient(settings.cache_svc_addr, settings.grpc_timeout_s,
                                         channel_credentials(settings, IDENTITY))
    app.extensions["cache_client"] = client
    near = app.extensions["near_cache"] = NearCache(settings.gateway_near_cache_rows)
    app.extensions["token_max_age_s"] = consistency.cookie_max_age_s(settings.near_cache_max_lag_ms)
    if settings.gateway_near_cache_rows:
        ChangeWatcher(client.watch_changes, near, settings.near_cache_max_lag_ms / 1000).start()
    app.extensions["update_batcher"] = CallBatcher(client.update_rows, settings.gateway_batch_linger_ms / 1000)
    app.extensions["read_batcher"] = CallBatcher(client.get_rows, settings.gateway_read_batch_linger_ms / 1000)
    access = app.extensions["access"] = Access.from_settings(settings)
    app.extensions["allowed_hosts"] = AllowedHosts.from_settings(settings, access.anonymous_role)
    app.extensions["limited_log"] = RateLimitedLog(log, REFUSAL_LOG_WINDOW_S)
    app.extensions["openapi"] = openapi.document(settings.legacy_routes, access.anonymous_role)
    request_hooks.install(app)
    app.url_map.converters["segment"] = SegmentConverter
    app.register_blueprint(api)
    if settings.legacy_routes:
        app.register_blueprint(legacy)
    app.register_blueprint(console_docs)
    app.register_blueprint(service)
    errors.register(app)
    # In front of the app's own: the two requests clients send most, answered without
    # Flask's machinery where nothing in them needs it.
    app.wsgi_app = DirectRows(app, app.wsgi_app)
    # Outermost: a span then covers both, the checks, refusals and audit lines included.
    # Imported only with tracing on: otherwise no instrumentation is even loaded.
    if tracing.enabled():
        from . import request_spans

        request_spans.instrument(app)
    return app
