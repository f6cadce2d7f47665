"""Redis, Postgres and RabbitMQ servers of their own, run from this machine's binaries.

Each server runs on 127.0.0.1 with its data in a folder of its own. The tests start
throw-away ones on free ports (testkit/stores.py), which a test may stop, SIGKILL
and restart without disturbing the shared instances on 6379, 5432 and 5672; `make run`
starts them on the default ports with their data kept between runs (embedded.py). A
restart keeps the ports and the data, as a real store restarting on the same disk would.

    with RedisServer(tmp_path / "redis") as store:
        ...  # store.url; store.kill(); store.restart()

`start()` never leaves a process behind when it fails, and `close()` (or leaving the
`with` block, or the end of the interpreter) stops the server and everything it spawned.
For a development machine: the readiness checks use the clients of the development lock (locks/dev.txt).
"""

import atexit
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import psycopg2.sql
import redis

READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
# Where packages put initdb and postgres, off PATH: Debian and Ubuntu, then Homebrew
# (Apple silicon, Intel, Linux); the newest version wins.
POSTGRES_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/opt/homebrew/opt/postgresql@*/bin",
                      "/usr/local/opt/postgresql@*/bin", "/home/linuxbrew/.linuxbrew/opt/postgresql@*/bin")
# Debian's scripts, which run as the calling user; its wrapper of the same name in
# /usr/sbin would switch to the rabbitmq user and that user's Erlang cookie.
DEBIAN_RABBITMQ_SCRIPTS = Path("/usr/lib/rabbitmq/bin")


def postgres_bin_dir() -> Path | None:
    """The folder of initdb and postgres: that of a `postgres` on PATH, else the newest
    of POSTGRES_BIN_GLOBS; None without both."""
    on_path = shutil.which("postgres")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    if not candidates:
        found = [Path(folder) for pattern in POSTGRES_BIN_GLOBS for folder in glob.glob(pattern)]
        candidates = sorted(found, key=lambda folder: [int(n) for n in re.findall(r"\d+", str(folder))],
                            reverse=True)
    return next((folder for folder in candidates
                 if (folder / "postgres").is_file() and (folder / "initdb").is_file()), None)


def rabbitmq_scripts_dir() -> Path | None:
    """The folder of rabbitmq-server and rabbitmqctl: Debian's DEBIAN_RABBITMQ_SCRIPTS,
    else that of a rabbitmq-server on PATH (Homebrew's); None without one."""
    if (DEBIAN_RABBITMQ_SCRIPTS / "rabbitmq-server").is_file():
        return DEBIAN_RABBITMQ_SCRIPTS
    on_path = shutil.which("rabbitmq-server")
    return Path(on_path).parent if on_path else None


# The ports free_ports handed out in this process: the server each was for may not have bound
# it yet, and the OS gives a port it just gave again (150 times in 2,000 picks here).
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_ports(count: int = 1) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago and that this process
    has not handed out before."""
    ports, sockets = [], []
    with _handed_out_lock:
        try:
            while len(ports) < count:
                # Each stays bound until the end, so the OS gives another one next.
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
                if port not in _handed_out:
                    ports.append(port)
        finally:
            for sock in sockets:
                sock.close()
        _handed_out.update(ports)
    return ports


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    """True while any thread of `pid` runs. A zombie counts as dead, as this machine's init
    may never reap the orphans it inherits; but after a SIGKILL the main thread of a
    multi-threaded server (beam.smp) is a zombie while another thread still tears the
    process down and holds its ports, hence the look at every thread."""
    for stat_file in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            if stat_file.read_text().rpartition(")")[2].split()[0] not in ("Z", "X"):
                return True
        except (FileNotFoundError, ProcessLookupError):
            continue
    return False


def descendants(pid: int) -> list[int]:
    """Children, grandchildren... of `pid`, read from /proc. Read them before killing
    `pid`: once it dies they belong to init."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_pids(pids: list[int], timeout_s: float = 10):
    """SIGKILLs each of `pids` that still runs and waits until none does."""
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout_s
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still running after SIGKILL: {[p for p in pids if alive(p)]}")
        time.sleep(0.05)


