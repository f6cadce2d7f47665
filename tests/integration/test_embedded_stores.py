"""`make run`'s embedded default (chinook/local_stores/embedded.py) as a newcomer meets it:
in a fresh copy of the checkout, inside a network namespace of its own where nothing
answers at the default URLs, with this machine's server binaries.

`make run` starts private Postgres, Redis and RabbitMQ under .local-stores/, says so in one
line, and the console answers; a write goes through the API into Postgres; Ctrl-C (SIGINT
to the terminal's process group) leaves no process behind; a second `make run` finds the
row in the kept data, and SIGTERM to make leaves nothing either. Without the binaries,
with a default port taken, or with an explicit URL that does not answer, it stops with
its message and changes nothing; when some stores answer, it starts only the others.
About 30 s, most of it two boots of RabbitMQ and of the five processes.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import fields
from pathlib import Path

import psycopg2
import pytest
import requests

from chinook.config import Settings
from chinook.local_stores.embedded import STORES
from chinook.local_stores.servers import DEBIAN_RABBITMQ_SCRIPTS, POSTGRES_BIN_GLOBS, PostgresServer
from testkit.network_namespace import NetworkNamespace, start_in_new_namespace, unshare_refusal

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
STARTED_LINE = ("no stores answered at the default URLs: started private Postgres, Redis and RabbitMQ under "
                ".local-stores/ (their data kept); Ctrl-C stops them")
CONSOLE = "http://127.0.0.1:5000/console"
DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/chinook"
READY_TIMEOUT_S = 180
STOP_TIMEOUT_S = 90

refusal = unshare_refusal()
missing = [binary for store in STORES for binary in store.missing_binaries()]
pytestmark = [
    pytest.mark.skipif(refusal is not None, reason=f"needs a network namespace of its own: {refusal}"),
    pytest.mark.skipif(bool(missing), reason=f"needs the stores' server binaries, missing: {', '.join(missing)}"),
]


@pytest.fixture
def checkout():
    """A copy of the checkout's files, as a clone would hold them (plus uncommitted changes),
    using this virtual environment. Under the system temp dir, open to others: Postgres runs
    as the postgres user, who cannot enter a pytest tmp folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    folder = Path(tempfile.mkdtemp(prefix="embedded-checkout-"))
    folder.chmod(0o755)
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, folder / name)
    (folder / ".venv").symlink_to(VENV)
    yield folder
    shutil.rmtree(folder)


def environment(checkout: Path, **extra: str) -> dict[str, str]:
    """This environment without the settings a developer or the suite may have set, its
    source folders pointed at the copy's (the virtual environment's .pth names this one's)."""
    settings = {field.name.upper() for field in fields(Settings)}
    env = {name: value for name, value in os.environ.items() if name not in settings}
    sources = [checkout / Path(entry).relative_to(REPO) for entry in sys.path
               if entry and Path(entry).is_absolute() and Path(entry).is_relative_to(REPO)]
    return {**env, "PYTHONPATH": os.pathsep.join(map(str, sources)), **extra}


