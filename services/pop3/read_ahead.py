"""How much a POP3 session fetches ahead of RETR (the mechanism: services/common/read_ahead.py).

Clients retrieve in order, so a session fetches the next messages in one FetchBodies call. Each
session takes at most PER_SESSION bytes of the process's budget (`pop3_read_ahead_bytes`).
"""

from __future__ import annotations

# A call costs ~1 ms of CPU on each side (grpc.aio, 2 cores): 4 MiB (~150 typical messages) per call
# measured ~5% more messages/s than 2 MiB in bench/pop3_load.py; memory stays within the budget.
PER_SESSION = 4 * 1024 * 1024
MAX_MESSAGES = 128  # per FetchBodies call
