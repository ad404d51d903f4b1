"""The bench's pure parts (figures, targets, pgbench script, schema, report, plots), so
they cannot rot between `make bench` runs. The measurements themselves run in `make bench`."""

import json

import pytest

from bench import report
from bench.loadgen import parse_wrk_output

ORDER_ID = "2e7936b0-26d4-5d75-a695-d1f1f4758da4"


def wrk_figures(rps: float, p50: float = 2.0, p99: float = 9.0, errors_5xx: int = 0) -> dict:
    return {
        "rps": rps,
        "latency_ms": {"p50": p50, "p90": p50 * 2, "p99": p99},
        "errors_5xx": errors_5xx,
        "non_2xx": errors_5xx,
    }


def sample_results() -> dict:
    bare = wrk_figures(4000)
    records = [
        {"order_id": f"00000000-0000-4000-8000-{n:012d}", "due": 100.0 + n, "sent": 100.0 + n,
         "status": 202, "latency_ms": 20.0}
        for n in range(10)
    ]  # fmt: skip
    outcome = {
        r["order_id"]: {"state": "succeeded", "reason": "", "ended_at": r["due"] + 0.2,
                        "confirmed_at": r["due"] + 0.1 + n / 100}
        for n, r in enumerate(records)
    }  # fmt: skip
    stock = {"initial": 5, "on_hand": 0, "reserved": 0, "confirmed_orders": 5, "oversold": 0,
             "sold_matches_confirmed": True}  # fmt: skip
    scenarios = [
        report.scenario_b0(bare),
        report.scenario_middleware(wrk_figures(2000), bare),
        report.scenario_detail(wrk_figures(3000), wrk_figures(500), wrk_figures(2000), bare),
        report.scenario_list(wrk_figures(200), 2, bare),
        report.scenario_order_placement(
            wrk_figures(100),
            {"tps": 1000.0, "latency_avg_ms": 10.0, "failed": 0},
            records,
            70.0,
            [{"sql": "BEGIN"}, {"sql": "SELECT 1"}, {"sql": "COMMIT"}],
        ),
        report.scenario_saga(20.0, 10.0, records, outcome, 300.0),
        report.scenario_celery({"tasks": 100, "tasks_per_s": 300.0, "publish_per_s": 900.0}, 20),
        report.scenario_hot_sku(
            {"hot": (records, outcome), "spread": (records, outcome)}, stock, 0
        ),
    ]
    return {
        "schema_version": report.SCHEMA_VERSION,
        "profile": "quick",
        "started_at": "2026-11-25T04:00:00+00:00",
        "duration_s": 60.0,
        "git": {"commit": "0" * 40, "dirty": False},
        "environment": {
            "cpus": 2,
            "cpu_model": "test",
            "platform": "linux",
            "python": "3.11",
            "django": "5.2",
            "postgresql": "15",
            "redis": "7",
            "gunicorn": "x",
            "celery_workers": {"sagas": {"queues": ["sagas"], "concurrency": 4}},
            "django_env": "production",
        },
        "scenarios": scenarios,
    }


def test_ratio_divides_by_the_baseline_and_has_none_without_one():
    assert report.ratio(300, 1000) == 0.3
    assert report.ratio(5, 0) is None


@pytest.mark.parametrize(
    ("value", "op", "limit", "met"),
    [(0.8, ">=", 0.75, True), (0.7, ">=", 0.75, False), (700, "<=", 600, False),
     (0, "==", 0, True), (None, ">=", 1, None)],
)  # fmt: skip
def test_target_is_met_missed_or_not_measured(value, op, limit, met):
    assert report.target("t", value, op, limit)["met"] is met


def test_scenario_ratios_and_targets_come_from_measured_against_baseline():
    scenarios = {s["id"]: s for s in sample_results()["scenarios"]}

    assert scenarios["2"]["ratio"] == 0.5
    assert scenarios["2"]["targets"][0]["met"] is False  # 0.5 < 0.75
    assert scenarios["3"]["targets"][0]["met"] is True  # 0.75 >= 0.6
    assert scenarios["3"]["details"]["cached_ratio_to_full_middleware"] == 1.5
    assert scenarios["5"]["ratio"] == 0.1
    assert scenarios["5"]["details"]["queries_per_request"] == 1  # BEGIN/COMMIT not counted
    saga = scenarios["6"]
    assert saga["measured"]["latency_ms"]["p50"] == pytest.approx(150.0)
    assert [t["met"] for t in saga["targets"]] == [True, True]


