"""The harness's pure parts: scenario names, Jain's index, and results.md flagging what an
invalid link measured instead of reporting it."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report
from bench.run import QUICK
from bench.scenarios import GROUPS, SCENARIOS, resolve
from bench.workloads import jain, latency_summary


def test_full_group_holds_the_scenarios_the_issue_names() -> None:
    specs = {s.spec for s in resolve(["full"])}
    assert None in specs  # loopback
    for spec in (
        "",
        "delay 25ms",
        "delay 25ms loss 1%",
        "delay 50ms 10ms loss 2% reorder 5%",
        "rate 20mbit delay 10ms limit 100",
    ):
        assert spec in specs, spec
    assert any(s and "loss gemodel" in s for s in specs)
    assert len(GROUPS["rtt-loss"]) == 25
    assert SCENARIOS["rtt300-loss5"] == "delay 150ms loss 5%"


def test_raw_specs_resolve_and_unknown_names_are_refused() -> None:
    (scenario,) = resolve(["delay 40ms loss 3%"])
    assert scenario.base_rtt == pytest.approx(0.080)
    assert scenario.mean_loss == pytest.approx(0.03)
    (burst,) = resolve(["burst-gemodel"])
    assert burst.bursty and burst.mean_loss == pytest.approx(0.01 / (0.01 + 0.167))
    with pytest.raises(ValueError, match="not a scenario or group"):
        resolve(["no-such-scenario"])


def test_jain_index_is_one_when_equal_and_one_over_n_when_one_takes_all() -> None:
    assert jain([5.0, 5.0, 5.0, 5.0]) == pytest.approx(1.0)
    assert jain([8.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert jain([0.0, 0.0]) is None


def test_p999_needs_a_thousand_samples() -> None:
    few = latency_summary([i / 1000 for i in range(1, 101)])
    assert few["p50_ms"] == pytest.approx(50.0) and few["p99_ms"] == pytest.approx(99.0)
    assert few["p999_ms"] is None
    many = latency_summary([i / 1000 for i in range(1, 1001)])
    assert many["p999_ms"] == pytest.approx(999.0)


def conditions() -> dict[str, Any]:
    return {
        "started_utc": "t",
        "utcp_tree": "abc",
        "profile": "quick",
        "python": "3",
        "implementation": "CPython",
        "trio": "0",
        "kernel": "6",
        "cpu_count": 2,
        "cpu_model": "x",
        "loadavg_start": [1.0, 1.0, 1.0],
        "loadavg_end": [1.0, 1.0, 1.0],
        "kernel_tcp_cc": "cubic",
        "utcp_ccs": ["cubic"],
        "params": {
            "echo_count": 1,
            "echo_seconds": 1,
            "setup_count": 1,
            "msg_count": 1,
            "bulk_seconds": {},
            "parallel": 2,
            "parallel_seconds": 1,
            "load_seconds": 1,
            "load_warmup": 0,
        },
        "bulk_tests": list(QUICK.bulk_tests),
        "loopback_bulk": QUICK.loopback_bulk,
    }


def test_markdown_flags_an_invalid_link_and_withholds_its_figures() -> None:
    (scenario,) = resolve(["delay 10ms"])
    name = scenario.name
    records = [
        {"scenario": name, "stack": "utcp", "test": "echo64", "p50_ms": 21.0, "link_valid": True},
        {"scenario": name, "stack": "kernel", "test": "echo64", "p50_ms": 20.0, "link_valid": True},
        {"scenario": name, "stack": "utcp", "test": "bulk1", "Mbit_s": 12.5, "link_valid": False},
        {"scenario": name, "stack": "kernel", "test": "bulk1", "Mbit_s": 99.0, "link_valid": True},
    ]
    links = [
        {"scenario": name, "stack": "utcp", "tests": ["echo64"], "mode": "emulated"}
        | {"report": {"valid": True, "invalid_reason": None}},
        {"scenario": name, "stack": "utcp", "tests": ["bulk1"], "mode": "emulated"}
        | {"report": {"valid": False, "invalid_reason": "p99 release lateness 9 ms"}},
    ]
    md = report.markdown(conditions(), [scenario], records, links)
    assert "| 64 B echo p50, ms | 21.0 | 20.0 | 1.05 |" in md
    assert "| bulk 1 MB goodput, Mbit/s | invalid | 99.0 | - |" in md
    assert "12.5" not in md
    assert "1 of 2 links INVALID" in md and "utcp bulk1: p99 release lateness 9 ms" in md
