"""cache-svc's Lua scripts (the files in lua/) as one Redis Functions library, and its admin step.

Redis runs only the functions of a library an administrator loaded (FUNCTION LOAD), and an
ACL user allowed FCALL but not EVAL, EVALSHA or SCRIPT runs nothing else: cache-svc's
account cannot make Redis run Lua of its own choosing (a `while true do end` would stall
Redis for every client). Each file of lua/ becomes one function named after it, but the
helpers the functions share, which open the library. The library's name carries a hash of
its code, so the versions of a rolling update live side by side, and a process never calls
a function of another version.

`python -m cache_svc.load_functions` is the administrator's step that loads it; where
cache-svc's own account may load it (`make run`, the tests), cache-svc does so itself.
"""

import hashlib
import logging
from importlib.resources import files
from importlib.resources.abc import Traversable

import redis

log = logging.getLogger(__name__)

# Redis' reply to FCALL of a function no loaded library defines.
NOT_FOUND = "Function not found"

# The scripts, each a file `<name>.lua`, shipped inside the package.
LUA = files(__package__) / "lua"
# The files that are not functions but Lua every function may call.
HELPERS = ("publish", "batched")
# The functions that write nothing.
READ_ONLY = {"uncached", "status", "inspect"}


class FunctionsMissing(Exception):
    """The library is not loaded, and this account may not load it; the message says how."""


class Library:
    """The scripts, by short name, as one library; read_only names the ones that write
    nothing (flagged no-writes: they run while Redis refuses writes, e.g. over maxmemory);
    helpers is Lua defined once, before the functions, for all of them to call."""

    def __init__(self, scripts: dict[str, str], read_only: set[str], helpers: str = ""):
        digest = hashlib.sha256(f"{helpers}\0".encode())
        for name in sorted(scripts):
            digest.update(f"{name}\0{scripts[name]}\0{name in read_only}\0".encode())
        self.name = f"chinook_{digest.hexdigest()[:12]}"
        self.code = "\n".join([f"#!lua name={self.name}", helpers,
                               *(self._registration(name, scripts[name], name in read_only) for name in sorted(scripts))])

    def _registration(self, name: str, script: str, read_only: bool) -> str:
        # A script reads KEYS and ARGV as globals; as the callback's parameters they are the
        # same tables, so its body runs unchanged.
        flags = "'no-writes'" if read_only else ""
        return (f"redis.register_function{{function_name='{self.function(name)}', flags={{{flags}}}, "
                f"callback=function(KEYS, ARGV)\n{script}\nend}}")

    def function(self, name: str) -> str:
        """The Redis function name of the script `name`."""
        return f"{self.name}_{name}"

    def is_loaded(self, client: redis.Redis) -> bool:
        return bool(client.function_list(library=self.name))

    def load(self, client: redis.Redis, where: str = "Redis"):
        """Loads the library on one Redis (a primary); raises FunctionsMissing when this
        account may not."""
        try:
            client.function_load(self.code, replace=True)
        except redis.exceptions.NoPermissionError:
            raise FunctionsMissing(
                f"{where} lacks the Redis functions library {self.name} and the account of REDIS_URL may not "
                "load it: run `python -m cache_svc.load_functions` with an administrator's REDIS_URL first (compose "
                "and Kubernetes do at start)") from None
        log.info("loaded the Redis functions library %s on %s", self.name, where)


def read_library(folder: Traversable = LUA) -> Library:
    """The library of the .lua files in `folder`."""
    scripts = {path.name.removesuffix(".lua"): path.read_text(encoding="utf-8")
               for path in folder.iterdir() if path.name.endswith(".lua")}
    helpers = "\n".join(scripts.pop(name) for name in HELPERS)
    return Library(scripts, READ_ONLY, helpers)


LIBRARY = read_library()


def primaries(client) -> list[tuple[str, redis.Redis]]:
    """(host:port, client) of the one Redis, or of every primary of a cluster."""
    if isinstance(client, redis.RedisCluster):
        return [(node.name, client.get_redis_connection(node)) for node in client.get_primaries()]
    kwargs = client.connection_pool.connection_kwargs
    return [(f"{kwargs.get('host')}:{kwargs.get('port')}", client)]


def ensure_loaded(library: Library, client) -> int:
    """Loads the library where it is missing; returns on how many nodes it did."""
    loaded = 0
    for where, node in primaries(client):
        if not library.is_loaded(node):
            library.load(node, f"Redis {where}")
            loaded += 1
    return loaded