def kill_tree(process: subprocess.Popen, timeout_s: float = 10):
    """SIGKILLs `process` and all its descendants, and waits until none of them runs."""
    kill_pids([process.pid, *descendants(process.pid)], timeout_s)
    process.wait(timeout_s)


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PrivateServer:
    """One server process in `folder`, on ports picked once in the constructor: free
    ones, or the `port` given.

    Subclasses give the command, the readiness check and the signal for a graceful
    stop. The server's output goes to `log_path`; a failed or slow start raises with
    the tail of its logs.
    """

    name = "server"
    stop_signal = signal.SIGTERM
    repeat_stop_signal_s: float | None = None  # for a server that may ignore the signal for a while

    def __init__(self, folder: Path | str, port: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / f"{self.name}.log"
        self.port = port or free_ports()[0]
        self.process: subprocess.Popen | None = None
        atexit.register(self.close)

    # --- what subclasses provide

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def prepare(self):
        """Runs before each start: first-time setup such as initdb."""

    def popen_options(self) -> dict:
        return {}

    def log_tails(self) -> str:
        return tail(self.log_path)

    # --- life cycle

    @property
    def ports(self) -> list[int]:
        return [self.port]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> "PrivateServer":
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.process.pid})")
        taken = [port for port in self.ports if port_open(port)]
        if taken:  # a leftover there could pass for the new server
            raise RuntimeError(f"{self.name}: port(s) {taken} taken by another process")
        try:
            self.prepare()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, **self.popen_options(),
                )
            self.wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S):
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"{self.name} is not running (exit code {code})\n{self.log_tails()}")
            if self.is_ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout_s} s\n{self.log_tails()}")
            time.sleep(0.1)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S):
        """Graceful shutdown; SIGKILLs the server and raises if it takes over `timeout_s`."""
        if not self.running:
            return self.kill()  # reaps an exited process and leftovers, if any
        leftovers = descendants(self.process.pid)
        deadline = time.monotonic() + timeout_s
        while True:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(min(self.repeat_stop_signal_s or timeout_s, max(deadline - time.monotonic(), 0)))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    self.kill()
                    raise TimeoutError(f"{self.name} did not stop within {timeout_s} s\n{self.log_tails()}") from None
        deadline = time.monotonic() + 2  # its children normally follow it; give them a moment
        while any(alive(pid) for pid in leftovers) and time.monotonic() < deadline:
            time.sleep(0.05)
        kill_pids(leftovers)
        self.process = None

    def kill(self):
        """SIGKILLs the server and every process it started: a crash, not a shutdown."""
        if self.process is not None:
            kill_tree(self.process)
            self.process = None

    def restart(self, kill: bool = False, timeout_s: float = READY_TIMEOUT_S):
        """Stops the server (or SIGKILLs it, with `kill=True`) and starts it again on the
        same port with the same data."""
        self.kill() if kill else self.stop()
        self.start(timeout_s)

    def close(self):
        """Stops the server, SIGKILLing it if a graceful stop fails. Safe to call twice."""
        try:
            self.stop()
        except Exception:  # noqa: BLE001 - whatever made the graceful stop fail, SIGKILL still stops it
            self.kill()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


