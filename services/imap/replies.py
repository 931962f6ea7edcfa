"""How a command or a session ends: the tagged completion (Reply), the NO/BAD outcome a handler
raises (ImapError, RFC 9051 §7.1), and the two ways a connection ends (EndSession with `* BYE`,
ClientGone). Every other IMAP module may import this one; it imports none of them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Reply:
    """The tagged completion of a command (status "" when the handler answered already)."""

    status: str = "OK"
    text: str = "completed"
    code: str | None = None


class ImapError(Exception):
    """Ends a command with `tag NO|BAD [code] text`."""

    def __init__(self, status: str, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code


def no(text: str, code: str | None = None) -> ImapError:
    return ImapError("NO", text, code)


def bad(text: str, code: str | None = None) -> ImapError:
    return ImapError("BAD", text, code)


class ClientGone(Exception):
    """The client closed the connection."""


class EndSession(Exception):
    """Close the connection after sending `* BYE text`."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
