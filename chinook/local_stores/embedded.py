"""`make run`'s embedded default: private Postgres, Redis and RabbitMQ for the stores
that do not answer at their default URLs, around a command.

    python -m chinook.local_stores [--folder .local-stores] [--env-file .env] -- COMMAND...

A URL is at its default when its variable is unset, empty, or set to exactly the
default of chinook/config.py (the value .env.example shows, so a copy of it changes
nothing); --env-file's variables win over the environment, as honcho gives them to the
processes. For each store whose default URL does not answer, this starts a server of its
own from the machine's binaries, on the default port, with its data in a subfolder of
--folder that later runs reuse; then runs COMMAND, and once COMMAND ends (Ctrl-C reaches
both; SIGTERM and SIGHUP are passed on to it) stops the servers. A URL set to anything
else is used as it is: when nothing answers there, it stops with chinook.preflight's
hint, as before. When every store answers, COMMAND simply replaces this process.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from honcho.environ import parse as parse_env_file

from chinook.config import Settings, settings_or_exit
from chinook.local_stores.servers import (
    PostgresServer,
    PrivateServer,
    RabbitMQServer,
    RedisServer,
    postgres_bin_dir,
    rabbitmq_scripts_dir,
)
from chinook.preflight import address, connection_error, unreachable_problem

DEFAULT_FOLDER = ".local-stores"
# Fixed, for the node's data folder follows its name.
RABBITMQ_NODE = "chinook@localhost"
DEFAULTS = {field.name.upper(): field.default for field in fields(Settings)}


def _missing(*names: str, found: bool) -> list[str]:
    return [] if found else list(names)


@dataclass(frozen=True)
class Store:
    name: str
    folder: str  # its subfolder of --folder
    variables: tuple[str, ...]  # the settings whose default URLs point at it
    debian_package: str
    homebrew_package: str
    compose_service: str
    missing_binaries: Callable[[], list[str]]
    server: Callable[[Path, int], PrivateServer]  # (its folder, port) -> a server keeping its data there

    @property
    def port(self) -> int:
        return address(DEFAULTS[self.variables[0]])[1]


STORES = (
    Store("Postgres", "postgres", ("DATABASE_URL",), "postgresql", "postgresql@15", "postgres",
          lambda: _missing("initdb", "postgres", found=postgres_bin_dir() is not None),
          lambda folder, port: PostgresServer(folder, port=port, data_dir=folder / "data")),
    Store("Redis", "redis", ("REDIS_URL", "CELERY_RESULT_BACKEND"), "redis-server", "redis", "redis",
          lambda: _missing("redis-server", found=shutil.which("redis-server") is not None),
          lambda folder, port: RedisServer(folder, port=port)),
    Store("RabbitMQ", "rabbitmq", ("BROKER_URL",), "rabbitmq-server", "rabbitmq", "rabbitmq",
          lambda: (_missing("rabbitmq-server", found=rabbitmq_scripts_dir() is not None)
                   + _missing("epmd", found=shutil.which("epmd") is not None)),
          lambda folder, port: RabbitMQServer(folder, port=port, node=RABBITMQ_NODE)),
)


def at_default(settings: Settings, variable: str) -> bool:
    """Whether the variable's URL is the default one, which a private store may serve. A
    private Redis is no Redis Cluster, so REDIS_URL of a cluster never is."""
    if variable == "REDIS_URL" and settings.redis_cluster:
        return False
    return getattr(settings, variable.lower()) == DEFAULTS[variable]


def plan(settings: Settings, check: Callable[[str], str | None] = connection_error) -> tuple[list[Store], list[str]]:
    """The stores to start (a default URL of theirs does not answer) and the problems:
    explicit URLs that do not answer, each with chinook.preflight's hint. `check` says
    why nothing answers at a URL, or None."""
    needed, problems = [], []
    for store in STORES:
        for variable in store.variables:
            error = check(getattr(settings, variable.lower()))
            if error is None:
                continue
            if not at_default(settings, variable):
                problems.append(unreachable_problem(variable, error))
            elif store not in needed:
                needed.append(store)
    return needed, problems


def listing(words: list[str]) -> str:
    """"Postgres, Redis and RabbitMQ"."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def names(stores: list[Store]) -> str:
    return listing([store.name for store in stores])


def started_line(stores: list[Store], folder_label: str) -> str:
    one = len(stores) == 1
    if len(stores) == len(STORES):
        head = "no stores answered at the default URLs"
    else:
        head = f"{names(stores)} did not answer at {'its default URL' if one else 'their default URLs'}"
    return (f"{head}: started {'a ' if one else ''}private {names(stores)} under {folder_label}/ "
            f"({'its' if one else 'their'} data kept); Ctrl-C stops {'it' if one else 'them'}")


