"""`python bench/run.py --cpus 1 [--baseline REF]`: the one-core figures, optionally A/B.

The sidecar and every hook it starts pinned to core 0 (taskset -c 0; children inherit the
affinity), the load generator and this script on core 1. wrk, 16 keep-alive connections, 2 KB
signed GitHub push deliveries each with its own X-GitHub-Delivery; the hook is
`cat >/dev/null; echo x >> COUNT` (COUNT outside the config directory, which the sidecar watches).
The durable spool is on (spool_dir set: sqlite WAL, synchronous=FULL for the accept commit).

Per variant and round, a fresh sidecar: idle RSS after 1 s, a warm-up, then
 - bad-signature answers/s (closed loop, wrong secret) and its CPU per 401;
 - acknowledged deliveries/s (2xx only) of valid deliveries over --seconds, and wrk's p99 of them;
 - hooks executed/s counted from COUNT over the same window, and end to end: from the start of the
   load until COUNT holds every accepted delivery (the queue drained); the drain rate separately;
 - CPU per delivery from /proc/PID/stat over that whole span: the sidecar's own, and its reaped
   children's (the hooks), and per kind of thread (/proc/PID/task);
and once per round the bare stdlib handler (bench/ceiling.py) on core 0 under the same
bad-signature load. With --baseline REF the same is measured for a `git worktree` of REF
(PYTHONPATH pointing at it, the same venv), rounds interleaved A B / B A so machine noise hits both;
medians and ratios are reported. --stages adds one more run per variant under bench/stages.py:
CPU per delivery split by stage. With --adnanh PATH, adnanh/webhook (that binary, built elsewhere) is
one more variant in the same rounds, configured as bench/adnanh.py says, with ratios sidecar/adnanh.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adnanh
import load
import report
import workload
from report import fmt, median, ratio
from servers import HERE, ROOT, Budget, CeilingServer, LogTail, Sidecar, answer, cpu_of, threads_cpu

SERVER_CPU = "0"
LOAD_CPU = "1"
CONNECTIONS = 16
DRAIN_WAIT_S = 60.0
HOOK_SCRIPT = "cat >/dev/null; echo x >> {count}"
GOALS = {  # the one-core goals, against the baseline (and the bare handler for bad signatures)
    "hooks_per_s": ("≥ 1.5x baseline", lambda r: r >= 1.5),
    "acknowledged_per_s": ("≥ 1.15x baseline", lambda r: r >= 1.15),
    "p99_ms": ("≤ 100 ms", None),
    "rejected_per_s": ("≥ 0.9x bare handler", None),
    "idle_rss_mib": ("not above baseline (±1 %)", lambda r: r <= 1.01),
}
ADNANH_GOALS = {  # against adnanh/webhook (--adnanh)
    "acknowledged_per_s": ("≥ 1.0x adnanh", lambda r: r >= 1.0),
    "hooks_end_to_end_per_s": ("≥ 1.0x adnanh", lambda r: r >= 1.0),
}
OPTIONAL_WRAPS = {"sidecar.spool|sidecar.spool.sqlite.Spool.claim", "sidecar.logs._write", "os.posix_spawnp",
                  "sidecar.workers.Workers._recorded", "sidecar.attempts.report", "sidecar.workers.Workers._record",
                  "sidecar.procs.start", "sidecar.procs.Tracker.started", "sidecar.procs.Hook.reap",
                  "sidecar.procs.Tracker.end", "sidecar.workers.Workers._forget"}
STAGE_ORDER = ["receive+verify", "accept commit", "hand-off", "job read", "spawn", "watch", "journal", "spawner",
               "result record", "log", "spool sync", "spool other"]


@dataclass
class Variant:
    name: str
    root: Path  # a checkout; for kind "adnanh", its binary
    commit: str  # for kind "adnanh", its version
    kind: str = "sidecar"


Server = Sidecar | adnanh.Adnanh


class Accepted:
    """Deliveries accepted from its making on: the sidecar's delivery.accepted log lines; adnanh (no log
    by default) from the 2xx answers the load tool counted (`answered`, set after the load)."""

    def __init__(self, server: Server) -> None:
        self.log = LogTail(server.log_path).read() if isinstance(server, Sidecar) else None
        self.base = self.log.counts["delivery.accepted"] if self.log else 0
        self.answered = 0

    def count(self) -> int:
        return self.log.read().counts["delivery.accepted"] - self.base if self.log else self.answered


def git(*a: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *a], cwd=cwd, capture_output=True, text=True, timeout=60).stdout.strip()


def add_worktree(ref: str) -> Variant:
    path = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    path.rmdir()
    out = subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise SystemExit(f"cannot check out {ref}: {out.stderr.strip()}")
    return Variant("baseline", path, git("rev-parse", "--short", "HEAD", cwd=path))


def remove_worktree(v: Variant) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(v.root)], cwd=ROOT, capture_output=True, timeout=60)
    shutil.rmtree(v.root, ignore_errors=True)


def count_of(path: Path) -> int:
    try:
        return path.stat().st_size // 2  # "x\n" per hook run
    except FileNotFoundError:
        return 0


def start(budget: Budget, v: Variant, args: argparse.Namespace, launcher: list[str] | None = None
          ) -> tuple[Server, Path]:
    # Where hooks may write: /tmp is not granted to sandboxed hooks while the sidecar's state lies beneath it.
    writable = "/var/tmp" if os.access("/var/tmp", os.W_OK) else None
    count_dir = Path(tempfile.mkdtemp(prefix="bench-count-", dir=writable))
    count = count_dir / "count"
    hook = ["/bin/sh", "-c", HOOK_SCRIPT.format(count=count)]
    sc: Server
    if v.kind == "adnanh":
        sc = adnanh.Adnanh(budget, v.root, count, cpus=SERVER_CPU)
    else:
        sc = Sidecar(budget, args.workers, args.log_level, root=v.root, cpus=SERVER_CPU, hook=hook,
                     launcher=launcher)
    try:
        sc.start()
        if isinstance(sc, Sidecar):
            sc.wait_port()
            sc.wait_ready()
    except BaseException:  # SystemExit with the sidecar's log: leave nothing behind
        stop(sc, count)
        raise
    return sc, count


def stop(sc: Server, count: Path) -> None:
    sc.cleanup()
    shutil.rmtree(count.parent, ignore_errors=True)


def valid_load(sc: Server, count: Path, args: argparse.Namespace, tool: str, on_start: Any = None) -> dict:
    """Valid deliveries for --seconds, then wait until every accepted one's hook ran."""
    pid = sc.pid
    acc, n0 = Accepted(sc), count_of(count)
    threads0 = threads_cpu(pid)
    cpu0, kids0 = cpu_of(pid)
    if on_start:
        on_start()
    t0 = time.monotonic()
    r = load.closed(sc.port, args.seconds, CONNECTIONS, True, tool, cpus=LOAD_CPU)
    t1 = time.monotonic()
    n1 = count_of(count) - n0
    acc.answered = r["ok"]
    time.sleep(0.05)  # the last responses' log lines
    wait_until = t1 + DRAIN_WAIT_S
    accepted = acc.count()
    while (n := count_of(count) - n0) < accepted and time.monotonic() < wait_until:
        time.sleep(0.01)
        accepted = acc.count()
    t2 = time.monotonic()
    cpu1, kids1 = cpu_of(pid)
    threads1 = threads_cpu(pid)
    window = t1 - t0
    return {
        "load": r, "acknowledged_per_s": r["ok"] / r["duration_s"], "non_2xx": r["errors"]["status"],
        "p99_ms": r["latency_ms"]["p99"], "p50_ms": r["latency_ms"]["p50"],
        "accepted": accepted, "hooks": n, "drained": n >= accepted,
        "hooks_per_s": n1 / window,  # over the load's window
        "hooks_end_to_end_per_s": n / (t2 - t0),
        "drain_per_s": (n - n1) / (t2 - t1) if n > n1 and t2 > t1 else None,
        "seconds_to_drain": round(t2 - t1, 3),
        "sidecar_cpu_ms_per_delivery": 1000 * (cpu1 - cpu0) / accepted if accepted else None,
        "hook_cpu_ms_per_delivery": 1000 * (kids1 - kids0) / n if n else None,
        "total_cpu_ms_per_delivery": 1000 * (cpu1 - cpu0 + kids1 - kids0) / accepted if accepted else None,
        "threads_cpu_ms_per_delivery": {k: round(1000 * (threads1.get(k, 0) - threads0.get(k, 0)) / accepted, 3)
                                        for k in threads1 if accepted},
        "cpu_s": cpu1 - cpu0, "kids_cpu_s": kids1 - kids0, "span_s": t2 - t0,
    }


