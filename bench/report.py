"""The pure part of the bench: scenario records, ratios, targets, the pgbench script,
the result schema, the markdown table and the plots. No processes, no database."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

SCHEMA_VERSION = 1
UUID = re.compile(
    r"(?<![0-9a-f])(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})(?![0-9a-f])"
)
SCENARIO_KEYS = {"id", "name", "measured", "baseline", "ratio", "targets", "details"}
TOP_LEVEL_KEYS = {
    "schema_version",
    "profile",
    "started_at",
    "duration_s",
    "git",
    "environment",
    "scenarios",
}


def ratio(value: float, baseline: float) -> float | None:
    """value / baseline, or None when there is no baseline figure to divide by."""
    if not baseline:
        return None
    return round(value / baseline, 3)


def target(name: str, value: float | None, op: str, limit: float) -> dict:
    """One target; `met` is None when the figure could not be measured."""
    if op not in (">=", "<=", "=="):
        raise ValueError(f"unknown operator {op!r}")
    met = None
    if value is not None:
        met = {">=": value >= limit, "<=": value <= limit, "==": value == limit}[op]
    return {"name": name, "value": value, "op": op, "limit": limit, "met": met}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 2)

    return {"p50": at(50), "p90": at(90), "p99": at(99), "max": round(ordered[-1], 2)}


def _measure(label: str, figures: dict) -> dict:
    measured = {
        "label": label,
        "rps": figures["rps"],
        "latency_ms": figures.get("latency_ms", {}),
        "errors_5xx": figures.get("errors_5xx", 0),
        "non_2xx": figures.get("non_2xx", 0),
    }
    if "rounds_rps" in figures:  # the best of these rounds counts
        measured["rounds_rps"] = figures["rounds_rps"]
    return measured


def _scenario(id_, name, measured, baseline, targets=(), **details) -> dict:
    base_rps = baseline["rps"] if baseline else 0
    return {
        "id": id_,
        "name": name,
        "measured": measured,
        "baseline": baseline,
        "ratio": ratio(measured["rps"], base_rps) if baseline else None,
        "targets": list(targets),
        "details": details,
    }


# --- scenarios --------------------------------------------------------------------------


def scenario_b0(bare: dict) -> dict:
    return _scenario("1", "B0: bare Django JSON view, no middleware", _measure("B0", bare), None)


def scenario_middleware(full: dict, bare: dict) -> dict:
    s = _scenario(
        "2",
        "Middleware tax: the same view through the full middleware stack",
        _measure("full middleware", full),
        _measure("B0", bare),
    )
    s["targets"] = [target("ratio to B0", s["ratio"], ">=", 0.75)]
    return s


def scenario_detail(cached: dict, uncached: dict, full: dict, bare: dict) -> dict:
    s = _scenario(
        "3",
        "Product detail, cached (uncached in details)",
        _measure("cached", cached),
        _measure("B0", bare),
        uncached=_measure("uncached", uncached),
        uncached_ratio_to_b0=ratio(uncached["rps"], bare["rps"]),
        # The middleware tax (scenario 2) is in the B0 ratio; this ratio is without it.
        cached_ratio_to_full_middleware=ratio(cached["rps"], full["rps"]),
    )
    s["targets"] = [target("cached ratio to B0", s["ratio"], ">=", 0.6)]
    return s


def scenario_list(listing: dict, queries: int, bare: dict) -> dict:
    return _scenario(
        "4",
        "Product list, 20 per page, with filters",
        _measure("list", listing),
        _measure("B0", bare),
        queries_per_request=queries,
    )


def scenario_order_placement(
    orders_max: dict, sql: dict, at_70: list[dict], rate_70: float, queries: list[dict]
) -> dict:
    ok = [r["latency_ms"] for r in at_70 if r["status"] == 202]
    lat = percentiles(ok)
    baseline = {"label": "pgbench, same SQL", "rps": sql["tps"],
                "latency_ms": {"mean": sql["latency_avg_ms"]}, "errors_5xx": 0,
                "non_2xx": sql["failed"],
                "rounds_rps": sql.get("rounds_rps", [sql["tps"]])}  # fmt: skip
    s = _scenario(
        "5",
        "Order placement (POST /api/v1/orders, synchronous part)",
        _measure("POST /api/v1/orders", orders_max),
        baseline,
        queries_per_request=counted_queries(queries),
        fixed_rate={
            "rate": round(rate_70, 1),
            "requests": len(at_70),
            "accepted": len(ok),
            "latency_ms": lat,
            "generator_lag_ms": generator_lag(at_70),
        },
    )
    tail = ratio(lat.get("p99", 0), lat.get("p50", 0))
    s["targets"] = [
        target("ratio to pgbench", s["ratio"], ">=", 0.3),
        target("p99/p50 at 70% of max", tail, "<=", 4.0),
    ]
    return s


def generator_lag(records: list[dict]) -> dict[str, float]:
    """How late the open-loop generator sent requests after their due time."""
    return percentiles([(r["sent"] - r["due"]) * 1000 for r in records])


def saga_latencies(records: list[dict], outcome: dict[str, dict]) -> list[float]:
    """POST (due time) to OrderConfirmed, in ms, for the confirmed orders."""
    due = {r["order_id"]: r["due"] for r in records if r.get("order_id")}
    return [
        (o["confirmed_at"] - due[order_id]) * 1000
        for order_id, o in outcome.items()
        if o["confirmed_at"] is not None and order_id in due
    ]


def scenario_saga(
    saga_max: float, rate: float, records: list[dict], outcome: dict, celery_tps: float
) -> dict:
    latencies = saga_latencies(records, outcome)
    lat = percentiles(latencies)
    states: dict[str, int] = {}
    for o in outcome.values():
        states[o["state"]] = states.get(o["state"], 0) + 1
    measured = {"label": f"POST to confirmed at {rate:.1f}/s", "rps": round(rate, 2),
                "latency_ms": lat, "errors_5xx": sum(r["status"] >= 500 for r in records),
                "non_2xx": sum(not 200 <= r["status"] < 300 for r in records)}  # fmt: skip
    baseline = {"label": "saga max throughput (orders/s)", "rps": saga_max, "latency_ms": {},
                "errors_5xx": 0, "non_2xx": 0}  # fmt: skip
    s = _scenario(
        "6",
        "Saga end to end at half the maximum (fixed arrival rate)",
        measured,
        baseline,
        orders=len(records),
        generator_lag_ms=generator_lag(records),
        saga_states=states,
        celery_noop_tasks_per_s=celery_tps,
        latencies_ms=[round(v, 1) for v in latencies],
    )
    s["targets"] = [
        target("p50 ms", lat.get("p50"), "<=", 150),
        target("p99 ms", lat.get("p99"), "<=", 600),
    ]
    return s


def step_breakdown(timelines: list[dict]) -> dict[str, dict]:
    """Percentiles of the time from the previous transition (or the saga's start) to each
    step's end: where a saga's time goes. Retries are counted, not timed."""
    gaps: dict[str, list[float]] = {}
    retries = 0
    for timeline in timelines:
        previous = timeline["started"]
        for kind, step, at in sorted(timeline["transitions"], key=lambda t: t[2]):
            if kind == "step_retry":
                retries += 1
                continue
            gaps.setdefault(f"{kind}:{step}", []).append((at - previous) * 1000)
            previous = at
    breakdown = {name: percentiles(values) for name, values in gaps.items()}
    breakdown["retries"] = {"count": retries}
    return breakdown


def scenario_celery(celery: dict, saga_max: float) -> dict:
    measured = {"label": "no-op tasks/s", "rps": celery["tasks_per_s"], "latency_ms": {},
                "errors_5xx": 0, "non_2xx": 0}  # fmt: skip
    return _scenario(
        "8",
        "Celery baseline: no-op task throughput on the same broker",
        measured,
        None,
        tasks=celery["tasks"],
        publish_per_s=celery["publish_per_s"],
        # A placement saga is 3 step tasks (+ relay kicks): read its rate against this.
        saga_orders_per_s=saga_max,
    )


def scenario_hot_sku(runs: dict, stock: dict, deadlocks: int) -> dict:
    def figures(name: str) -> dict:
        records, outcome = runs[name]
        ends = [o["ended_at"] for o in outcome.values() if o["ended_at"]]
        first = min(r["sent"] for r in records) if records else 0
        rps = round(len(ends) / (max(ends) - first), 2) if ends else 0.0
        states: dict[str, int] = {}
        for o in outcome.values():
            key = o["state"] + (f":{o['reason']}" if o["reason"] else "")
            states[key] = states.get(key, 0) + 1
        return {"label": f"{name}: orders settled/s", "rps": rps,
                "latency_ms": percentiles([r["latency_ms"] for r in records]),
                "errors_5xx": sum(r["status"] >= 500 for r in records),
                "non_2xx": sum(not 200 <= r["status"] < 300 for r in records),
                "orders": len(records), "outcomes": states}  # fmt: skip

    hot, spread = figures("hot"), figures("spread")
    s = _scenario(
        "7",
        "Hot SKU: 100 concurrent buyers of one product with limited stock",
        hot,
        spread,
        stock=stock,
        deadlocks_in_postgres_log=deadlocks,
    )
    s["targets"] = [
        target("ratio to spread load", s["ratio"], ">=", 0.2),
        target("units oversold", stock["oversold"], "==", 0),
        target("deadlocks", deadlocks, "==", 0),
        target("5xx responses", hot["errors_5xx"] + spread["errors_5xx"], "==", 0),
    ]
    return s


# --- pgbench ----------------------------------------------------------------------------


def pgbench_script(queries: list[dict]) -> str:
    """A pgbench transaction script from the SQL one request ran (Django logs its BEGIN
    and COMMIT too, so the transactions come out as they ran).

    Every UUID of the request (order id, idempotency key, event ids; written with or
    without hyphens) becomes a fresh one per pgbench transaction, so its inserts do not
    collide. An id an INSERT returned is kept with `\\gset` and used where the request
    used it (`"table"."id" = N`).
    """
    names: dict[str, str] = {}
    returned: set[str] = set()

    def variable(match: re.Match) -> str:
        value = match.group(0).replace("-", "")
        return ":" + names.setdefault(value, f"u{len(names) + 1}")

    lines: list[str] = []
    for query in queries:
        sql = " ".join(query["sql"].split()).rstrip(";")
        sql = UUID.sub(variable, sql)
        for table in returned:
            sql = re.sub(rf'"{table}"\."id" = \d+', f'"{table}"."id" = :{table}_id', sql)
        inserted = re.match(r'INSERT INTO "(\w+)" .* RETURNING "\1"\."id"$', sql)
        if inserted:
            returned.add(inserted.group(1))
            lines += [sql, f"\\gset {inserted.group(1)}_"]
        else:
            lines.append(sql + ";")
    header = []
    if names:
        columns = ", ".join(f"gen_random_uuid() AS {name}" for name in names.values())
        header = [f"SELECT {columns}", "\\gset"]
    return "\n".join(header + lines) + "\n"


def counted_queries(queries: list[dict]) -> int:
    """SQL statements of a request, without the transaction control Django logs."""
    return sum(1 for q in queries if q["sql"].strip().upper() not in ("BEGIN", "COMMIT"))


# --- schema, table, plots ---------------------------------------------------------------


def validate(results: dict) -> None:
    """Raise ValueError when a result document lacks what the report and plots read."""
    missing = TOP_LEVEL_KEYS - results.keys()
    if missing:
        raise ValueError(f"result lacks {sorted(missing)}")
    if results["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {results['schema_version']} != {SCHEMA_VERSION}")
    if not {"commit", "dirty"} <= results["git"].keys():
        raise ValueError("git needs commit and dirty")
    for s in results["scenarios"]:
        missing = SCENARIO_KEYS - s.keys()
        if missing:
            raise ValueError(f"scenario {s.get('id')} lacks {sorted(missing)}")
        if not isinstance(s["measured"].get("rps"), int | float):
            raise ValueError(f"scenario {s['id']} has no numeric measured rps")
        for t in s["targets"]:
            if not {"name", "value", "op", "limit", "met"} <= t.keys():
                raise ValueError(f"scenario {s['id']} has a malformed target")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value < 10 else f"{value:,.1f}"
    return str(value)


def _targets_cell(targets: list[dict]) -> str:
    marks = {True: "met", False: "**missed**", None: "not measured"}
    return "<br>".join(
        f"{t['name']} {t['op']} {_fmt(t['limit'])}: {_fmt(t['value'])} ({marks[t['met']]})"
        for t in targets
    )


def render_markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"# Bench results {results['started_at']} ({results['profile']})",
        "",
        f"Commit `{results['git']['commit'][:12]}`{' (dirty)' if results['git']['dirty'] else ''}"
        f", {env['cpus']} CPUs ({env['cpu_model']}), PostgreSQL {env['postgresql']}, "
        f"Redis {env['redis']}, Python {env['python']}, Django {env['django']}, "
        f"DJANGO_ENV={env['django_env']}; run took {results['duration_s']} s.",
        f"Server: `gunicorn {env['gunicorn']}`; Celery workers: "
        + "; ".join(
            f"{','.join(w['queues'])} x{w['concurrency']}" for w in env["celery_workers"].values()
        )
        + ".",
        "",
        "| # | scenario | measured | rps | p50 ms | p99 ms | baseline | baseline rps "
        "| ratio | targets |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for s in results["scenarios"]:
        m, b = s["measured"], s["baseline"]
        lat = m.get("latency_ms", {})
        lines.append(
            f"| {s['id']} | {s['name']} | {m['label']} | {_fmt(m['rps'])} "
            f"| {_fmt(lat.get('p50'))} | {_fmt(lat.get('p99'))} "
            f"| {b['label'] if b else '-'} | {_fmt(b['rps']) if b else '-'} "
            f"| {_fmt(s['ratio'])} | {_targets_cell(s['targets'])} |"
        )
    lines += ["", "## Details", ""]
    for s in results["scenarios"]:
        details = {k: v for k, v in s["details"].items() if k != "latencies_ms"}
        if details:
            lines.append(f"- **{s['id']}**: `{json.dumps(details, sort_keys=True)}`")
    missed = [
        f"{s['id']} ({t['name']})"
        for s in results["scenarios"]
        for t in s["targets"]
        if not t["met"]
    ]
    lines += ["", f"Targets missed: {', '.join(missed) if missed else 'none'}.", ""]
    return "\n".join(lines)


def plot(results: dict, out_dir: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = results["scenarios"]
    paths = []

    with_baseline = [s for s in scenarios if s["baseline"] and s["id"] != "6"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = range(len(with_baseline))
    ax.bar([x - 0.2 for x in xs], [s["measured"]["rps"] for s in with_baseline], 0.4,
           label="scenario")  # fmt: skip
    ax.bar([x + 0.2 for x in xs], [s["baseline"]["rps"] for s in with_baseline], 0.4,
           label="its baseline")  # fmt: skip
    for x, s in zip(xs, with_baseline, strict=True):
        ax.annotate(f"x{_fmt(s['ratio'])}", (x, s["measured"]["rps"]), ha="center", va="bottom")
    ax.set_xticks(list(xs), [f"{s['id']}: {s['measured']['label']}" for s in with_baseline],
                  rotation=15, ha="right", fontsize=8)  # fmt: skip
    ax.set_ylabel("requests (orders) per second")
    ax.set_yscale("log")
    ax.set_title("Throughput against baseline")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / f"{stem}-throughput.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    with_latency = [s for s in scenarios if s["measured"].get("latency_ms", {}).get("p50")]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = range(len(with_latency))
    for offset, key in ((-0.25, "p50"), (0, "p90"), (0.25, "p99")):
        heights = [s["measured"]["latency_ms"].get(key, 0) for s in with_latency]
        ax.bar([x + offset for x in xs], heights, 0.25, label=key)
    ax.set_xticks(list(xs), [f"{s['id']}: {s['measured']['label']}" for s in with_latency],
                  rotation=15, ha="right", fontsize=8)  # fmt: skip
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.set_title("Latency percentiles")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / f"{stem}-latency.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    saga = next((s for s in scenarios if s["id"] == "6"), None)
    if saga and saga["details"].get("latencies_ms"):
        values = saga["details"]["latencies_ms"]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(values, bins=40)
        for key, style in (("p50", "--"), ("p99", ":")):
            ax.axvline(saga["measured"]["latency_ms"][key], color="k", linestyle=style,
                       label=f"{key} {saga['measured']['latency_ms'][key]:.0f} ms")  # fmt: skip
        ax.set_xlabel("POST to confirmed, ms")
        ax.set_ylabel("orders")
        ax.set_title(f"Saga latency at {saga['measured']['rps']} orders/s "
                     f"(median {statistics.median(values):.0f} ms)")  # fmt: skip
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / f"{stem}-saga-latency.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def write(results: dict, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    md_path.write_text(render_markdown(results))
    return [json_path, md_path, *plot(results, out_dir, stem)]
