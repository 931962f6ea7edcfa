"""Outbound telemetry: /metrics (prometheus text, scraped over HTTP) counts Send calls, attempts,
deliveries, deferrals and bounces by reason, and shows the queue depth; each attempt is a span."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from mailstack.services.common.metrics import MetricsServer
from mailstack.services.common.telemetry import recorded_spans
from mailstack.v1 import send_pb2 as spb
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.outbound_support import ALICE, ScriptedMx, outbound_stack, scripted_mx, structured

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def always_ready() -> bool:
    return True


async def wait_depth(address: str, depth: float, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while (
        now := (await asyncio.to_thread(scrape, address)).get(("mailstack_outbound_queue_depth", frozenset()))
    ) != depth:
        assert time.monotonic() < deadline, f"queue depth {now}, expected {depth}"
        await asyncio.sleep(0.1)


async def test_metrics_count_a_deferral_a_delivery_and_a_bounce(tmp_path: Path) -> None:
    mx = ScriptedMx(replies=["451 4.3.0 try later"])
    metrics = MetricsServer("127.0.0.1", 0, always_ready)
    await metrics.start()
    try:
        with recorded_spans() as exporter:
            async with scripted_mx(mx) as port, outbound_stack(tmp_path, {"remote.test": port}) as stack:
                before = await asyncio.to_thread(scrape, metrics.address)
                # Queued with no worker yet: the gauge shows it.
                first = await stack.send(spb.SendHeader(structured=structured(ALICE, ["bob@remote.test"])))
                await wait_depth(metrics.address, 1)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stack.send(spb.SendHeader(structured=structured("eve@elsewhere.test", ["bob@remote.test"])))
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

                await stack.start_worker()  # 451, then 250 on the retry
                await stack.wait_status(first.message_id, lambda s: s.recipients[0].state == spb.DELIVERY_DELIVERED)
                mx.replies.append("550 5.1.1 <carol@remote.test>: no such user")
                second = await stack.send(spb.SendHeader(structured=structured(ALICE, ["carol@remote.test"])))
                await stack.wait_status(second.message_id, lambda s: s.recipients[0].state == spb.DELIVERY_BOUNCED)
                await wait_depth(metrics.address, 0)
                after = await asyncio.to_thread(scrape, metrics.address)
            every_span = list(exporter.get_finished_spans())
            spans = [s for s in every_span if s.name == "outbound.attempt"]
    finally:
        await metrics.stop()

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("mailstack_send_calls_total", result="accepted") == 2
    assert moved("mailstack_send_calls_total", result="refused") == 1
    assert moved("mailstack_outbound_queued_total") == 2
    assert moved("mailstack_outbound_attempts_total", result="temporary") == 1
    assert moved("mailstack_outbound_attempts_total", result="delivered") == 1
    assert moved("mailstack_outbound_attempts_total", result="permanent") == 1
    assert moved("mailstack_outbound_deferrals_total", reason="4.3.0") == 1
    assert moved("mailstack_outbound_deliveries_total") == 1
    assert moved("mailstack_outbound_bounces_total", reason="5.1.1") == 1

    # One span per attempt (per message and domain), carrying what happened.
    assert sorted(str(s.attributes["outbound.outcomes"]) for s in spans if s.attributes) == [
        "delivered",
        "permanent",
        "temporary",
    ]
    by_message = {s.attributes["outbound.message_id"] for s in spans if s.attributes}
    assert by_message == {first.message_id, second.message_id}
    assert all(s.attributes and s.attributes["outbound.domain"] == "remote.test" for s in spans)
    # Each leased message is a trace of its own: outbound.deliver, its body fetch, attempts and report.
    delivers = {s.context.span_id: s for s in every_span if s.name == "outbound.deliver" and s.context}
    assert len(delivers) == 3 and all(s.parent is None for s in delivers.values())  # 451, retry, 550
    assert all(s.parent is not None and s.parent.span_id in delivers for s in spans)
    for rpc in ("/mailstack.v1.Outbound/FetchOutboundBody", "/mailstack.v1.Outbound/ReportOutbound"):
        calls = [s for s in every_span if s.name == rpc and s.kind == SpanKind.CLIENT]
        assert len(calls) == 3 and {s.parent.span_id for s in calls if s.parent} == set(delivers), rpc
    # The queue polls (many: one per outbound_poll_ms) are never traced, on either side.
    assert not [s for s in every_span if s.name.endswith("/LeaseOutbound") or s.name == "queue.lease_next"]