def paced_load(sc: Server, count: Path, args: argparse.Namespace) -> dict:
    """Valid deliveries at a fixed --rate (open loop, below capacity) until every hook ran: CPU per
    delivery at the same operating point for every variant (batching, queue length, wake-ups alike),
    which closed-loop overload on a shared machine blurs."""
    pid = sc.pid
    acc, n0 = Accepted(sc), count_of(count)
    cpu0, kids0 = cpu_of(pid)
    threads0 = threads_cpu(pid)
    r = load.paced(sc.port, args.rate, args.paced_seconds, CONNECTIONS, cpus=LOAD_CPU)
    acc.answered = sum(n for status, n in r["statuses"].items() if status.startswith("2"))
    deadline = time.monotonic() + DRAIN_WAIT_S
    while (n := count_of(count) - n0) < (accepted := acc.count()) and time.monotonic() < deadline:
        time.sleep(0.01)
    cpu1, kids1 = cpu_of(pid)
    threads1 = threads_cpu(pid)
    return {"rate": r["rate"], "p99_ms": r["latency_ms"].get("p99"), "p50_ms": r["latency_ms"].get("p50"),
            "accepted": accepted, "hooks": n,
            "sidecar_cpu_ms": 1000 * (cpu1 - cpu0) / accepted if accepted else None,
            "hook_cpu_ms": 1000 * (kids1 - kids0) / n if n else None,
            "threads_cpu_ms": {k: round(1000 * (threads1.get(k, 0) - threads0.get(k, 0)) / accepted, 3)
                               for k in threads1 if accepted}}


