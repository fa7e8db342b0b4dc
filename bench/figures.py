"""The default bench's measurements: each figure of `make bench` taken from a running Sidecar.

closed_cpu      a closed-loop run plus the serving process's CPU per request
accepted_round  (2) and (3): valid deliveries, then every accepted delivery's hook
measure_start   (6) start-to-ready
measure_reload  (7) config reload latency
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from typing import Any

import load
import report
from profiles import print_profiles, profile_cpu, profile_wall
from report import fmt, median, mib
from servers import Budget, CeilingServer, LogTail, Sidecar, config_text, cpu_of, post, spawn_ceiling, wait_for_hooks

PACED_CONNECTIONS = 16


RELOAD_WAIT_S = 5.0


DRAIN_WAIT_S = 90.0


def closed_cpu(pid: int, port: int, seconds: int, connections: int, valid: bool, tool: str) -> dict:
    """A closed-loop run plus the server process's CPU per request (robust to a busy machine)."""
    c0 = cpu_of(pid)[0]
    r = load.closed(port, seconds, connections, valid, tool)
    r["cpu_s"] = round(cpu_of(pid)[0] - c0, 2)
    r["cpu_ms_per_req"] = round(1000 * r["cpu_s"] / r["requests"], 3) if r["requests"] else None
    return r


def measure_start(budget: Budget, args: argparse.Namespace) -> dict:
    """(6) spawn -> first 200 on /readyz, each start in a fresh directory."""
    times: list[float] = []
    for _ in range(args.starts):
        if not budget.allows("start-to-ready", 20):
            break
        sc = Sidecar(budget, args.workers, args.log_level)
        try:
            t0 = sc.start()
            sc.wait_port()
            sc.wait_ready()
            times.append(time.perf_counter() - t0)
        finally:
            sc.cleanup()
    return {"samples_s": [round(t, 4) for t in times], "median_s": median(times),
            "max_s": max(times) if times else None}


def accepted_round(sc: Sidecar, log: LogTail, args: argparse.Namespace, tool: str, budget: Budget) -> dict:
    """(2) and (3): a closed-loop run of valid deliveries, then wait for every accepted one to run."""
    log.read()
    acc0, hooks0 = log.counts["delivery.accepted"], log.counts["hook.finished"]
    busy0 = log.statuses[503]
    assert sc.proc is not None
    cpu0, kids0 = cpu_of(sc.pid)
    t_start = time.time()
    r = load.closed(sc.port, args.seconds, args.connections, True, tool)
    t_load_end = time.time()
    hooks_at_load_end = log.read().counts["hook.finished"] - hooks0
    rss_after_load = sc.status().get("VmRSS")
    wait_until = time.monotonic() + min(DRAIN_WAIT_S, max(5.0, budget.left() - 60))
    while True:
        log.read()
        accepted = log.counts["delivery.accepted"] - acc0
        hooks = log.counts["hook.finished"] - hooks0
        if hooks >= accepted or time.monotonic() > wait_until:
            break
        time.sleep(0.05)
    drained = hooks >= accepted
    cpu1, kids1 = cpu_of(sc.pid)
    t_end = log.last_hook_ts if drained and log.last_hook_ts else time.time()
    return {
        "load": r, "acknowledged_per_s": r["ok"] / r["duration_s"], "accepted": accepted, "hooks": hooks,
        "drained": drained, "busy_503": log.statuses[503] - busy0,
        "hooks_per_s": hooks / (t_end - t_start) if t_end > t_start else None,
        "hooks_during_load": hooks_at_load_end,
        "drain_hooks_per_s": ((hooks - hooks_at_load_end) / (t_end - t_load_end)
                              if drained and t_end > t_load_end and hooks > hooks_at_load_end else None),
        "seconds_to_drain": round(t_end - t_load_end, 3), "rss_kib_after_load": rss_after_load,
        # the sidecar's own CPU from the start of the load until every hook ran, per delivery;
        # the hooks' own CPU (reaped children) separately
        "cpu_ms_per_delivery": round(1000 * (cpu1 - cpu0) / accepted, 3) if accepted else None,
        "hook_cpu_ms_per_run": round(1000 * (kids1 - kids0) / hooks, 3) if hooks else None,
    }


