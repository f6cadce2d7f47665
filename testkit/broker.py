"""RabbitMQ nodes of their own with the management plugin, and one started as docker
compose and k8s/backing-services start theirs: with the accounts and task topology of
k8s/backing-services/rabbitmq-definitions.json, written by its rabbitmq-definitions.py
with the passwords' hashes and loaded at the node's start."""

import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import amqp

from testkit.stores import RabbitMQServer, free_ports

BACKING_SERVICES = Path(__file__).resolve().parents[1] / "k8s/backing-services"
DEFINITIONS_TEMPLATE = BACKING_SERVICES / "rabbitmq-definitions.json"
DEFINITIONS_SCRIPT = BACKING_SERVICES / "rabbitmq-definitions.py"
DEFINITIONS_CONF = BACKING_SERVICES / "rabbitmq-definitions.conf"


def definitions_template() -> dict:
    return json.loads(DEFINITIONS_TEMPLATE.read_text())


def password_variables() -> dict[str, str]:
    """{user: the variable holding its password} of the template."""
    return {user["name"]: user["password_hash"][2:-1] for user in definitions_template()["users"]}


class ManagementRabbitMQ(RabbitMQServer):
    """A RabbitMQ of its own with the management plugin, its API on a free port."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        (self.api_port,) = free_ports(1)
        (self.folder / "enabled_plugins").write_text("[rabbitmq_management].\n")
        with open(self.folder / "rabbitmq.conf", "a") as conf:
            conf.write(f"management.tcp.port = {self.api_port}\nmanagement.tcp.ip = 127.0.0.1\n")

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api"

    @property
    def ports(self) -> list[int]:
        return [*super().ports, self.api_port]

    def is_ready(self) -> bool:
        if not super().is_ready():
            return False
        try:
            urllib.request.urlopen(f"{self.api}/overview", timeout=2)
        except urllib.error.HTTPError:
            return True  # answering, if only to say who may ask
        except OSError:
            return False
        return True


class DefinitionsRabbitMQ(ManagementRabbitMQ):
    """The broker of compose and Kubernetes: rabbitmq-definitions.py writes the definitions
    with a random password per user, and the node loads them at its start (as
    rabbitmq-definitions.conf has the image's node do). No guest: the definitions' users
    are the only ones."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        self.passwords = {user: secrets.token_urlsafe(16) for user in password_variables()}
        self.definitions_file = self.folder / "definitions.json"
        with open(self.folder / "rabbitmq.conf", "a") as conf:
            conf.write(f"load_definitions = {self.definitions_file}\n")

    def prepare(self):
        env = {"PATH": os.environ["PATH"], "RABBITMQ_DEFINITIONS_FILE": str(self.definitions_file),
               **{password_variables()[user]: password for user, password in self.passwords.items()}}
        done = subprocess.run([sys.executable, str(DEFINITIONS_SCRIPT), "start", "true"], env=env,
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode:
            raise RuntimeError(f"rabbitmq-definitions.py failed: {done.stderr}")
        super().prepare()

    def url_for(self, user: str, vhost: str = "/") -> str:
        return f"amqp://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def queue_length(self, queue: str, vhost: str = "/") -> int:
        """Messages in the queue, ready ones, as the node's administrator sees them now
        (rabbitmqctl's count of a quorum queue lags)."""
        connection = amqp.Connection(f"127.0.0.1:{self.port}", userid="admin", password=self.passwords["admin"],
                                     virtual_host=vhost)
        connection.connect()
        try:
            return connection.channel().queue_declare(queue, passive=True).message_count
        finally:
            connection.close()
