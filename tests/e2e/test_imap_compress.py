"""COMPRESS=DEFLATE (RFC 4978) over a raw socket wrapped in zlib both ways (imaplib has no COMPRESS):
the tagged OK in the clear and every octet after it compressed, commands pipelined behind COMPRESS,
literals both ways, IDLE pushes, COMPRESSIONACTIVE, and the limits on decompressed input (a deflate
bomb is a long line or a big literal like any other: BAD or NO [TOOBIG], the session goes on)."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

from tests.fixtures.imap_server import RawImap, imap_env, message


class DeflateImap(RawImap):
    """RawImap that compresses after `compress()`: raw deflate (wbits -15), a sync flush per send."""

    deflating = False

    def compress(self, tag: str = "z") -> list[bytes]:
        lines = self.command(tag, "COMPRESS DEFLATE")
        if lines[-1].startswith(tag.encode() + b" OK"):
            self.start()
        return lines

    def start(self) -> None:
        self.deflating = True
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        # what already arrived behind the OK is compressed (the server answers pipelined commands)
        self.buffer = self.inflate.decompress(self.buffer)

    def packed(self, data: bytes) -> bytes:
        return self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH)

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.packed(data) if self.deflating else data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; buffered {self.buffer!r}")
            self.buffer += self.inflate.decompress(chunk) if self.deflating else chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += self.inflate.decompress(chunk) if self.deflating else chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def test_compress_deflate_both_ways_with_literals_and_idle(tmp_path: Path) -> None:
    with imap_env(tmp_path, imap_poll_interval=1) as env:
        user = env.new_account()
        raw = DeflateImap(env.port())
        assert raw.command("a", "COMPRESS DEFLATE")[-1].startswith(b"a BAD")  # not before login
        raw.login(user)
        assert b"COMPRESS=DEFLATE" in raw.command("c", "CAPABILITY")[0]
        assert raw.compress("z")[-1] == b"z OK DEFLATE active"
        assert raw.command("z2", "COMPRESS DEFLATE")[-1].startswith(b"z2 NO [COMPRESSIONACTIVE]")
        body = message("squeezed", "a body that goes through deflate\r\n" * 50)
        raw.send(b"b APPEND INBOX {%d}\r\n" % len(body))  # a synchronising literal, compressed
        assert raw.line().startswith(b"+")
        raw.send(body + b"\r\n")
        assert raw.until("b")[-1].startswith(b"b OK [APPENDUID")
        assert raw.command("s", "SELECT INBOX")[-1].startswith(b"s OK [READ-WRITE]")
        raw.send(b"f FETCH 1 BODY.PEEK[]\r\n")
        head = raw.line()
        assert head == b"* 1 FETCH (BODY[] {%d}" % len(body)
        assert raw.read_exact(len(body)) == body
        assert raw.until("f")[-1].startswith(b"f OK")
        # IDLE: a push from another session arrives compressed
        raw.send(b"i IDLE\r\n")
        assert raw.line().startswith(b"+")
        env.append(user, "INBOX", message("pushed"))
        deadline = time.monotonic() + 10
        seen = raw.line()
        while seen != b"* 2 EXISTS" and time.monotonic() < deadline:
            seen = raw.line()
        assert seen == b"* 2 EXISTS"
        raw.send(b"DONE\r\n")
        assert raw.until("i")[-1].startswith(b"i OK")
        raw.close()


def test_commands_pipelined_behind_compress_are_decompressed(tmp_path: Path) -> None:
    with imap_env(tmp_path) as env:
        user = env.new_account()
        raw = DeflateImap(env.port())
        raw.login(user)
        out = zlib.compressobj(6, zlib.DEFLATED, -15)
        behind = out.compress(b"n NOOP\r\n") + out.flush(zlib.Z_SYNC_FLUSH)
        raw.sock.sendall(b"z COMPRESS DEFLATE\r\n" + behind)  # in one segment
        assert raw.line() == b"z OK DEFLATE active"
        raw.start()
        raw.out = out
        assert raw.until("n")[-1].startswith(b"n OK")
        assert raw.command("m", "NOOP")[-1].startswith(b"m OK")
        raw.close()


def test_a_deflate_bomb_meets_the_line_and_literal_limits(tmp_path: Path) -> None:
    with imap_env(tmp_path, imap_max_line=1024, max_message_size=4096) as env:
        user = env.new_account()
        raw = DeflateImap(env.port())
        raw.login(user)
        raw.compress()
        # 64 MiB of one line compress to some 64 KiB: refused as a long line, never held whole
        out = raw.out
        raw.sock.sendall(out.compress(b"a NOOP "))
        for _ in range(64):
            raw.sock.sendall(out.compress(b"x" * (1 << 20)))
        raw.sock.sendall(out.compress(b"\r\n") + out.flush(zlib.Z_SYNC_FLUSH))
        assert raw.line().startswith(b"a BAD")
        assert raw.command("b", "NOOP")[-1].startswith(b"b OK")
        # a LITERAL+ literal far over the limit: NO [TOOBIG], its octets dropped as they inflate
        raw.sock.sendall(out.compress(b"c APPEND INBOX {67108864+}\r\n"))
        for _ in range(64):
            raw.sock.sendall(out.compress(b"\0" * (1 << 20)))
        raw.sock.sendall(out.compress(b"\r\n") + out.flush(zlib.Z_SYNC_FLUSH))
        assert raw.line().startswith(b"c NO [TOOBIG]")
        assert raw.command("d", "NOOP")[-1].startswith(b"d OK")
        raw.close()


def test_invalid_compressed_data_ends_the_session_with_bye(tmp_path: Path) -> None:
    with imap_env(tmp_path) as env:
        user = env.new_account()
        raw = DeflateImap(env.port())
        raw.login(user)
        assert raw.command("z", "COMPRESS FOO")[-1].startswith(b"z BAD")
        raw.compress()
        raw.sock.sendall(b"\xff\xff\xff\xff not deflate")
        assert raw.line().startswith(b"* BYE")
        raw.sock.settimeout(20)
        try:
            rest = raw.sock.recv(100)
        except ConnectionResetError:
            rest = b""
        assert rest == b"", "the server closes the connection after the BYE"
        raw.close()