def rejected_load(port: int, pid: int, args: argparse.Namespace, tool: str) -> dict:
    c0 = cpu_of(pid)[0]
    r = load.closed(port, args.seconds, CONNECTIONS, False, tool, cpus=LOAD_CPU)
    c1 = cpu_of(pid)[0]
    return {"per_s": r["rate"], "cpu_ms_per_request": 1000 * (c1 - c0) / r["requests"] if r["requests"] else None,
            "statuses_non_2xx": r["errors"]["status"]}


def variant_round(budget: Budget, v: Variant, args: argparse.Namespace, tool: str) -> dict:
    sc, count = start(budget, v, args)
    try:
        time.sleep(1.0)
        idle = sc.status()
        bad_answer = answer(sc.port, False)
        load.closed(sc.port, 1, CONNECTIONS, False, tool, cpus=LOAD_CPU)  # warm-up: connections, caches
        rejected = rejected_load(sc.port, sc.pid, args, tool)
        valid = valid_load(sc, count, args, tool)
        paced = paced_load(sc, count, args) if args.paced_seconds > 0 else {}
        peak = sc.status()
    finally:
        stop(sc, count)
    return {"idle_rss_mib": idle["VmRSS"] / 1024, "peak_rss_mib": peak["VmHWM"] / 1024,
            "bad_signature_answer": bad_answer,
            "rejected_per_s": rejected["per_s"], "rejected_cpu_ms": rejected["cpu_ms_per_request"], **valid,
            "paced_sidecar_cpu_ms": paced.get("sidecar_cpu_ms"), "paced_hook_cpu_ms": paced.get("hook_cpu_ms"),
            "paced_p99_ms": paced.get("p99_ms"), "paced": paced}


