"""cache-svc's scripts, the .lua files of its package, as one Redis Functions library: every
script a function, the read-only ones flagged so, the shared helpers defined once, and a
name that changes with the code (versions live side by side)."""

import re
import shutil

from cache_svc.functions import HELPERS, LIBRARY, LUA, Library, read_library


def scripts() -> dict[str, str]:
    return {path.name.removesuffix(".lua"): path.read_text(encoding="utf-8")
            for path in LUA.iterdir() if path.name.endswith(".lua")}


def test_every_lua_file_but_the_helpers_is_one_function_of_the_library():
    files = scripts()
    assert {"accept", "claim", "ack", "publish"} <= set(files)
    assert LIBRARY.code.startswith(f"#!lua name={LIBRARY.name}\n{files['publish']}")
    registered = re.findall(r"function_name='([^']+)', flags=\{([^}]*)\}", LIBRARY.code)
    assert sorted(name for name, _ in registered) == sorted(LIBRARY.function(name) for name in files
                                                            if name not in HELPERS)
    read_only = {name for name, flags in registered if flags == "'no-writes'"}
    assert read_only == {LIBRARY.function(name) for name in ("uncached", "status", "inspect")}
    for name, script in files.items():
        assert LIBRARY.code.count(script) == 1, name


def test_the_library_name_follows_its_code():
    scripts = {"probe": "return 1"}
    assert Library(scripts, set()).name == Library(dict(scripts), set()).name
    assert Library(scripts, set()).name != Library({"probe": "return 2"}, set()).name
    assert Library(scripts, set()).name != Library(scripts, {"probe"}).name
    assert Library(scripts, set(), "local x = 1").name != Library(scripts, set(), "local x = 2").name


def test_a_changed_lua_file_changes_the_library(tmp_path):
    folder = tmp_path / "lua"
    shutil.copytree(str(LUA), folder)
    assert read_library(folder).name == LIBRARY.name
    for name in ("expedite", "publish"):
        path = folder / f"{name}.lua"
        original = path.read_text(encoding="utf-8")
        path.write_text(original + "\n-- changed\n", encoding="utf-8")
        changed = read_library(folder)
        assert changed.name != LIBRARY.name and "-- changed" in changed.code, name
        path.write_text(original, encoding="utf-8")
    (folder / "probe.lua").write_text("return 1\n", encoding="utf-8")
    assert f"function_name='{read_library(folder).function('probe')}'" in read_library(folder).code
