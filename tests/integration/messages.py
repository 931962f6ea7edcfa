"""Sample messages shared by the mailstore API tests."""

MULTIPART = (
    b'From: "Alice Example" <alice@example.test>\r\n'
    b'To: bob@example.test, "Carol" <carol@example.test>\r\n'
    b"Subject: Test with attachment\r\n"
    b"Date: Thu, 26 Nov 2026 10:00:00 +0100\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"see attached.\r\n"
    b"--XX\r\n"
    b'Content-Type: application/octet-stream; name="a.bin"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="a.bin"\r\n'
    b"\r\n"
    b"AAECAwQFBgcICQ==\r\n"
    b"--XX\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: dave@remote.test\r\n"
    b"Subject: inner\r\n"
    b'Content-Type: multipart/alternative; boundary="YY"\r\n'
    b"\r\n"
    b"--YY\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"inner text\r\n"
    b"--YY\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>inner</p>\r\n"
    b"--YY--\r\n"
    b"\r\n"
    b"--XX--\r\n"
)


def simple(subject: str, body: str = "hello\r\n", sender: str = "s@remote.test") -> bytes:
    return (
        f"From: {sender}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
        f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\n{body}"
    ).encode()


def between(data: bytes, start: bytes, end: bytes) -> bytes:
    """The bytes after the first `start` up to the following `end`."""
    i = data.index(start) + len(start)
    return data[i : data.index(end, i)]
