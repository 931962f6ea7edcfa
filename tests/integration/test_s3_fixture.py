"""The SeaweedFS fixture itself: a port chosen free but taken before weed binds it (a connection
flood in another test shares the ephemeral range) must not fail the test that needed S3."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

from tests.fixtures.s3_server import S3Server


def test_a_port_taken_before_the_first_start_is_replaced(tmp_path: Path) -> None:
    server = S3Server(str(tmp_path))
    taken = server.ports["s3.port"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            server.start()
            assert server.ports["s3.port"] != taken
            try:
                urllib.request.urlopen(server.endpoint + "/", timeout=5).close()
            except urllib.error.HTTPError as answer:  # 403 without credentials: S3 is answering
                assert answer.code == 403
        finally:
            server.close()