def measure_reload(sc: Sidecar, args: argparse.Namespace) -> dict:
    """(7) rewrite config.yaml with one more route; time until a delivery for it is accepted."""
    samples: dict[str, list[float]] = {"rename": [], "in_place": []}
    events: list[str] = []
    for i in range(2 * args.reload_repeats):
        mode = "rename" if i % 2 == 0 else "in_place"
        event = f"bench_reload_{i + 1}"
        events.append(event)
        text = config_text(args.workers, events)
        time.sleep(0.3)  # let the previous change settle (debounce)
        t0 = time.perf_counter()
        if mode == "rename":
            tmp = sc.config.with_name(".config.yaml.bench")
            tmp.write_text(text)
            os.replace(tmp, sc.config)
        else:
            sc.config.write_text(text)
        live = None
        while (elapsed := time.perf_counter() - t0) < RELOAD_WAIT_S:
            status, body = post(sc.port, event)
            if status == 200 and body.get("status") == "accepted":
                live = elapsed
                break
            time.sleep(0.005)
        if live is None:
            return {"supported": False, "note": f"n/a (no reload): no new route after {RELOAD_WAIT_S:g} s",
                    "median_s": None, "max_s": None}
        samples[mode].append(live)
    every = samples["rename"] + samples["in_place"]
    return {"supported": True, "median_s": median(every), "max_s": max(every),
            "rename_s": [round(x, 4) for x in samples["rename"]],
            "in_place_s": [round(x, 4) for x in samples["in_place"]]}



