"""The default bench's report: targets, the Markdown table, the results JSON and where it is saved."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
from typing import Any

import workload
from servers import HERE, HOOK, ROOT, Budget, LogTail

RESULTS = HERE / "results"

TARGETS = {  # the product's targets (reload: live within 1 s)
    "acknowledged": ("≥ 70% of transport", lambda f: f["ratio"] is not None and f["ratio"] >= 0.70),
    "hooks": ("≥ 80% of spawn", lambda f: f["ratio"] is not None and f["ratio"] >= 0.80),
    "latency": ("p99 ≤ 10 ms", lambda f: f["p99_ms"] is not None and f["p99_ms"] <= 10),
    "rss": ("idle ≤ 30 MiB", lambda f: f["idle_mib"] is not None and f["idle_mib"] <= 30),
    "ready": ("≤ 0.5 s", lambda f: f["median_s"] is not None and f["median_s"] <= 0.5),
    "reload": ("≤ 1 s", lambda f: f["median_s"] is not None and f["max_s"] <= 1.0),
}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def mib(kib: int | None) -> float | None:
    return round(kib / 1024, 1) if kib is not None else None


def fmt(x: float | None, spec: str = ".0f", unit: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{unit}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


MEASURED_BY = {"acknowledged": "ratio", "hooks": "ratio", "latency": "p99_ms", "rss": "idle_mib",
               "ready": "median_s", "reload": "median_s"}


def passed(key: str, figure: dict) -> bool | None:
    """True or False against the target; None when the figure was not measured (or no reload)."""
    if figure.get(MEASURED_BY[key]) is None:
        return None
    return bool(TARGETS[key][1](figure))


def verdict(key: str, figure: dict) -> str:
    result = passed(key, figure)
    return f"{TARGETS[key][0]}: {'n/a' if result is None else 'pass' if result else 'MISS'}"


def table(res: dict) -> str:
    f = res["figures"]
    c = res["ceilings"]
    drain_ratio = ratio(f["hooks"]["drain_only_per_s"], c["spawn"]["per_s"])
    rows = [
        ("1", "rejected deliveries/s (401, bad signature)", fmt(f["rejected"]["per_s"]),
         f"{fmt(c['transport']['per_s'])} transport", fmt(f["rejected"]["ratio"], ".0%"), "—"),
        ("2", "acknowledged deliveries/s (200, hook queued)", fmt(f["acknowledged"]["per_s"]),
         f"{fmt(c['transport']['per_s'])} transport ({fmt(c['durable_transport']['per_s'])} with a commit)",
         fmt(f["acknowledged"]["ratio"], ".0%"), verdict("acknowledged", f["acknowledged"])),
        ("3", "hooks executed/s, end to end (after the load stopped)",
         f"{fmt(f['hooks']['per_s'])} ({fmt(f['hooks']['drain_only_per_s'])})", f"{fmt(c['spawn']['per_s'])} spawn",
         f"{fmt(f['hooks']['ratio'], '.0%')} ({fmt(drain_ratio, '.0%')})",
         verdict("hooks", f["hooks"])),
        ("4", f"200 latency at {res['settings']['rate']:g} req/s, p50 / p99",
         f"{fmt(f['latency']['p50_ms'], '.1f')} / {fmt(f['latency']['p99_ms'], '.1f')} ms",
         f"{fmt(c['latency']['p50_ms'], '.1f')} / {fmt(c['latency']['p99_ms'], '.1f')} ms bare server", "",
         verdict("latency", f["latency"])),
        ("5", "RSS idle / peak", f"{fmt(f['rss']['idle_mib'], '.1f')} / {fmt(f['rss']['peak_mib'], '.1f')} MiB",
         "", "", verdict("rss", f["rss"])),
        ("6", "start-to-ready (spawn → 200 on /readyz)", fmt(f["ready"]["median_s"], ".2f", " s"), "", "",
         verdict("ready", f["ready"])),
        ("7", "config reload → new route live",
         (f"{fmt(f['reload']['median_s'], '.2f')} s (max {fmt(f['reload']['max_s'], '.2f')})"
          if f["reload"].get("supported") else f["reload"].get("note", "n/a")), "", "", verdict("reload", f["reload"])),
    ]
    out = ["| # | figure | value | ceiling | ratio | target |", "|---|---|---|---|---|---|"]
    out += [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(out)


def describe(res: dict) -> str:
    m, s = res["machine"], res["settings"]
    return (f"{m['cores']} cores, Python {m['python']}, load {m['loadavg_start']}; {s['tool']}, "
            f"{s['connections']} keep-alive connections, median of {s['rounds']} x {s['seconds']} s rounds; "
            f"sidecar --log-level {s['log_level']}, max_workers {s['workers']}, spool: {res['spool']}")


def git_facts() -> dict:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "sidecar").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "sidecar_dirty": bool(git("status", "--porcelain", "--", "sidecar")),
            "sidecar_sha256": digest.hexdigest()[:16]}


def build_results(args: argparse.Namespace, tool_name: str, started: dt.datetime, ready: dict, rounds: list[dict],
                  reload: dict, idle: dict, peak: dict, spool_files: list[str], log: LogTail, budget: Budget,
                  profiles: dict) -> dict:
    def med(path: list[str]) -> float | None:
        vals = []
        for r in rounds:
            v: Any = r
            for k in path:
                v = v.get(k) if isinstance(v, dict) else None
            if v is not None:
                vals.append(v)
        return median(vals)

    transport = med(["transport", "rate"])
    spawn = med(["spawn", "rate"])
    rejected = med(["rejected", "rate"])
    acknowledged = med(["accepted", "acknowledged_per_s"])
    hooks = med(["accepted", "hooks_per_s"])
    figures = {
        "rejected": {"per_s": rejected, "ratio": ratio(rejected, transport),
                     "samples": [round(r["rejected"]["rate"], 1) for r in rounds]},
        "acknowledged": {"per_s": acknowledged, "ratio": ratio(acknowledged, transport),
                         "samples": [round(r["accepted"]["acknowledged_per_s"], 1) for r in rounds],
                         "busy_503": sum(r["accepted"]["busy_503"] for r in rounds)},
        "hooks": {"per_s": hooks, "ratio": ratio(hooks, spawn),
                  "samples": [r["accepted"]["hooks_per_s"] and round(r["accepted"]["hooks_per_s"], 1) for r in rounds],
                  "drain_only_per_s": med(["accepted", "drain_hooks_per_s"]),
                  "all_drained": all(r["accepted"]["drained"] for r in rounds),
                  "outcomes": dict(log.outcomes)},
        "latency": {"p50_ms": med(["paced", "latency_ms", "p50"]), "p99_ms": med(["paced", "latency_ms", "p99"]),
                    "p99_samples_ms": [r["paced"]["latency_ms"].get("p99") for r in rounds],
                    "p999_ms": med(["paced", "latency_ms", "p999"]),
                    "service_p99_ms": med(["paced", "service_ms", "p99"]),
                    "achieved_rate": med(["paced", "rate"]),
                    "non_200": sum(n for r in rounds for code, n in r["paced"]["statuses"].items() if code != "200")
                    + sum(r["paced"]["failures"] for r in rounds)},
        "rss": {"idle_mib": mib(idle.get("VmRSS")), "peak_mib": mib(peak.get("VmHWM")),
                "end_mib": mib(peak.get("VmRSS"))},
        "ready": ready,
        "reload": reload,
    }
    cpu = {  # CPU milliseconds per request of the serving process: what a busy machine does not blur
        "transport_ms": med(["transport", "cpu_ms_per_req"]),
        "durable_transport_ms": med(["durable", "cpu_ms_per_req"]),
        "rejected_ms": med(["rejected", "cpu_ms_per_req"]),
        "acknowledged_ms": med(["accepted", "cpu_ms_per_delivery"]),
        "spawn_ms": med(["spawn", "cpu_ms_per_run"]),
        "hook_ms": med(["accepted", "hook_cpu_ms_per_run"]),
        "spawn_hook_ms": med(["spawn", "hook_cpu_ms_per_run"]),
    }
    for key in TARGETS:
        figures[key]["target"] = TARGETS[key][0]
        figures[key]["pass"] = passed(key, figures[key])
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "git": git_facts(),
        "settings": {"tool": tool_name, "connections": args.connections, "rounds": len(rounds),
                     "seconds": args.seconds, "rate": args.rate, "paced_seconds": args.paced_seconds,
                     "log_level": args.log_level, "workers": args.workers, "hook": HOOK,
                     "body_bytes": len(workload.BODY), "spawn_count": args.spawn_count},
        "spool": (f"{', '.join(spool_files)} in spool_dir" if spool_files
                  else "nothing written to spool_dir (in-memory queue)"),
        "figures": figures,
        "ceilings": {"transport": {"per_s": transport,
                                   "samples": [round(r["transport"]["rate"], 1) for r in rounds]},
                     "durable_transport": {"per_s": med(["durable", "rate"]),
                                           "samples": [round(r["durable"]["rate"], 1) for r in rounds],
                                           "note": "bare handler + one sqlite WAL synchronous=FULL commit per "
                                                   "request; a reference for (2), not the issue's ceiling"},
                     "spawn": {"per_s": spawn, "samples": [round(r["spawn"]["rate"], 1) for r in rounds]},
                     "latency": {"p50_ms": med(["paced_bare", "latency_ms", "p50"]),
                                 "p99_ms": med(["paced_bare", "latency_ms", "p99"]),
                                 "p99_samples_ms": [r["paced_bare"]["latency_ms"].get("p99") for r in rounds]}},
        "cpu_per_request": cpu,
        "log_counts": dict(log.counts),
        "skipped": budget.skipped,
        "rounds": rounds,
        "profiles": profiles,
    }


def save(res: dict, started: dt.datetime, prefix: str = "") -> str:
    """bench/results/<prefix><stamp>.json and <prefix>latest.json; the stamped file's name."""
    RESULTS.mkdir(exist_ok=True)
    stamp = prefix + started.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(res, indent=1, ensure_ascii=False) + "\n"
    (RESULTS / f"{stamp}.json").write_text(text)
    tmp = RESULTS / f"{prefix}latest.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, RESULTS / f"{prefix}latest.json")
    return f"{stamp}.json"