class MakeRun:
    """`make run` in the copy, in a network namespace of its own; its output in a file."""

    def __init__(self, checkout: Path, log: Path):
        self.log = log
        with open(log, "wb") as out:
            # -o: the copy's .venv is this one, which `make run` must not set up again.
            self.process = start_in_new_namespace(["make", "-o", ".venv/.installed", "run"], cwd=checkout,
                                                  env=environment(checkout), stdout=out, stderr=subprocess.STDOUT)
        try:
            self.namespace = NetworkNamespace(self.process.pid)
        except BaseException:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_console(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"make run exited with {self.process.returncode}:\n{self.output[-5000:]}")
            try:
                if self.namespace.call(requests.get, CONSOLE, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no console after {READY_TIMEOUT_S} s:\n{self.output[-5000:]}")
            time.sleep(0.2)

    def sql(self, query: str, params=()):
        def run():
            with closing(psycopg2.connect(DATABASE_URL, connect_timeout=5)) as conn, conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall()
        return self.namespace.call(run)

    def interrupt(self):
        """Ctrl-C: SIGINT to the process group of make and what it runs in the foreground."""
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(STOP_TIMEOUT_S)

    def terminate(self):
        """SIGTERM to make alone, as a process manager stops it; make passes it on to its child."""
        self.process.terminate()
        self.process.wait(STOP_TIMEOUT_S)

    def close(self):
        """Whatever still runs in the namespace is SIGKILLed, so a failed test leaves nothing."""
        self.namespace.kill_all()
        self.namespace.close()


def test_make_run_starts_private_stores_keeps_their_data_and_ctrl_c_stops_everything(checkout, tmp_path):
    first = MakeRun(checkout, tmp_path / "first.log")
    try:
        first.wait_for_console()
        assert STARTED_LINE in first.output.splitlines()
        for store in ("Postgres", "Redis", "RabbitMQ"):
            assert f"starting a private {store} on 127.0.0.1:" in first.output
        response = first.namespace.call(requests.patch, "http://127.0.0.1:5000/albums/7",
                                        json={"title": "Kept Between Runs"}, timeout=30)
        assert response.status_code == 202, response.text
        flushed = first.namespace.call(requests.post, "http://127.0.0.1:5000/write-back/flush?wait=30", timeout=60)
        assert flushed.status_code == 200 and flushed.json()["pending"] == 0, flushed.text
        assert first.sql("SELECT title FROM album WHERE album_id = 7") == [("Kept Between Runs",)]

        first.interrupt()
        assert first.namespace.processes() == [], first.output[-3000:]
        assert "stopped the private stores; their data stays in .local-stores/" in first.output
    finally:
        first.close()
    assert (checkout / ".local-stores/postgres/data/PG_VERSION").is_file()

    second = MakeRun(checkout, tmp_path / "second.log")
    try:
        second.wait_for_console()
        assert STARTED_LINE in second.output.splitlines()
        assert second.sql("SELECT title FROM album WHERE album_id = 7") == [("Kept Between Runs",)]
        assert "database chinook already exists" in second.output
        album = second.namespace.call(requests.get, "http://127.0.0.1:5000/albums/7", timeout=30)
        assert album.json()["title"] == "Kept Between Runs"
        second.terminate()
        assert second.namespace.processes() == [], second.output[-3000:]
        assert "stopped the private stores; their data stays in .local-stores/" in second.output
    finally:
        second.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="Postgres runs as another user only for root")
def test_postgres_names_the_folder_its_user_cannot_enter_and_makes_no_data_folder(tmp_path):
    # A pytest tmp folder's parent is mode 0700, closed to the postgres user.
    closed = next(folder for folder in reversed(tmp_path.parents) if not folder.stat().st_mode & 0o001)
    with pytest.raises(RuntimeError, match=f"who cannot enter {closed} "):
        PostgresServer(tmp_path / "postgres", port=5432, data_dir=tmp_path / "postgres/data")
    assert not (tmp_path / "postgres/data").exists()


# --- the entry point alone, where it refuses or starts only some stores ---------------

# Run before the entry point, in its namespace: "5432:taken" binds the port without
# listening (taken, yet nothing answers), "5672:answering" listens as a store would.
HOLD_PORTS = """
import os, socket, sys
separator = sys.argv.index("--")
held = []
for spec in sys.argv[1:separator]:
    port, state = spec.split(":")
    held.append(socket.socket())
    held[-1].bind(("127.0.0.1", int(port)))
    if state == "answering":
        held[-1].listen()
    os.set_inheritable(held[-1].fileno(), True)
os.execvp(sys.argv[separator + 1], sys.argv[separator + 1:])
"""


def entry_point(stores: Path, *command: str, holding: tuple[str, ...] = (), env_file: Path | None = None
                ) -> list[str]:
    """`python -m chinook.local_stores --folder stores [--env-file env_file] -- command`,
    the ports of `holding` (HOLD_PORTS) held first."""
    hold = [sys.executable, "-c", HOLD_PORTS, *holding, "--"] if holding else []
    options = ["--env-file", str(env_file)] if env_file else []
    return [*hold, str(VENV / "bin/python"), "-m", "chinook.local_stores", "--folder", str(stores), *options, "--",
            *command]


def run_in_namespace(command: list[str], checkout: Path, hide: list[Path] = (), path: str | None = None,
                     **env: str) -> subprocess.CompletedProcess:
    """The command in network and mount namespaces of their own, `hide`'s folders covered
    by empty ones there, PATH replaced by `path` if given."""
    mounts = "".join(f"mount -t tmpfs tmpfs {folder} && " for folder in hide)
    script = f'{mounts}ip link set lo up && PATH="$COMMAND_PATH" exec "$@"'
    return subprocess.run(["unshare", "-n", "-m", "sh", "-c", script, "sh", *command], cwd=checkout,
                          env=environment(checkout, COMMAND_PATH=path or os.environ["PATH"], **env),
                          capture_output=True, text=True, timeout=120, check=False)