class RedisServer(PrivateServer):
    """`redis-server` in the foreground, with an append-only file in `folder`.

    Redis writes each command to the AOF before answering it, so an acknowledged write
    survives `kill()` with either `appendfsync`; "always" (the default) also fsyncs it
    first, which only a crash of the machine would tell from "everysec".
    """

    name = "redis"

    def __init__(self, folder: Path | str, appendfsync: str = "always", *, port: int | None = None):
        super().__init__(folder, port)
        self.appendfsync = appendfsync

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
            "--maxmemory-policy", "volatile-lru", "--daemonize", "no", "--logfile", "",
        ]

    def kill(self):
        """SIGKILLs the server and its fork children (a rewrite of the append-only file, a
        full sync) in one signal to its process group, so the crash happens at the moment
        of the call; then waits until none of them runs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session (start()): the group is its pid
        super().kill()

    def is_ready(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            return client.ping()  # raises BusyLoadingError while it replays the AOF
        except redis.RedisError:
            return False
        finally:
            client.close()


class PostgresServer(PrivateServer):
    """A Postgres cluster of its own: trust authentication, listening on 127.0.0.1 only,
    fsync on, created by initdb on the first start.

    Postgres refuses to run as root, so a root process runs it as the `postgres` OS user
    (`os_user`), who must be able to reach its data. Without `data_dir` the cluster is a
    throw-away one: the postgres user cannot enter a pytest tmp folder (its parent is mode
    0700), so the cluster and its socket live in a directory of their own under the
    system temp dir (`home`), owned by that user; `folder` gets the log and a `pgdata`
    link to it, and `close()` removes it. With `data_dir` the cluster lives there and
    stays, and it listens on TCP only (a socket path in a deep checkout could pass the
    length a socket path may have).
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM would wait for clients to leave

    def __init__(self, folder: Path | str, *, port: int | None = None, data_dir: Path | str | None = None,
                 os_user: str | None = None, bin_dir: Path | str | None = None):
        super().__init__(folder, port)
        self.bin_dir = Path(bin_dir) if bin_dir else postgres_bin_dir()
        if self.bin_dir is None:
            raise RuntimeError(f"no Postgres server binaries (initdb, postgres) on PATH or in {POSTGRES_BIN_GLOBS}")
        if os_user is None and os.geteuid() == 0:
            os_user = "postgres"
        try:
            self.os_user = pwd.getpwnam(os_user) if os_user else None
        except KeyError:
            raise RuntimeError(f"Postgres refuses to run as root, and there is no OS user {os_user!r} to run it as: "
                               "install Postgres from a package, which creates it, or run as another user") from None
        if data_dir is None:
            self.home = Path(tempfile.mkdtemp(prefix="private-postgres-"))
            self._own(self.home)
            self.data_dir = self.home / "data"
            self.socket_dir = str(self.home)
            link = self.folder / "pgdata"
            link.unlink(missing_ok=True)
            link.symlink_to(self.data_dir)
        else:
            self.home = None
            self.data_dir = Path(data_dir).absolute()
            self.socket_dir = ""
            self._check_reachable(self.data_dir)
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._own(self.data_dir)

    def _own(self, path: Path):
        if self.os_user is not None:
            os.chown(path, self.os_user.pw_uid, self.os_user.pw_gid)

    def _check_reachable(self, path: Path):
        """Raises, naming the folder, when the OS user cannot pass a folder above `path`
        (those still to be made get the umask's mode)."""
        if self.os_user is None:
            return
        groups = {self.os_user.pw_gid, *os.getgrouplist(self.os_user.pw_name, self.os_user.pw_gid)}
        for folder in filter(Path.exists, reversed(path.parents)):
            info = folder.stat()
            if info.st_uid == self.os_user.pw_uid:
                passable = info.st_mode & stat.S_IXUSR
            elif info.st_gid in groups:
                passable = info.st_mode & stat.S_IXGRP
            else:
                passable = info.st_mode & stat.S_IXOTH
            if not passable:
                raise RuntimeError(
                    f"Postgres runs as the {self.os_user.pw_name} user (it refuses root), who cannot enter "
                    f"{folder} (mode {stat.filemode(info.st_mode)}) to reach {path}: give others the right to "
                    f"enter it (chmod o+x {folder}), or use a checkout that user can reach")

    @property
    def admin_url(self) -> str:
        return self.database_url("postgres")

    @property
    def url(self) -> str:
        return self.admin_url

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Creates the database; its URL."""
        admin = psycopg2.connect(self.admin_url)
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                cur.execute(psycopg2.sql.SQL("CREATE DATABASE {}").format(psycopg2.sql.Identifier(name)))
        finally:
            admin.close()
        return self.database_url(name)

    def popen_options(self) -> dict:
        home = self.data_dir.parent
        options = {"cwd": home, "env": {**os.environ, "HOME": str(home)}}
        if self.os_user is not None:
            options.update(user=self.os_user.pw_uid, group=self.os_user.pw_gid, extra_groups=[])
        return options

    def prepare(self):
        if (self.data_dir / "PG_VERSION").exists():
            return
        with open(self.log_path, "ab") as log:
            done = subprocess.run(
                [self.bin_dir / "initdb", "-D", self.data_dir, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--locale", "C.UTF-8", "--no-instructions"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=120, check=False,
                **self.popen_options(),
            )
        if done.returncode:
            raise RuntimeError(f"initdb failed with exit code {done.returncode}\n{self.log_tails()}")

    def command(self) -> list[str]:
        return [
            str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-k", self.socket_dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on",
        ]

    def is_ready(self) -> bool:
        try:
            psycopg2.connect(self.admin_url, connect_timeout=1).close()
            return True
        except psycopg2.OperationalError:  # refused, or "the database system is starting up"
            return False

    def close(self):
        super().close()
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)


class RabbitMQServer(PrivateServer):
    """A RabbitMQ node of its own, `private-<random>@localhost` or the `node` given (its
    data folder follows its name: a node that keeps its data keeps its name), with no
    plugins.

    It has its own Erlang cookie (in `folder/home`) and its own epmd on a free port
    (ERL_EPMD_PORT), so it can neither reach nor be confused with a node of the machine
    such as `rabbit@localhost` and its epmd on 4369, and killing it leaves nothing behind.
    Durable queues and persistent messages live in `folder/mnesia` and survive restarts.
    The scripts of rabbitmq_scripts_dir() run as the current user.
    """

    name = "rabbitmq"

    def __init__(self, folder: Path | str, *, port: int | None = None, node: str | None = None):
        super().__init__(folder)
        scripts = rabbitmq_scripts_dir()
        if scripts is None:
            raise RuntimeError(f"no rabbitmq-server in {DEBIAN_RABBITMQ_SCRIPTS} or on PATH")
        self.scripts = scripts
        self.node = node or f"private-{uuid.uuid4().hex[:8]}@localhost"
        free = free_ports(3)
        self.port = port or free[0]
        self.dist_port, self.epmd_port = free[1:]
        self.epmd: subprocess.Popen | None = None
        home = self.folder / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20))
            cookie.chmod(0o400)
        (self.folder / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        (self.folder / "enabled_plugins").write_text("[].\n")
        (self.folder / "rabbitmq-env.conf").write_text("# instead of /etc/rabbitmq/rabbitmq-env.conf\n")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def command(self) -> list[str]:
        return [str(self.scripts / "rabbitmq-server")]

    def popen_options(self) -> dict:
        return {"env": self.env, "cwd": self.folder}

    def log_tails(self) -> str:
        return "\n".join([tail(self.log_path), tail(self.folder / "log" / f"{self.node}.log")])

    def rabbitmqctl(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        """Runs rabbitmqctl against this node; raises with its output if it fails."""
        done = subprocess.run([str(self.scripts / "rabbitmqctl"), "-n", self.node, *args], env=self.env,
                              cwd=self.folder, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done

    @property
    def ports(self) -> list[int]:
        return [self.port, self.dist_port, self.epmd_port]

    def prepare(self):
        """Starts the node's own epmd, which stop() and kill() take down with the node."""
        self.epmd = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"], env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not port_open(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node's own epmd did not start on port {self.epmd_port}")
            time.sleep(0.05)

    def is_ready(self) -> bool:
        # The AMQP listener opens at the end of the boot; await_startup then confirms it.
        if not port_open(self.port):
            return False
        try:
            self.rabbitmqctl("await_startup", "--timeout", "30", timeout_s=40)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            raise RuntimeError(f"{error}\n{self.log_tails()}") from None
        return True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S):
        try:
            super().stop(timeout_s)
        finally:
            self._stop_epmd()

    def kill(self):
        try:
            super().kill()
        finally:
            self._stop_epmd()

    def _stop_epmd(self):
        if self.epmd is not None:
            kill_tree(self.epmd)
            self.epmd = None
