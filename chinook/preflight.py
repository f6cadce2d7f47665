"""Checks that Postgres, Redis and RabbitMQ answer at the configured URLs, and says
how to start the ones that do not. `python -m chinook.preflight`"""

import socket
import sys
from urllib.parse import urlsplit

from chinook.config import settings_or_exit

HOW_TO_START = {
    "DATABASE_URL": "start Postgres, e.g. `pg_ctlcluster 15 main start`",
    "REDIS_URL": "start Redis, e.g. `redis-server --daemonize yes`",
    "BROKER_URL": "start RabbitMQ, e.g. `rabbitmq-server -detached`",
    "CELERY_RESULT_BACKEND": "start Redis, e.g. `redis-server --daemonize yes`",
}
DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "rediss": 6379, "amqp": 5672}


def address(url: str) -> tuple[str, int | None]:
    """The host and port a store's URL points at; credentials and TLS do not change them."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS.get(parts.scheme)


def connection_error(url: str) -> str | None:
    """Why nothing answers at the URL's host and port; None when something does."""
    host, port = address(url)
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or exc})"
    return None


def unreachable_problem(variable: str, error: str) -> str:
    return f"{variable}: {error}; {HOW_TO_START[variable]} or set {variable}"


def unreachable(settings) -> list[str]:
    problems = []
    for variable in HOW_TO_START:
        error = connection_error(getattr(settings, variable.lower()))
        if error:
            problems.append(unreachable_problem(variable, error))
    return problems


def main():
    problems = unreachable(settings_or_exit())
    for problem in problems:
        print(problem, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
