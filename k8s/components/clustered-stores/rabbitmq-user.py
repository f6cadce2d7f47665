"""Gives the application its own account on the RabbitMQ cluster of the RabbitMQ Cluster
Operator, whose only account is the administrator the operator generates (its Secret
<cluster>-default-user): the user RABBITMQ_DEFAULT_USER with the password
RABBITMQ_DEFAULT_PASS, every permission on the vhost RABBITMQ_VHOST (default /), and the
management tag, with which KEDA reads the queues' lengths. It talks to the management
API at RABBITMQ_MANAGEMENT_API as RABBITMQ_ADMIN_USERNAME / RABBITMQ_ADMIN_PASSWORD,
waiting for it up to RABBITMQ_WAIT_S seconds (default 600). Every call is a PUT, so a
second run changes nothing but a changed password."""

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        sys.exit(f"rabbitmq-user: {name} is not set")
    return value


class ManagementApi:
    def __init__(self, url: str, username: str, password: str):
        self.url = url.rstrip("/")
        credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {credentials}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: dict | None = None) -> int:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/{path}", data=data, method=method, headers=self.headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status

    def wait(self, wait_s: float):
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.call("GET", "overview")
                return
            except urllib.error.HTTPError as error:
                if error.code in (401, 403):
                    sys.exit(f"rabbitmq-user: the management API refuses the administrator ({error.code})")
                failure = f"HTTP {error.code}"
            except OSError as error:
                failure = str(error)
            if time.monotonic() > deadline:
                sys.exit(f"rabbitmq-user: the management API at {self.url} did not answer within {wait_s:g} s: "
                         f"{failure}")
            time.sleep(2)


def main():
    api = ManagementApi(os.environ.get("RABBITMQ_MANAGEMENT_API", "http://rabbitmq:15672/api"),
                        required("RABBITMQ_ADMIN_USERNAME"), required("RABBITMQ_ADMIN_PASSWORD"))
    user, password = required("RABBITMQ_DEFAULT_USER"), required("RABBITMQ_DEFAULT_PASS")
    vhost = os.environ.get("RABBITMQ_VHOST", "/")
    api.wait(float(os.environ.get("RABBITMQ_WAIT_S", "600")))
    quoted_user, quoted_vhost = urllib.parse.quote(user, safe=""), urllib.parse.quote(vhost, safe="")
    api.call("PUT", f"users/{quoted_user}", {"password": password, "tags": "management"})
    api.call("PUT", f"vhosts/{quoted_vhost}", {})
    api.call("PUT", f"permissions/{quoted_vhost}/{quoted_user}", {"configure": ".*", "write": ".*", "read": ".*"})
    print(f"rabbitmq-user: {user} has every permission on the vhost {vhost}")


if __name__ == "__main__":
    main()