def stage_run(budget: Budget, v: Variant, args: argparse.Namespace, tool: str) -> dict:
    """One valid load under bench/stages.py: CPU per delivery by stage (snapshots before and after)."""
    out = Path(tempfile.mkdtemp(prefix="bench-stages-")) / "stages.json"
    sc, count = start(budget, v, args, launcher=[str(HERE / "stages.py"), str(out)])
    try:
        assert isinstance(sc, Sidecar)
        pid = sc.pid
        load.closed(sc.port, 1, CONNECTIONS, True, tool, cpus=LOAD_CPU)  # warm-up, hooks included
        deadline = time.monotonic() + DRAIN_WAIT_S
        log = LogTail(sc.log_path)
        while count_of(count) < log.read().counts["delivery.accepted"] and time.monotonic() < deadline:
            time.sleep(0.02)

        def snap(n: int) -> dict:
            os.kill(pid, signal.SIGUSR2)
            path = Path(f"{out}.{n}")
            until = time.monotonic() + 10
            while not path.exists() and time.monotonic() < until:
                time.sleep(0.01)
            return json.loads(path.read_text())

        before = snap(0)
        valid = valid_load(sc, count, args, tool)
        after = snap(1)
    finally:
        stop(sc, count)
        shutil.rmtree(out.parent, ignore_errors=True)
    n = valid["accepted"] or 1
    stages = {k: (after["stages_ns"].get(k, 0) - before["stages_ns"].get(k, 0)) / 1e6 / n
              for k in after["stages_ns"]}
    calls = {k: (after["calls"].get(k, 0) - before["calls"].get(k, 0)) / n for k in after["calls"]}
    return {"ms_per_delivery": stages, "calls_per_delivery": calls, "valid": valid,
            "wrapped": after["wrapped"], "missing": after["missing"]}


def fold_stages(stages: dict[str, float], sidecar_ms: float | None) -> list[tuple[str, float]]:
    """Stage rows in a fixed order; a thread's own loop folded into its stage; the rest 'other'."""
    out: dict[str, float] = {}
    for key, ms in stages.items():
        name = key.removeprefix("(base) ")
        if name == "writer queue":
            name = "hand-off"
        if name == "spool batch":
            name = "spool other"
        if name.startswith("(outside"):
            name = "other (main thread, reload watcher, unwrapped)"
        out[name] = out.get(name, 0.0) + ms
    rows = [(k, out.pop(k)) for k in STAGE_ORDER if k in out]
    rows += sorted(out.items())
    if sidecar_ms is not None:
        rows.append(("not in any thread's clock (exited threads, GC at exit…)", sidecar_ms - sum(v for _, v in rows)))
    return rows


def merge_stages(runs: list[dict]) -> dict | None:
    """The median over the stage runs of each stage's ms per delivery (and of the totals)."""
    if not runs:
        return None
    keys = list(dict.fromkeys(k for r in runs for k in r["ms_per_delivery"]))
    valid = {k: median([r["valid"][k] for r in runs if r["valid"].get(k) is not None])
             for k in ("sidecar_cpu_ms_per_delivery", "hook_cpu_ms_per_delivery", "accepted")}
    return {"ms_per_delivery": {k: median([r["ms_per_delivery"].get(k, 0.0) for r in runs]) for k in keys},
            "valid": valid, "runs": len(runs), "wrapped": runs[0]["wrapped"], "missing": runs[0]["missing"],
            "each": runs}


def summarize(rounds: list[dict], key: str) -> float | None:
    return median([r[key] for r in rounds if r.get(key) is not None])


