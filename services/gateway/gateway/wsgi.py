"""The WSGI entry point for gunicorn: `gunicorn gateway.wsgi:app`.

gunicorn loads it in each worker after the fork (no --preload), so each worker has
its own gRPC channel, and tracing (set up by gunicorn_conf.post_fork) its own exporter.
"""

import sys

from chinook.config import ConfigError, settings_or_exit
from chinook.entities import register_modules_or_exit
from chinook.logs import configure_logging

from .app import create_app

settings = settings_or_exit()
configure_logging("gateway", settings.log_level, settings.log_format)
register_modules_or_exit(settings.entity_modules)
try:
    app = create_app(settings)
except ConfigError as exc:
    sys.exit(f"configuration error: {exc}")
