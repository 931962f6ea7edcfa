"""Sample messages for the mailstore's message-analysis tests.

The .eml files are kept with LF line endings so that editors and git settings cannot change them;
`load` turns them into what arrives over SMTP/IMAP (CRLF), except the samples that are about odd
line endings or bytes, which are loaded exactly as stored.
"""

from pathlib import Path

HERE = Path(__file__).parent
AS_STORED = {"bare-lf.eml", "garbage.eml"}
SAMPLES = sorted(p.name for p in HERE.glob("*.eml"))


def load(name: str) -> bytes:
    data = (HERE / name).read_bytes()
    return data if name in AS_STORED else data.replace(b"\n", b"\r\n")
