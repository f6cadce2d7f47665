"""cache-svc's scripts as one Redis Functions library: every script a function, the read-only
ones flagged so, and a name that changes with the code (versions live side by side)."""

import re

from cache_svc.functions import Library
from cache_svc.store import LIBRARY, SCRIPTS


def test_every_script_is_one_function_of_the_library():
    assert LIBRARY.code.startswith(f"#!lua name={LIBRARY.name}\n")
    registered = re.findall(r"function_name='([^']+)', flags=\{([^}]*)\}", LIBRARY.code)
    assert sorted(name for name, _ in registered) == sorted(LIBRARY.function(name) for name in SCRIPTS)
    read_only = {name for name, flags in registered if flags == "'no-writes'"}
    assert read_only == {LIBRARY.function(name) for name in ("uncached", "status", "inspect")}
    for name, script in SCRIPTS.items():
        assert script in LIBRARY.code, name


def test_the_library_name_follows_its_code():
    scripts = {"probe": "return 1"}
    assert Library(scripts, set()).name == Library(dict(scripts), set()).name
    assert Library(scripts, set()).name != Library({"probe": "return 2"}, set()).name
    assert Library(scripts, set()).name != Library(scripts, {"probe"}).name