FIGURES = [  # key, label, format
    ("acknowledged_per_s", "acknowledged deliveries/s (2xx only)", ".0f"),
    ("hooks_per_s", "hooks executed/s (over the load's window)", ".0f"),
    ("hooks_end_to_end_per_s", "hooks executed/s end to end (load start → queue drained)", ".0f"),
    ("drain_per_s", "hooks/s once the load stopped (drain)", ".0f"),
    ("p99_ms", "p99 latency of valid deliveries (ms, wrk)", ".1f"),
    ("rejected_per_s", "bad-signature answers/s", ".0f"),
    ("idle_rss_mib", "idle RSS (MiB)", ".1f"),
    ("sidecar_cpu_ms_per_delivery", "sidecar CPU per delivery with its hook run (ms)", ".3f"),
    ("hook_cpu_ms_per_delivery", "the hook's processes, CPU per run (ms)", ".3f"),
    ("total_cpu_ms_per_delivery", "core 0 CPU per delivery, all (ms)", ".3f"),
    ("rejected_cpu_ms", "sidecar CPU per 401 (ms)", ".3f"),
    ("paced_sidecar_cpu_ms", "at a fixed --rate: sidecar CPU per delivery with its hook run (ms)", ".3f"),
    ("paced_hook_cpu_ms", "at a fixed --rate: the hook's processes, CPU per run (ms)", ".3f"),
    ("paced_p99_ms", "at a fixed --rate: p99 latency (ms, from each request's due time)", ".1f"),
]


def verdicts(meds: dict, names: list[str], ref: str, key: str, test: Any) -> str:
    out = []
    for n in names:
        r = ratio(meds[n].get(key), meds[ref].get(key))
        out.append(f"{n} {'n/a' if r is None else 'pass' if test(r) else 'MISS'}")
    return ", ".join(out)


