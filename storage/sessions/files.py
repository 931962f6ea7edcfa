"""The session directory of `mailstack serve` worker processes on one host (ADR 0043): one small
file per reporting frontend and per kick order in a private folder of the data dir, written whole
(rename) so a reader never sees half a report. Any worker's mailstore answers `mailstack who` and
`kick` for all of them; expiry is the wall clock, which the workers of one host share."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mailstack.storage.sessions.base import MAX_SESSIONS_PER_REPORT, KickOrder, SessionRecord

REPORT, KICK = "report-", "kick-"


def _name(prefix: str, *key: str) -> str:
    return prefix + hashlib.sha256("\0".join(key).encode()).hexdigest()[:32] + ".json"


class FileSessionDirectory:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def report(self, frontend: str, sessions: Sequence[SessionRecord], ttl: float) -> None:
        if len(sessions) > MAX_SESSIONS_PER_REPORT:
            raise ValueError(f"more than {MAX_SESSIONS_PER_REPORT} sessions in one report")
        path = self.folder / _name(REPORT, frontend)
        if not sessions:
            await asyncio.to_thread(_remove, path)
            return
        data = {"expires": time.time() + ttl, "items": [asdict(s) for s in sessions]}
        await asyncio.to_thread(_write, path, data)

    async def sessions(self, account: str = "") -> list[SessionRecord]:
        items = await asyncio.to_thread(_read_live, self.folder, REPORT)
        found = [SessionRecord(**item) for item in items if not account or item.get("account") == account]
        return sorted(found, key=lambda s: s.started)

    async def kick(self, order: KickOrder, ttl: float) -> None:
        data = {"expires": time.time() + ttl, "items": [asdict(order)]}
        await asyncio.to_thread(_write, self.folder / _name(KICK, order.account, order.protocol), data)

    async def kicks(self) -> list[KickOrder]:
        return [KickOrder(**item) for item in await asyncio.to_thread(_read_live, self.folder, KICK)]

    async def close(self) -> None:
        return None  # the files are the state; a worker's own report is withdrawn by its frontends


def _write(path: Path, data: dict[str, object]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(temporary, path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _read_live(folder: Path, prefix: str) -> list[dict[str, Any]]:
    """The items of every unexpired file of that kind; expired ones are removed, unreadable ones skipped."""
    now, items = time.time(), list[dict[str, Any]]()
    for path in folder.glob(f"{prefix}*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # removed meanwhile, or not ours
            continue
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            continue
        if float(data.get("expires", 0)) <= now:
            _remove(path)
            continue
        items.extend(item for item in data["items"] if isinstance(item, dict))
    return items