def test_percentiles_of_a_sample():
    figures = report.percentiles([float(n) for n in range(1, 101)])
    assert figures == {"p50": 51.0, "p90": 91.0, "p99": 100.0, "max": 100.0}


def test_pgbench_script_gives_each_transaction_fresh_uuids_and_reuses_returned_ids():
    compact = ORDER_ID.replace("-", "")
    queries = [
        {"sql": "INSERT INTO \"core_idem\" (\"key\") VALUES ('11111111-2222-4333-8444-"
                "555555555555') RETURNING \"core_idem\".\"id\""},
        {"sql": "BEGIN"},
        {"sql": f"INSERT INTO \"ev\" (\"id\", \"data\") VALUES ('{compact}'::uuid, "  # noqa: S608 (test data)
                f"'{{\"order_id\": \"{ORDER_ID}\"}}')"},
        {"sql": "COMMIT"},
        {"sql": "UPDATE \"core_idem\" SET \"state\" = 'done' WHERE \"core_idem\".\"id\" = 17"},
    ]  # fmt: skip

    script = report.pgbench_script(queries)

    assert ORDER_ID not in script and compact not in script
    lines = script.splitlines()
    assert lines[:2] == ["SELECT gen_random_uuid() AS u1, gen_random_uuid() AS u2", "\\gset"]
    assert "\\gset core_idem_" in lines
    assert "VALUES (':u2'::uuid, '{\"order_id\": \":u2\"}');" in script  # one order, one var
    assert script.rstrip().endswith('WHERE "core_idem"."id" = :core_idem_id;')
    assert "BEGIN;" in lines and "COMMIT;" in lines


def test_wrk_output_is_parsed_into_rps_latency_and_status_counts():
    output = (
        "Running 1s test\nBENCH_RESULT {\"requests\":2000,\"duration_us\":2000000,"
        "\"socket_errors\":0,\"timeouts\":0,\"p50_us\":1500,\"p90_us\":2000,\"p99_us\":9000,"
        "\"p999_us\":12000,\"max_us\":15000,\"mean_us\":1700.5,\"status\":{\"200\":1990,\"503\":10}}\n"
    )  # fmt: skip
    figures = parse_wrk_output(output)
    assert figures["rps"] == 1000.0
    assert figures["latency_ms"]["p99"] == 9.0
    assert figures["errors_5xx"] == 10 and figures["non_2xx"] == 10


def test_wrk_output_without_a_result_line_is_an_error():
    with pytest.raises(ValueError, match="BENCH_RESULT"):
        parse_wrk_output("wrk: connection refused\n")


def test_validate_accepts_a_full_result_and_rejects_a_broken_one():
    results = sample_results()
    report.validate(results)
    broken = {**results, "scenarios": [{"id": "1", "name": "x"}]}
    with pytest.raises(ValueError, match="lacks"):
        report.validate(broken)
    with pytest.raises(ValueError, match="git"):
        report.validate({k: v for k, v in results.items() if k != "git"})


def test_report_table_lists_every_scenario_and_the_missed_targets():
    markdown = report.render_markdown(sample_results())
    for number in "12345678":
        assert f"\n| {number} | " in markdown
    assert "**missed**" in markdown
    assert "Targets missed: 2 (ratio to B0), 5 (ratio to pgbench)." in markdown


def test_write_produces_json_table_and_plots(tmp_path):
    paths = report.write(sample_results(), tmp_path, "2026-11-25")

    names = sorted(p.name for p in paths)
    assert names == ["2026-11-25-latency.png", "2026-11-25-saga-latency.png",
                     "2026-11-25-throughput.png", "2026-11-25.json", "2026-11-25.md"]  # fmt: skip
    written = json.loads((tmp_path / "2026-11-25.json").read_text())
    report.validate(written)
    assert all(p.stat().st_size > 1000 for p in paths if p.suffix == ".png")


def test_step_breakdown_times_each_step_from_the_previous_one_and_counts_retries():
    timelines = [
        {"started": 10.0, "transitions": [["step_done", "reserve", 10.05],
                                          ["step_retry", "charge", 10.1],
                                          ["step_done", "charge", 10.3]]},
        {"started": 20.0, "transitions": [["step_done", "charge", 20.2],
                                          ["step_done", "reserve", 20.1]]},
    ]  # fmt: skip

    breakdown = report.step_breakdown(timelines)

    assert breakdown["step_done:reserve"]["p50"] == pytest.approx(100.0, abs=0.01)
    assert breakdown["step_done:charge"]["max"] == pytest.approx(250.0, abs=0.01)
    assert breakdown["retries"] == {"count": 1}
