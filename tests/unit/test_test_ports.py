"""The test fixtures' port picker: ports outside the ephemeral range, so no client socket of the
run can take one between the probe and the server's bind (the cause of two CI failures)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.fixtures.ports import free_port, free_port_pair, free_ports


def _ephemeral() -> range:
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


def test_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    ports = free_ports(50)
    assert len(set(ports)) == 50
    for port in ports:
        assert port not in _ephemeral() and port not in range(23000, 24000)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_an_outgoing_connection_never_gets_a_handed_out_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        clients = [socket.create_connection(server.getsockname()) for _ in range(50)]
        try:
            local = {c.getsockname()[1] for c in clients}
            assert not local & {free_port() for _ in range(50)}
            assert local <= set(_ephemeral())
        finally:
            for c in clients:
                c.close()


def test_a_pair_is_offset_apart_and_both_free() -> None:
    low, high = free_port_pair(10000)
    assert high - low == 10000 and high not in _ephemeral()
    for port in (low, high):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    assert free_port() not in (low, high)
