"""Leases: two workers never deliver one message; a worker killed mid-delivery loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path

from mailstack.services.common.config import env_name
from mailstack.v1 import send_pb2 as spb

from tests.e2e.outbound_support import ALICE, ScriptedMx, outbound_stack, scripted_mx, structured
from tests.fixtures.mailstore import identity_env

DELIVERED = spb.DELIVERY_DELIVERED


async def test_two_workers_never_deliver_the_same_message(tmp_path: Path) -> None:
    mx = ScriptedMx()
    async with scripted_mx(mx) as port, outbound_stack(tmp_path, {"remote.test": port}) as stack:
        ids = []
        for n in range(30):
            reply = await stack.send(spb.SendHeader(structured=structured(ALICE, [f"r{n}@remote.test"])))
            ids.append(reply.rfc5322_message_id)
        await stack.start_worker(outbound_concurrency=4)
        await stack.start_worker(outbound_concurrency=4)
        await stack.wait_for(lambda: len(mx.received) >= 30)
        await asyncio.sleep(0.3)  # a duplicate would arrive now
        delivered = Counter(r.message["Message-ID"].strip("<>") for r in mx.received)
        assert sorted(delivered) == sorted(ids)
        assert set(delivered.values()) == {1}
        assert mx.max_in_data > 1  # the workers did deliver in parallel, just never the same message


async def test_a_worker_killed_mid_delivery_loses_nothing(tmp_path: Path) -> None:
    hold = threading.Event()
    mx = ScriptedMx(hold=hold)
    async with scripted_mx(mx) as port, outbound_stack(tmp_path, {"remote.test": port}) as stack:
        reply = await stack.send(spb.SendHeader(structured=structured(ALICE, ["bob@remote.test"])))
        env = dict(os.environ)
        env.update({
            env_name("data_dir"): str(tmp_path / "worker"),
            env_name("mailstore_addr"): stack.mailstore.address,
            env_name("outbound_resolver"): stack.settings.outbound_resolver,
            env_name("outbound_lease_seconds"): "2",
            env_name("outbound_poll_ms"): "50",
            **identity_env(stack.settings.data_dir, "outbound"),
        })  # fmt: skip
        with (tmp_path / "worker.log").open("wb") as log:
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mailstack", "serve", "outbound", env=env, stdout=log, stderr=log
            )
        try:
            entered = await asyncio.to_thread(mx.entered_data.wait, 30)
            assert entered, (tmp_path / "worker.log").read_text()
            worker.send_signal(signal.SIGKILL)  # mid-DATA: the MX has the message, the queue does not know
        finally:
            if worker.returncode is None:
                worker.kill()
            await asyncio.wait_for(worker.wait(), 10)
        hold.set()
        status = await stack.status(reply.message_id)
        assert status.recipients[0].state == spb.DELIVERY_QUEUED  # not lost, not marked delivered
        await stack.start_worker(outbound_lease_seconds=2)  # "after restart"
        status = await stack.wait_status(reply.message_id, lambda s: s.recipients[0].state == DELIVERED)
        # Never lost; at most one duplicate (the killed worker's copy reached the MX before it died).
        assert 1 <= len(mx.received) <= 2
        assert status.recipients[0].attempts == 1  # the unreported attempt left no trace but the lease