def missing_binaries_message(missing: dict[Store, list[str]], folder_label: str) -> str:
    stores = list(missing)
    binaries = ", ".join(binary for found in missing.values() for binary in found)
    variables = [variable for store in stores for variable in store.variables]
    return "\n".join([
        (f"nothing answers at the default URL{'s' if len(variables) > 1 else ''} of {names(stores)}, and "
         f"{'its' if len(stores) == 1 else 'their'} server binaries are not installed ({binaries} not found). "
         f"Install them, and `make run` starts private ones under {folder_label}/:"),
        f"  Debian/Ubuntu: sudo apt-get install {' '.join(store.debian_package for store in stores)}",
        f"  Homebrew:      brew install {' '.join(store.homebrew_package for store in stores)}",
        f"or run them in containers: docker compose up {' '.join(store.compose_service for store in stores)}",
        (f"  and set {listing(variables)} to reach them (compose publishes none of their ports, and its "
         "accounts are in deploy/compose/*.env)"),
    ])


def bind_error(port: int) -> str | None:
    """Why a server could not listen on 127.0.0.1:port; None if it could. SO_REUSEADDR,
    as servers set it: connections of an earlier run waiting out TIME_WAIT do not count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def refusals(needed: list[Store], folder_label: str) -> list[str]:
    """Why the stores cannot start: a default port taken, binaries missing."""
    messages = []
    for store in needed:
        error = bind_error(store.port)
        if error:
            variables = " and ".join(store.variables)
            messages.append(f"cannot start a private {store.name}: nothing answers at 127.0.0.1:{store.port}, the "
                            f"port of {variables}'s default, yet it is taken ({error}); free it, or set {variables}")
    missing = {store: store.missing_binaries() for store in needed}
    missing = {store: binaries for store, binaries in missing.items() if binaries}
    if missing:
        messages.append(missing_binaries_message(missing, folder_label))
    return messages


def start(needed: list[Store], folder: Path, started: list[PrivateServer]):
    """Starts each store, one line each; appends each server to `started` before its
    start, so the caller stops whatever runs, even after a failure or Ctrl-C."""
    for store in needed:
        print(f"starting a private {store.name} on 127.0.0.1:{store.port} ...", end=" ", flush=True)
        began = time.monotonic()
        server = store.server(folder / store.folder, store.port)
        started.append(server)
        try:
            server.start()
        except BaseException as error:
            print("interrupted" if isinstance(error, KeyboardInterrupt) else "failed", flush=True)
            raise
        print(f"ready in {time.monotonic() - began:.1f} s", flush=True)


def supervise(command: list[str]) -> int:
    """Runs the command to its end, passing SIGINT, SIGTERM and SIGHUP on to it; its exit
    code, 128 + the signal's number if a signal ended it. A terminal's Ctrl-C reaches the
    command already: a second SIGINT is harmless to honcho, which stops its processes once."""
    child = subprocess.Popen(command)

    def pass_on(signum, _frame):
        child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, pass_on)
    code = child.wait()
    return 128 - code if code < 0 else code


def stop(started: list[PrivateServer], folder_label: str):
    """Stops the servers, newest first; signals wait meanwhile, so no server outlives this."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    for server in reversed(started):
        server.close()
    if started:
        print(f"stopped the private stores; their data stays in {folder_label}/", flush=True)


def apply_env_file(path: Path):
    """Puts the variables of the file (`.env`) into this process' environment, which the
    command inherits: honcho's reading of it, winning over the environment as in honcho."""
    if path.is_file():
        os.environ.update(parse_env_file(path.read_text()))


def run(command: list[str], folder: Path, folder_label: str) -> int:
    # SIGTERM and SIGHUP stop the start of the stores as Ctrl-C does, never leaving one behind.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    needed, problems = plan(settings_or_exit())
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if not needed:
        os.execvp(command[0], command)
    messages = refusals(needed, folder_label)
    if messages:
        print("\n".join(messages), file=sys.stderr)
        return 1
    started: list[PrivateServer] = []
    try:
        try:
            start(needed, folder, started)
        except (OSError, RuntimeError) as error:  # TimeoutError is an OSError
            print(f"{error}\n(the logs are in {folder_label}/)", file=sys.stderr)
            return 1
        print(started_line(needed, folder_label), flush=True)
        return supervise(command)
    finally:
        stop(started, folder_label)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="python -m chinook.local_stores", description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=DEFAULT_FOLDER,
                        help=f"where the private stores keep their data and logs (default: {DEFAULT_FOLDER})")
    parser.add_argument("--env-file", type=Path, help="a file of variables for the stores and the command (.env)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- and the command to run with the stores")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if args.env_file:
        apply_env_file(args.env_file)
    try:
        sys.exit(run(command, Path(args.folder).absolute(), args.folder.rstrip("/")))
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP before the command ran; the stores are stopped
        sys.exit(130)