def test_without_the_server_binaries_one_message_says_what_to_install(checkout, tmp_path):
    # Packages put Postgres and RabbitMQ off PATH too: hide those folders (in the mount namespace only).
    hide = [folder for folder in [*(Path(pattern).parents[1] for pattern in POSTGRES_BIN_GLOBS),
                                  DEBIAN_RABBITMQ_SCRIPTS.parent] if folder.is_dir()]
    done = run_in_namespace(entry_point(tmp_path / "stores", "true"), checkout, hide, path=str(VENV / "bin"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "nothing answers at the default URLs of Postgres, Redis and RabbitMQ" in done.stderr
    assert "(initdb, postgres, redis-server, rabbitmq-server, epmd not found)" in done.stderr
    assert "Debian/Ubuntu: sudo apt-get install postgresql redis-server rabbitmq-server" in done.stderr
    assert "Homebrew:      brew install postgresql@15 redis rabbitmq" in done.stderr
    assert "docker compose up postgres redis rabbitmq" in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "stores").exists()


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_an_explicit_url_that_does_not_answer_keeps_its_hint_and_starts_nothing(checkout, tmp_path, where):
    url = "postgresql://postgres@127.0.0.1:5433/chinook"
    if where == ".env":
        (checkout / ".env").write_text(f"DATABASE_URL={url}\n")
        done = run_in_namespace(entry_point(tmp_path / "stores", "true", env_file=checkout / ".env"), checkout)
    else:
        done = run_in_namespace(entry_point(tmp_path / "stores", "true"), checkout, DATABASE_URL=url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == ("DATABASE_URL: nothing answers at 127.0.0.1:5433 (Connection refused); start Postgres, "
                           "e.g. `pg_ctlcluster 15 main start` or set DATABASE_URL\n")
    assert not (tmp_path / "stores").exists()


def test_a_default_port_taken_without_answering_is_named(checkout, tmp_path):
    done = run_in_namespace(entry_point(tmp_path / "stores", "true", holding=("5432:taken",)), checkout)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == ("cannot start a private Postgres: nothing answers at 127.0.0.1:5432, the port of "
                           "DATABASE_URL's default, yet it is taken (Address already in use); free it, or set "
                           "DATABASE_URL\n")
    assert not (tmp_path / "stores").exists()


def test_with_some_stores_answering_it_starts_only_the_others_and_stops_them_after_the_command(checkout, tmp_path):
    stores = tmp_path / "stores"
    write = f"{sys.executable} -c 'import redis; print(redis.Redis(port=6379).set(\"answer\", 42))'"
    # .env.example sets every URL to its default, which changes nothing.
    command = entry_point(stores, "sh", "-c", write, holding=("5432:answering", "5672:answering"),
                          env_file=checkout / ".env.example")
    process = start_in_new_namespace(command, cwd=checkout, env=environment(checkout), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
    with NetworkNamespace(process.pid) as namespace:
        try:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, out + err
            assert namespace.processes() == []
        finally:
            namespace.kill_all()
    lines = out.splitlines()
    assert re.fullmatch(r"starting a private Redis on 127\.0\.0\.1:6379 \.\.\. ready in [0-9.]+ s", lines[0])
    assert lines[1:] == [
        (f"Redis did not answer at its default URL: started a private Redis under {stores}/ (its data kept); "
         "Ctrl-C stops it"),
        "True",
        f"stopped the private stores; their data stays in {stores}/",
    ]
    assert sorted(path.name for path in stores.iterdir()) == ["redis"]
    assert list((stores / "redis/appendonlydir").glob("*.aof"))


def test_with_every_store_answering_the_command_simply_runs(checkout, tmp_path):
    command = entry_point(tmp_path / "stores", "sh", "-c", "echo ran; exit 3",
                          holding=("5432:answering", "6379:answering", "5672:answering"))
    done = run_in_namespace(command, checkout)
    assert (done.returncode, done.stdout, done.stderr) == (3, "ran\n", "")
    assert not (tmp_path / "stores").exists()
