"""free_ports never hands out a port twice in one process: the server a port was picked for
may not have bound it yet when the next one is picked, and the OS readily gives it again."""

import socket

from chinook.local_stores.servers import free_ports


def test_no_port_is_handed_out_twice():
    picked = [port for _ in range(2000) for port in free_ports(1)] + free_ports(50)
    assert len(set(picked)) == len(picked)


def test_the_ports_handed_out_are_free():
    for port in free_ports(5):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
