"""The committed stubs must be what protos/generate.py makes of the protos today."""

import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location("generate", REPO_ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_stubs_are_up_to_date(tmp_path):
    generator = load_generator()
    written = generator.generate(tmp_path)
    assert written, "no stubs generated"
    stale = [
        str(path.relative_to(tmp_path)) for path in written
        if not (REPO_ROOT / path.relative_to(tmp_path)).exists()
        or (REPO_ROOT / path.relative_to(tmp_path)).read_bytes() != path.read_bytes()
    ]
    assert not stale, f"stale stubs, run `make stubs`: {stale}"