# --- the default bench (what `make bench` runs) ------------------------------------------
def run_default(args: argparse.Namespace) -> int:
    """Figures (1)-(7) of docs/performance.md, each next to its ceiling."""
    t_begin = time.monotonic()
    budget = Budget(args.budget)
    started = dt.datetime.now(dt.UTC)
    tool = load.ensure_wrk() if args.tool == "auto" else args.tool
    tool = tool or "python"
    tool_name = load.wrk_version(tool) if tool != "python" else "python clients (wrk not available)"
    print(f"bench: {os.cpu_count()} cores, {tool_name}, {args.connections} connections, "
          f"{args.rounds} x {args.seconds} s rounds, budget {args.budget:g} s", flush=True)

    print("(6) start-to-ready ...", flush=True)
    ready = measure_start(budget, args)

    sc = Sidecar(budget, args.workers, args.log_level, log_beside_config=args.log_beside_config)
    ceiling = CeilingServer(budget)
    durable = CeilingServer(budget, durable=sc.dir / "logs")
    ceiling_port, durable_port = ceiling.port, durable.port
    rounds: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    try:
        sc.start()
        sc.wait_port()
        sc.wait_ready()
        log = LogTail(sc.log_path)
        time.sleep(1.0)
        idle = sc.status()
        print(f"(5) idle RSS {mib(idle.get('VmRSS'))} MiB", flush=True)

        # warm-up, not counted: connections, caches, the first hooks
        load.closed(ceiling_port, 1, args.connections, True, tool)
        load.closed(sc.port, 1, args.connections, False, tool)

        for i in range(args.rounds):
            if not budget.allows(f"round {i + 1}", 4 * args.seconds + 2 * args.paced_seconds + 45):
                break
            rnd: dict[str, Any] = {}
            rnd["spawn"] = spawn_ceiling(args)
            rnd["transport"] = closed_cpu(ceiling.proc.pid, ceiling_port, args.seconds, args.connections, True, tool)
            rnd["durable"] = closed_cpu(durable.proc.pid, durable_port, args.seconds, args.connections, True, tool)
            log.read()
            rej0 = log.counts["delivery.rejected"]
            rnd["rejected"] = closed_cpu(sc.pid, sc.port, args.seconds, args.connections, False, tool)
            rnd["rejected"]["logged"] = log.read().counts["delivery.rejected"] - rej0
            rnd["accepted"] = accepted_round(sc, log, args, tool, budget)
            # (4) open loop, the bare server first, each on a quiet machine (no hooks left to run)
            rnd["paced_bare"] = load.paced(ceiling_port, args.rate, args.paced_seconds, PACED_CONNECTIONS)
            rnd["paced"] = load.paced(sc.port, args.rate, args.paced_seconds, PACED_CONNECTIONS)
            wait_for_hooks(log, 30)
            rounds.append(rnd)
            a, pl = rnd["accepted"], rnd["paced"]["latency_ms"]
            print(f"  round {i + 1}: transport {rnd['transport']['rate']:.0f}/s (durable "
                  f"{rnd['durable']['rate']:.0f}/s), rejected "
                  f"{rnd['rejected']['rate']:.0f}/s, acknowledged {a['acknowledged_per_s']:.0f}/s "
                  f"({a['busy_503']} x 503), hooks {fmt(a['hooks_per_s'])}/s end to end "
                  f"({fmt(a['drain_hooks_per_s'])}/s after the load), spawn {rnd['spawn']['rate']:.0f}/s, "
                  f"{args.rate:g} req/s p50 {pl.get('p50')} p99 {pl.get('p99')} ms "
                  f"(bare p99 {rnd['paced_bare']['latency_ms'].get('p99')} ms)", flush=True)

        print("(7) reload ...", flush=True)
        reload = (measure_reload(sc, args) if budget.allows("reload", 4 * args.reload_repeats * RELOAD_WAIT_S + 10)
                  else {"supported": None, "note": "n/a (skipped: time budget)", "median_s": None, "max_s": None})

        if args.profile and budget.allows("profile wall", args.seconds + 60):
            print("profiling: py-spy, wall clock of every thread, acknowledged ...", flush=True)
            profiles["acknowledged-wall"] = profile_wall(sc, args, tool, True, "acknowledged")
            wait_for_hooks(log, min(60, max(1, budget.left() - 20)))

        peak = sc.status()
        log.read()
        spool_files = sorted(p.name for p in sc.spool.glob("*")) if sc.spool.is_dir() else []
    finally:
        sc.stop()
        ceiling.stop()
        durable.stop()

    if args.profile:
        for name, valid in (("acknowledged", True), ("rejected", False)):
            if budget.allows(f"profile {name} cpu", args.seconds + 60):
                print(f"profiling: cProfile, CPU of every thread, {name} ...", flush=True)
                profiles[f"{name}-cpu"] = profile_cpu(budget, args, tool, valid, name)

    res = report.build_results(args, tool_name, started, ready, rounds, reload, idle, peak, spool_files, log, budget,
                        profiles)
    sc.cleanup()
    print()
    print(report.describe(res))
    print()
    print(report.table(res))
    c = res["cpu_per_request"]
    print(f"\nCPU per request of the serving process (ms): bare server {fmt(c['transport_ms'], '.3f')} "
          f"(with a durable commit {fmt(c['durable_transport_ms'], '.3f')}), "
          f"sidecar 401 {fmt(c['rejected_ms'], '.3f')}, sidecar 200 + its hook run {fmt(c['acknowledged_ms'], '.3f')}; "
          f"spawn ceiling parent {fmt(c['spawn_ms'], '.3f')} per run; the hook itself {fmt(c['hook_ms'], '.3f')} "
          f"(in the spawn ceiling {fmt(c['spawn_hook_ms'], '.3f')})")
    print_profiles(profiles)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    if not args.no_save:
        name = report.save(res, started)
        print(f"\nwrote bench/results/latest.json and bench/results/{name}")
    print(f"bench took {time.monotonic() - t_begin:.0f} s")
    return 0
