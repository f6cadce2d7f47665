"""gRPC credentials for mutual TLS, built from the GRPC_TLS_* settings (docs/security.md):
each process presents the certificate of the service it is (its identity, as
chinook.callers names them). With none of the settings there are none, and servers and
clients speak plaintext."""

import logging
import os
import threading

import grpc

from chinook.config import ConfigError, Settings, TlsFiles, read_tls_files, tls_paths

log = logging.getLogger(__name__)


def channel_credentials(settings: Settings, identity: str | None = None) -> grpc.ChannelCredentials | None:
    """The client's side: trusts servers the CA signed, whose certificate names the host
    dialled, and presents identity's certificate. Read once: a client takes renewed files
    at its next start."""
    files = read_tls_files(settings, identity)
    if files is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=files.ca, private_key=files.key,
                                        certificate_chain=files.cert)


def server_credentials(settings: Settings, identity: str | None = None) -> grpc.ServerCredentials | None:
    """The server's side: presents identity's certificate and refuses a client without a
    certificate the CA signed. Renewed files are taken on the next handshake, without a
    restart."""
    files = read_tls_files(settings, identity)
    if files is None:
        return None
    reloader = CertificateReloader(settings, identity)
    return grpc.dynamic_ssl_server_credentials(_configuration(files), reloader.fetch,
                                               require_client_authentication=True)


def _configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(files.key, files.cert)], root_certificates=files.ca)


class CertificateReloader:
    """grpc calls fetch() before every handshake: it answers a new configuration when the
    files changed since the last look (a renewal), else None (keep the current one)."""

    def __init__(self, settings: Settings, identity: str | None = None):
        self.settings = settings
        self.identity = identity
        self.paths = tls_paths(settings, identity).files
        self._lock = threading.Lock()
        self._seen = self._signature()

    def _signature(self) -> tuple:
        # stat() follows symbolic links: Kubernetes swaps a mounted Secret's files by
        # repointing a link, which gives each file a new inode.
        signature = []
        for path in self.paths:
            try:
                stat = os.stat(path)
                signature.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
            except OSError:
                signature.append(None)
        return tuple(signature)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            seen = self._signature()
            if seen == self._seen:
                return None
            # Whatever happens, not again for the same files: a pair caught half-written
            # changes once more when the writer is done.
            self._seen = seen
            try:
                files = read_tls_files(self.settings, self.identity)
            except ConfigError as exc:
                log.warning("changed certificate files are not usable, serving the previous ones: %s", exc)
                return None
            if self._signature() != seen:
                # Changed while being read: read again at the next handshake.
                self._seen = None
                return None
            log.info("serving renewed certificate files: %s", ", ".join(self.paths))
            return _configuration(files)
