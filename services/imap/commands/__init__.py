"""Command handlers, one module per command family. Each handler is
`async (session, command) -> Reply | None` (None = OK completed) and raises ImapError for NO/BAD."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from . import append, auth, copy, fetch, idle, mailboxes, misc, quota, search, select, store

if TYPE_CHECKING:
    from ..protocol import Command
    from ..session import Reply, Session

Handler = Callable[["Session", "Command"], Awaitable["Reply | None"]]

HANDLERS: dict[str, Handler] = {}
for _module in (misc, auth, mailboxes, select, fetch, store, search, copy, append, idle, quota):
    HANDLERS.update(_module.HANDLERS)
