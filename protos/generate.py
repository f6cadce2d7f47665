"""Generates the Python gRPC stubs for every proto under protos/.

The stubs land beside the shared package (`chinook/cache/v1/...`) so that the
generated imports (`from chinook.cache.v1 import cache_pb2`) resolve.

    python protos/generate.py            # into the repository root
    python protos/generate.py OUT_DIR    # elsewhere (the staleness test does this)
"""

import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
WELL_KNOWN_PROTOS = Path(grpc_tools.__file__).parent / "_proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path = REPO_ROOT) -> list[Path]:
    """Runs protoc over every proto file; returns the files it wrote."""
    sources = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{WELL_KNOWN_PROTOS}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed for {', '.join(sources)}")
    written = []
    for source in sources:
        stem = Path(out_dir) / source.removesuffix(".proto")
        written += [stem.with_name(stem.name + suffix) for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT
    for path in generate(target):
        print(f"generated {path.relative_to(target)}")
