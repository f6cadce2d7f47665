"""The WSGI entry point for gunicorn: `gunicorn gateway.wsgi:app`.

gunicorn loads it in each worker after the fork (no --preload), so each worker has
its own gRPC channel.
"""

from chinook.config import load_settings
from chinook.logs import configure_logging

from .app import create_app

settings = load_settings()
configure_logging("gateway", settings.log_level)
app = create_app(settings=settings)
