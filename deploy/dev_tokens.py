"""Bearer tokens of the compose stack's HTTP API, written by `make certs` beside the
certificates (`python -m deploy.dev_tokens [--out .certs]`), so none is committed:

    api-tokens/api-tokens.sha256   "role sha256-hex name" lines: the gateway's API_TOKENS_FILE
                                   (compose mounts the folder); digests only, no secret
    api-tokens.txt                 "role token" lines: the tokens themselves, for you (0600)

One random token per role (reader, writer, admin). Kept when `make certs` runs again, so
the tokens handed out stay good; delete both files to get new ones.
"""

import argparse
import hashlib
import secrets
import sys
from pathlib import Path

from deploy.dev_certs import write

ROLES = ("reader", "writer", "admin")
DIGESTS = Path("api-tokens") / "api-tokens.sha256"
PLAIN = Path("api-tokens.txt")
# 32 random bytes: 43 URL-safe characters.
TOKEN_BYTES = 32


def make_tokens(folder: Path) -> list[Path]:
    """Writes a token per role into the folder unless both files are there; returns the
    files written."""
    folder = Path(folder)
    digests, plain = folder / DIGESTS, folder / PLAIN
    if digests.exists() and plain.exists():
        return []
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    digests.parent.mkdir(mode=0o755, exist_ok=True)
    tokens = {role: secrets.token_urlsafe(TOKEN_BYTES) for role in ROLES}
    # The plain tokens first: a digest is never on disk without its token.
    write(plain, "".join(f"{role} {token}\n" for role, token in tokens.items()).encode(), 0o600)
    # Readable by the gateway container's unprivileged user; .certs/ (0700) keeps other
    # users of this machine out.
    lines = [f"{role} {hashlib.sha256(token.encode()).hexdigest()} compose-{role}\n" for role, token in tokens.items()]
    write(digests, ("# Written by `make certs` (deploy/dev_tokens.py); the tokens are in ../api-tokens.txt\n"
                    + "".join(lines)).encode(), 0o644)
    return [plain, digests]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".certs"), help="folder to write into (default .certs)")
    args = parser.parse_args(argv)
    try:
        written = make_tokens(args.out)
    except OSError as exc:
        sys.exit(f"make certs: {exc}")
    if written:
        print(f"wrote the compose stack's API tokens: {args.out / PLAIN} (yours), {args.out / DIGESTS} (the gateway's)")
    else:
        print(f"kept the compose stack's API tokens in {args.out / PLAIN}; delete it and {args.out / DIGESTS} "
              "for new ones")


if __name__ == "__main__":
    main()
