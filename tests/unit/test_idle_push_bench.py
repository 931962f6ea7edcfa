"""bench/idle_push.py's pure parts: which lines are EXISTS responses (RFC 9051 §7.4.1), percentiles,
the latency of each delivery at each client, /proc fields and DATA's dot-stuffing (RFC 5321 §4.5.2)."""

from __future__ import annotations

import pytest

from bench.idle_push import Summary, dot_stuff, latencies, parse_exists, percentile, status_kib


def test_exists_lines_and_only_those() -> None:
    assert parse_exists(b"* 12 EXISTS\r\n") == 12
    assert parse_exists(b"* 0 exists\r\n") == 0
    assert parse_exists(b"* 3 RECENT\r\n") is None
    assert parse_exists(b"* 2 EXPUNGE\r\n") is None
    assert parse_exists(b"* OK [UIDNEXT 5 EXISTS] no\r\n") is None
    assert parse_exists(b"a OK 4 EXISTS\r\n") is None
    assert parse_exists(b"* 4 FETCH (FLAGS (EXISTS))\r\n") is None


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(list(reversed(values)), 95) == 95  # order does not matter
    assert percentile([7.0], 99) == 7
    assert percentile([], 50) == 0.0
    assert percentile([1.0, 2.0], 0) == 1


def test_every_client_counts_for_every_delivery() -> None:
    sent = {6: 10.0, 7: 20.0}  # the 250s of the deliveries that made 6 and then 7 messages
    seen = [[(6, 10.05), (7, 20.10)], [(6, 10.02), (7, 20.01)]]
    values, missing = latencies(sent, seen)
    assert missing == 0
    assert sorted(round(v, 3) for v in values) == [0.01, 0.02, 0.05, 0.1]


def test_an_exists_that_skips_a_count_answers_both_and_a_silent_client_is_missing() -> None:
    sent = {2: 1.0, 3: 1.5}
    values, missing = latencies(sent, [[(3, 2.0)], []])
    assert sorted(values) == [0.5, 1.0]  # told both at 2.0
    assert missing == 2  # the second client saw neither


def test_an_exists_from_before_the_delivery_does_not_count() -> None:
    values, missing = latencies({5: 3.0}, [[(4, 1.0)]])
    assert (values, missing) == ([], 1)


def test_summary_of_latencies() -> None:
    s = Summary.of([0.010, 0.020, 0.030, 0.500], missing=1)
    assert (s.p50, s.p95, s.p99, s.max, s.samples, s.missing) == (0.02, 0.5, 0.5, 0.5, 4, 1)
    assert "500.0" in s.line()


def test_proc_status_fields() -> None:
    text = "Name:\timap\nVmHWM:\t  9000 kB\nVmRSS:\t  8123 kB\nRssAnon:\t 100 kB\n"
    assert status_kib(text, "VmRSS") == 8123
    assert status_kib(text, "Pss") == 0
    assert status_kib("Rss:  10 kB\nPss:  7 kB\n", "Pss") == 7


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n"),
        (b".\r\n", b"..\r\n"),
        (b"no final line break", b"no final line break\r\n"),
        (b"x\r\n\r\n", b"x\r\n\r\n"),
    ],
)
def test_dot_stuffing(data: bytes, wire: bytes) -> None:
    assert dot_stuff(data) == wire
