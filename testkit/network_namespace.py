"""Commands run in a network namespace of their own, holding only loopback (`unshare -n`,
as root), where every default port is free even on a machine whose stores listen on
them; and a thread of this process in that namespace, to talk to what runs there.

    process = start_in_new_namespace(["make", "run"], cwd=checkout, stdout=log)
    with NetworkNamespace(process.pid) as namespace:
        namespace.call(requests.get, "http://127.0.0.1:5000/console")
        namespace.processes()  # the pids of every process still in it
"""

import ctypes
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CLONE_NEWNET = 0x40000000
ENTER_TIMEOUT_S = 30


def unshare_refusal() -> str | None:
    """Why commands cannot run in a network namespace of their own here; None if they can."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    done = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        return f"`unshare -n` is not permitted here (it needs root): {done.stderr.strip()}"
    return None


def start_in_new_namespace(command: list[str], **popen_options) -> subprocess.Popen:
    """Runs the command in a new network namespace with loopback up, in a session of its
    own: os.killpg(process.pid, SIGINT) is a terminal's Ctrl-C."""
    script = 'ip link set lo up && exec "$@"'
    return subprocess.Popen(["unshare", "-n", "sh", "-c", script, "sh", *command], start_new_session=True,
                            stdin=subprocess.DEVNULL, **popen_options)


class NetworkNamespace:
    """The network namespace `pid` runs in, once it differs from this process' own, and a
    thread of this process that has entered it: call() runs a function there."""

    def __init__(self, pid: int):
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + ENTER_TIMEOUT_S
        while os.readlink(f"/proc/{pid}/ns/net") == own:  # unshare has not switched yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {pid} did not enter a network namespace of its own")
            time.sleep(0.01)
        self.fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        self.name = os.readlink(f"/proc/self/fd/{self.fd}")  # net:[inode]
        self.thread = ThreadPoolExecutor(max_workers=1, initializer=self._enter)

    def _enter(self):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(self.fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the network namespace failed")

    def call(self, function, *args, **kwargs):
        return self.thread.submit(function, *args, **kwargs).result()

    def processes(self) -> list[int]:
        """The processes in the namespace (this one's thread aside), zombies left out."""
        found = []
        for ns in Path("/proc").glob("[0-9]*/ns/net"):
            pid = int(ns.parts[2])
            try:
                if pid != os.getpid() and os.readlink(ns) == self.name:
                    found.append(pid)
            except OSError:  # gone, or a zombie
                continue
        return found

    def kill_all(self):
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self):
        self.thread.shutdown()
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
