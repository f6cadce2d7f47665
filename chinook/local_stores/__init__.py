"""Postgres, Redis and RabbitMQ servers of their own, from this machine's binaries:
servers.py starts and stops them (the tests' throw-away stores, testkit/stores.py,
build on it), and embedded.py is `make run`'s default when none answers at the default
URLs (`python -m chinook.local_stores -- COMMAND...`)."""
