"""RabbitMQ's accounts and the task topology from rabbitmq-definitions.json beside this
file. Its users name their password as "password_hash": "${VARIABLE}": each becomes the
salted SHA-256 of that variable's value, as RabbitMQ stores passwords
(rabbit_password_hashing_sha256), so no password is written anywhere.

    python3 rabbitmq-definitions.py start COMMAND...
        writes the definitions to RABBITMQ_DEFINITIONS_FILE (default
        /tmp/rabbitmq-definitions.json, mode 0600), which rabbitmq-definitions.conf has
        RabbitMQ load at its start, then runs COMMAND in its place: the broker of
        docker compose and of k8s/backing-services, at every start.
    python3 rabbitmq-definitions.py import
        imports them into a running broker through its management API
        (RABBITMQ_MANAGEMENT_API, as RABBITMQ_ADMIN_USERNAME / RABBITMQ_ADMIN_PASSWORD),
        waiting for it up to RABBITMQ_WAIT_S seconds (default 600). Administrators are
        left out: the broker keeps its own (the RabbitMQ Cluster Operator's).

Only Python's standard library: it runs in the broker's image.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TEMPLATE = Path(__file__).with_name("rabbitmq-definitions.json")
PLACEHOLDER = re.compile(r"^\$\{(\w+)\}$")


def fail(message: str):
    sys.exit(f"rabbitmq-definitions: {message}")


def password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def render(template: dict, environ, administrators: bool = True) -> dict:
    """The definitions with every user's password hashed from its variable."""
    definitions = dict(template)
    users = []
    for user in template["users"]:
        if not administrators and "administrator" in user["tags"]:
            continue
        match = PLACEHOLDER.match(user["password_hash"])
        if match is None:
            fail(f"user {user['name']}: password_hash must be \"${{VARIABLE}}\"")
        password = environ.get(match.group(1), "")
        if not password:
            fail(f"{match.group(1)} is not set: it is the password of RabbitMQ's user {user['name']}")
        users.append({**user, "password_hash": password_hash(password)})
    definitions["users"] = users
    names = {user["name"] for user in users}
    definitions["permissions"] = [p for p in template["permissions"] if p["user"] in names]
    return definitions


def load_template() -> dict:
    path = Path(os.environ.get("RABBITMQ_DEFINITIONS_TEMPLATE", TEMPLATE))
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        fail(f"cannot read {path}: {exc}")


def start(command: list[str]):
    if not command:
        fail("usage: rabbitmq-definitions.py start COMMAND... (the broker to run)")
    path = Path(os.environ.get("RABBITMQ_DEFINITIONS_FILE", "/tmp/rabbitmq-definitions.json"))
    text = json.dumps(render(load_template(), os.environ))
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    partial.replace(path)
    os.execvp(command[0], command)


def import_definitions():
    api = os.environ.get("RABBITMQ_MANAGEMENT_API", "http://rabbitmq:15672/api").rstrip("/")
    credentials = [os.environ.get(name, "") for name in ("RABBITMQ_ADMIN_USERNAME", "RABBITMQ_ADMIN_PASSWORD")]
    if not all(credentials):
        fail("RABBITMQ_ADMIN_USERNAME and RABBITMQ_ADMIN_PASSWORD must be set: the broker's administrator")
    definitions = render(load_template(), os.environ, administrators=False)
    body = json.dumps(definitions).encode()
    authorization = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
    wait_s = float(os.environ.get("RABBITMQ_WAIT_S", "600"))
    deadline = time.monotonic() + wait_s
    while True:
        request = urllib.request.Request(f"{api}/definitions", data=body, method="POST",
                                         headers={"Authorization": authorization, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30):
                break
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                fail(f"the management API refuses the administrator ({error.code})")
            if error.code < 500:
                fail(f"the management API refuses the definitions ({error.code}): {error.read()[:500]!r}")
            failure = f"HTTP {error.code}"
        except OSError as error:
            failure = str(error)
        if time.monotonic() > deadline:
            fail(f"the management API at {api} did not answer within {wait_s:g} s: {failure}")
        time.sleep(2)
    users = ", ".join(user["name"] for user in definitions["users"])
    print(f"rabbitmq-definitions: imported the users {users}, their permissions and the task topology")


def main(argv: list[str]):
    if argv[:1] == ["start"]:
        start(argv[1:])
    elif argv == ["import"]:
        import_definitions()
    else:
        fail("usage: rabbitmq-definitions.py start COMMAND... | import")


if __name__ == "__main__":
    main(sys.argv[1:])