def table(res: dict) -> str:
    names = list(res["variants"])
    meds = {n: res["variants"][n]["median"] for n in names}
    bare = res["bare"]["median_per_s"]
    head = ["figure", *[f"{n} ({res['variants'][n]['commit']})" for n in names]]
    ab, adn = "baseline" in names, "adnanh" in names
    others = [n for n in names if n not in ("baseline", "adnanh")]
    refs = [ref for ref in ("baseline", "adnanh") if ref in names]
    head += [f"ratio {n}/{ref}" for ref in refs for n in others]
    head.append("goal")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, spec in FIGURES:
        row = [label, *[fmt(meds[n].get(key), spec) for n in names]]
        row += [fmt(ratio(meds[n].get(key), meds[ref].get(key)), ".2f", "x") for ref in refs for n in others]
        goal = GOALS.get(key, ("", None))[0]
        if key == "p99_ms":
            goal += ": " + ", ".join(f"{n} {'pass' if (meds[n].get(key) or 1e9) <= 100 else 'MISS'}" for n in names)
        elif key == "rejected_per_s":
            row[0] += f" (bare stdlib handler: {fmt(bare)}/s)"
            goal += ": " + ", ".join(f"{n} {fmt(ratio(meds[n].get(key), bare), '.2f')}x" for n in names)
        elif ab and (check := GOALS.get(key, ("", None))[1]) is not None:
            goal += ": " + verdicts(meds, others, "baseline", key, check)
        if adn and key in ADNANH_GOALS:
            text, test = ADNANH_GOALS[key]
            goal = "; ".join(g for g in (goal, f"{text}: " + verdicts(meds, others, "adnanh", key, test)) if g)
        row.append(goal)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def stage_table(res: dict) -> str:
    names = [n for n in res["variants"] if res["variants"][n].get("stages")]
    if not names:
        return ""
    per = {n: dict(fold_stages(res["variants"][n]["stages"]["ms_per_delivery"],
                               res["variants"][n]["stages"]["valid"]["sidecar_cpu_ms_per_delivery"])) for n in names}
    keys = list(dict.fromkeys(k for n in names for k in per[n]))
    lines = ["| stage (sidecar CPU per delivery, ms) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(fmt(per[n].get(k), ".3f") for n in names) + " |")
    for label, key in (("sidecar total (under the wrappers)", "sidecar_cpu_ms_per_delivery"),
                       ("the hook's processes (sh + cat, reaped children)", "hook_cpu_ms_per_delivery")):
        lines.append(f"| {label} | " + " | ".join(
            fmt(res["variants"][n]["stages"]["valid"][key], ".3f") for n in names) + " |")
    return "\n".join(lines)


def run_onecore(args: argparse.Namespace) -> int:
    t_begin = time.monotonic()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("--cpus 1 needs two cores: the sidecar on core 0, the load on core 1")
    os.sched_setaffinity(0, {int(LOAD_CPU)})  # this script beside the load generator, off core 0
    budget = Budget(args.budget)
    started = dt.datetime.now(dt.UTC)
    tool = load.ensure_wrk() if args.tool in ("auto", "wrk") else None
    if not tool:
        raise SystemExit("--cpus 1 needs wrk (apt-get install wrk)")
    tree = (args.tree or ROOT).resolve()
    dirty = "+dirty" if git("status", "--porcelain", "--", "sidecar", cwd=tree) else ""
    variants = [Variant("working" if args.tree is None else tree.name, tree,
                        git("rev-parse", "--short", "HEAD", cwd=tree) + dirty)]
    for extra in args.also or []:
        path = extra.resolve()
        variants.append(Variant(path.name, path, git("rev-parse", "--short", "HEAD", cwd=path) + (
            "+dirty" if git("status", "--porcelain", "--", "sidecar", cwd=path) else "")))
    if args.baseline:
        variants.append(add_worktree(args.baseline))
    adnanh_bin = getattr(args, "adnanh", None)  # bench/run.py --adnanh PATH
    if adnanh_bin is not None and adnanh.usable(adnanh_bin):
        variants.append(Variant("adnanh", adnanh_bin.resolve(), adnanh.version(adnanh_bin), "adnanh"))
    elif adnanh_bin is not None:
        print(f"(adnanh/webhook skipped: {adnanh_bin} is not an executable file)")
    load_start = [round(x, 2) for x in os.getloadavg()]
    print(f"bench --cpus 1: sidecar and hooks on core {SERVER_CPU}, {load.wrk_version(tool)} on core {LOAD_CPU}, "
          f"{CONNECTIONS} connections, {args.rounds} x {args.seconds} s rounds, variants "
          f"{', '.join(f'{v.name} {v.commit}' for v in variants)}; load average {load_start}", flush=True)
    if any(v.kind == "adnanh" for v in variants):
        print(adnanh.describe(), flush=True)
    bare = CeilingServer(budget, cpus=SERVER_CPU)
    rounds: dict[str, list[dict]] = {v.name: [] for v in variants}
    bare_rounds: list[dict] = []
    stages: dict[str, list[dict]] = {}
    loads: list[list[float]] = [load_start]
    try:
        load.closed(bare.port, 1, CONNECTIONS, False, tool, cpus=LOAD_CPU)
        for i in range(args.rounds):
            if not budget.allows(f"round {i + 1}", len(variants) * (2 * args.seconds + args.paced_seconds + 20)
                                 + args.seconds + 5):
                break
            order = variants if i % 2 == 0 else variants[::-1]
            bare_rounds.append(rejected_load(bare.port, bare.proc.pid, args, tool))
            for v in order:
                r = variant_round(budget, v, args, tool)
                rounds[v.name].append(r)
                print(f"  round {i + 1} {v.name}: acknowledged {r['acknowledged_per_s']:.0f}/s, hooks "
                      f"{r['hooks_per_s']:.0f}/s ({r['hooks_end_to_end_per_s']:.0f}/s to drained, drain "
                      f"{fmt(r['drain_per_s'])}/s), p99 {r['p99_ms']:.1f} ms, bad signature "
                      f"({r['bad_signature_answer'].split()[0]}) {r['rejected_per_s']:.0f}/s "
                      f"(bare {bare_rounds[-1]['per_s']:.0f}/s), idle {r['idle_rss_mib']:.1f} MiB, CPU/delivery "
                      f"{fmt(r['sidecar_cpu_ms_per_delivery'], '.3f')} + hook "
                      f"{fmt(r['hook_cpu_ms_per_delivery'], '.3f')} ms; at {args.rate:g}/s "
                      f"{fmt(r['paced_sidecar_cpu_ms'], '.3f')} + hook {fmt(r['paced_hook_cpu_ms'], '.3f')} ms, "
                      f"p99 {fmt(r['paced_p99_ms'], '.1f')} ms", flush=True)
            if args.stages:  # in the same round and order: noise hits the stage tables alike
                for v in order:
                    if v.kind == "sidecar" and budget.allows(f"stages {v.name}", 2 * args.seconds + 30):
                        stages.setdefault(v.name, []).append(stage_run(budget, v, args, tool))
                        m = stages[v.name][-1]
                        print(f"  round {i + 1} {v.name} under bench/stages.py: "
                              + ", ".join(f"{k} {ms:.3f}" for k, ms in fold_stages(
                                  m["ms_per_delivery"], m["valid"]["sidecar_cpu_ms_per_delivery"])[:8]), flush=True)
            loads.append([round(x, 2) for x in os.getloadavg()])
    finally:
        bare.stop()
        for v in variants:
            if v.name == "baseline":
                remove_worktree(v)
    res: dict[str, Any] = {
        "mode": "one core",
        "date": started.isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg": loads},
        "settings": {"tool": load.wrk_version(tool), "connections": CONNECTIONS, "seconds": args.seconds,
                     "rate": args.rate, "paced_seconds": args.paced_seconds,
                     "rounds": args.rounds, "workers": args.workers, "log_level": args.log_level,
                     "hook": ["/bin/sh", "-c", HOOK_SCRIPT.format(count="COUNT")], "server_cpu": SERVER_CPU,
                     "load_cpu": LOAD_CPU, "body_bytes": len(workload.BODY), "baseline": args.baseline,
                     "adnanh": next((adnanh.settings(v.root) for v in variants if v.kind == "adnanh"), None)},
        "bare": {"median_per_s": median([b["per_s"] for b in bare_rounds]), "rounds": bare_rounds},
        "variants": {v.name: {"commit": v.commit, "rounds": rounds[v.name],
                              "median": {k: summarize(rounds[v.name], k) for k, _, _ in FIGURES},
                              "stages": merge_stages(stages.get(v.name, []))} for v in variants},
        "skipped": budget.skipped,
    }
    print()
    print(f"one core: {res['machine']['cores']} cores, Python {res['machine']['python']}, load average "
          f"{loads[0]} at the start, {loads[-1]} at the end; median of {len(bare_rounds)} interleaved rounds")
    print()
    print(table(res))
    if "adnanh" in res["variants"]:
        print(adnanh.note(res["variants"]["adnanh"]["rounds"]))
    st = stage_table(res)
    if st:
        print()
        print("CPU per delivery by stage (bench/stages.py: each thread's CPU clock, exclusive time; median of "
              "one run per variant and round):")
        print(st)
        for v in variants:
            missing = [m for m in (res["variants"][v.name]["stages"] or {}).get("missing", [])
                       if m not in OPTIONAL_WRAPS]
            if missing:
                print(f"  ({v.name}: not wrapped, absent in that tree: {', '.join(missing)})")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    if not args.no_save:
        name = report.save(res, started, prefix="onecore-")
        print(f"\nwrote bench/results/onecore-latest.json and bench/results/{name}")
    print(f"bench took {time.monotonic() - t_begin:.0f} s")
    return 0
