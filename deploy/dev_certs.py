"""Development certificates for mutual TLS between the services: `make certs`, or
`python -m deploy.dev_certs [--out .certs] [--renew-ca]`.

Writes into the folder (.certs/ by default, ignored by git and by image builds):

    ca.pem, ca-key.pem        the development CA; kept across runs unless --renew-ca
    <service>/ca.crt, tls.crt, tls.key
                              a leaf per service (gateway, cache-svc, persistence-svc,
                              workers), named as docker-compose.yml and Kubernetes
                              (namespace chinook) name it, and localhost, 127.0.0.1 and ::1;
                              compose mounts these folders, and `make run` and the tests
                              read them with GRPC_TLS_DIR=.certs
    dev.pem, dev-key.pem      a leaf naming no service (localhost, 127.0.0.1, ::1): it may
                              call health and reflection only (grpcurl list and describe)

Every run issues new leaves: running it again renews them, and the gRPC servers pick the
new files up on their next handshake (docs/security.md).
"""

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from chinook.callers import SERVICE_HOSTS, dns_names

# Every leaf also names this machine, so each process of `make run` serves on loopback
# with its own certificate.
LOCAL_NAMES = ["localhost"]
LOCAL_ADDRESSES = ["127.0.0.1", "::1"]
CA_DAYS = 3650
LEAF_DAYS = 365
# Peers whose clocks run a little behind still accept a certificate issued just now.
CLOCK_SKEW = datetime.timedelta(minutes=5)


class CertificateError(Exception):
    """The folder holds something unusable; the message names the file."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(days: int = CA_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chinook-writeback development CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(ca_cert: x509.Certificate, ca_key, common_name: str, names: list[str], addresses: list[str] = (),
          days: int = LEAF_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf good as a server (for names and addresses) and as a client."""
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    # Never valid beyond its CA.
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    alternative_names = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write(path: Path, data: bytes, mode: int):
    """Replaces the file in one step, so a process reading it sees the old or the new one."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        out.write(data)
    os.replace(partial, path)


def load_ca(folder: Path):
    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    if not cert_path.exists() and not key_path.exists():
        return None
    for path in (cert_path, key_path):
        if not path.exists():
            raise CertificateError(f"{path} is missing beside its pair: delete the other one, or use --renew-ca")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as exc:
        raise CertificateError(f"{cert_path} and {key_path}: not a PEM certificate and key ({exc}); "
                               "use --renew-ca to make a new CA") from None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise CertificateError(f"{key_path} is not the key of {cert_path}: use --renew-ca to make a new CA")
    return cert, key


def make_certs(folder: Path, renew_ca: bool = False, days: int = LEAF_DAYS) -> list[Path]:
    """Writes the CA (unless one is there and renew_ca is false) and every leaf; returns
    the files written."""
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    existing = None if renew_ca else load_ca(folder)
    if existing is None:
        ca_cert, ca_key = make_ca()
        write(folder / "ca-key.pem", key_pem(ca_key), 0o600)
        write(folder / "ca.pem", cert_pem(ca_cert), 0o644)
        written += [folder / "ca.pem", folder / "ca-key.pem"]
    else:
        ca_cert, ca_key = existing
    # Names no service, so the servers let it call health and reflection only.
    cert, key = issue(ca_cert, ca_key, "chinook-writeback development", LOCAL_NAMES, LOCAL_ADDRESSES, days)
    write(folder / "dev-key.pem", key_pem(key), 0o600)
    write(folder / "dev.pem", cert_pem(cert), 0o644)
    written += [folder / "dev.pem", folder / "dev-key.pem"]
    for service, hosts in SERVICE_HOSTS.items():
        service_folder = folder / service
        service_folder.mkdir(mode=0o755, exist_ok=True)
        cert, key = issue(ca_cert, ca_key, service, dns_names(hosts) + LOCAL_NAMES, LOCAL_ADDRESSES, days)
        # Readable by the containers' unprivileged user, whose uid is not this one; the
        # parent folder (0700) keeps other users of this machine out.
        write(service_folder / "tls.key", key_pem(key), 0o644)
        write(service_folder / "tls.crt", cert_pem(cert), 0o644)
        write(service_folder / "ca.crt", cert_pem(ca_cert), 0o644)
        written += [service_folder / "ca.crt", service_folder / "tls.crt", service_folder / "tls.key"]
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".certs"), help="folder to write into (default .certs)")
    parser.add_argument("--renew-ca", action="store_true", help="make a new CA even if the folder holds one")
    parser.add_argument("--days", type=int, default=LEAF_DAYS, help=f"validity of the leaves (default {LEAF_DAYS})")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error(f"--days must be positive, got {args.days}")
    try:
        written = make_certs(args.out, args.renew_ca, args.days)
    except (CertificateError, OSError) as exc:
        sys.exit(f"make certs: {exc}")
    kept = "" if args.out / "ca.pem" in written else f" (kept the CA in {args.out}; --renew-ca makes a new one)"
    print(f"wrote{kept}:")
    for path in written:
        print(f"  {path}")
    print("For `make run` and the tests with mutual TLS, each process with its own certificate:")
    print(f"  export GRPC_TLS_DIR={args.out.resolve()}")


if __name__ == "__main__":
    main()
