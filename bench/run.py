"""`make bench`: webhook-sidecar's figures, each next to a ceiling measured in the same run.

Starts `python -m sidecar serve` on an ephemeral port (logs to a file, default log level info,
as users run it), a bare stdlib http.server as the transport ceiling, and drives both from
separate processes (wrk when it can be had, else Python clients) with ~2 KB signed GitHub push
deliveries over keep-alive connections. Throughput figures are the median of --rounds rounds,
interleaved so machine noise hits figures and ceilings alike.

 (1) rejected deliveries/s (401, bad signature)        ceiling: bare http.server, same load
 (2) acknowledged deliveries/s (200; hook /bin/true;   ceiling: bare http.server, same load
     spool_dir set: whatever the sidecar commits before its 200 is in the figure)
 (3) hooks executed/s end to end (from the start of    ceiling: Python spawning the hook from a
     the load until every accepted delivery ran;           pool of max_workers threads
     in brackets: the rate once the load stopped)
 (4) 200-latency p50/p99 at a fixed 200 req/s, open loop (from each request's due time)
 (5) RSS idle and peak (VmRSS after start; VmHWM at the end)
 (6) start-to-ready: process spawn to the first 200 on /readyz (median of --starts)
 (7) config reload latency: config.yaml rewritten (by rename and in place) with a new route,
     until a delivery for it is accepted; "n/a" when the sidecar does not pick it up in 5 s

Also the serving process's CPU per request (from /proc/PID/stat), which a busy machine blurs
far less than requests/s. Prints a Markdown table with ratios and targets, writes
bench/results/latest.json and a timestamped copy (core count, Python, date, git commit).
--profile adds, as bench/results/profile-*.txt: a py-spy wall-clock profile of every thread under
the acknowledged load (py-spy installed into bench/.venv, never a runtime dependency), and CPU
profiles of the acknowledged and rejected paths (bench/cpuprofile.py: cProfile on every thread,
timed by each thread's CPU clock). Stops by itself within --budget seconds (default 285).

    python bench/run.py [--rounds 3] [--seconds 5] [--connections 4] [--profile] [--no-save]

--cpus 1 measures the one-core figures instead (bench/onecore.py): the sidecar and its hooks
on core 0, wrk on core 1, optionally A/B against a checkout of --baseline REF, --stages for CPU per
delivery by stage (bench/stages.py):

    python bench/run.py --cpus 1 [--baseline 652c911] [--stages] [--rounds 3] [--seconds 5]
                        [--tree DIR] [--also DIR ...] [--adnanh PATH] [--rate 200] [--paced-seconds 5]
                        [--budget 900]

Where things are: servers.py (the sidecar and the ceilings as processes, /proc readings), load.py
(load generation), figures.py (the default bench's measurements), onecore.py (the one-core mode),
profiles.py (--profile), stages.py (CPU by stage), report.py (table, results JSON).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import figures
import onecore


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds (median), default 3")
    ap.add_argument("--seconds", type=int, default=5, help="seconds of load per throughput run, default 5")
    ap.add_argument("--connections", type=int, default=4, help="keep-alive connections, default 4")
    ap.add_argument("--rate", type=float, default=200, help="paced rate for (4), default 200 req/s")
    ap.add_argument("--paced-seconds", type=float, default=None,
                    help="length of the paced run, default 10 s (5 s with --cpus 1)")
    ap.add_argument("--starts", type=int, default=5, help="starts timed for (6), default 5")
    ap.add_argument("--workers", type=int, default=4, help="max_workers of the sidecar and of the spawn pool")
    ap.add_argument("--spawn-count", type=int, default=1000, help="hook runs per spawn-ceiling round")
    ap.add_argument("--reload-repeats", type=int, default=2, help="reloads timed per mode (rename, in place)")
    ap.add_argument("--log-level", default="info", choices=["info", "debug"],
                    help="the sidecar's --log-level, default info, as users run it (the bench reads its info lines: "
                         "the port, and hook.finished to count hooks)")
    ap.add_argument("--tool", default="auto", help="closed-loop load tool: auto (wrk, installed when missing), "
                                                   "wrk, or python")
    ap.add_argument("--profile", action="store_true", help="also profile the sidecar under load with py-spy")
    ap.add_argument("--log-beside-config", action="store_true",
                    help="diagnostic: write the sidecar's log into its config directory (watched for reloads)")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--budget", type=float, default=None,
                    help="stop within this many seconds, default 285 (900 with --cpus 1)")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--cpus", type=int, choices=[1], help="1: the one-core figures (bench/onecore.py)")
    ap.add_argument("--baseline", metavar="REF", help="with --cpus 1: also measure a git worktree of REF, "
                                                      "interleaved, and report ratios")
    ap.add_argument("--tree", type=Path, metavar="DIR", help="with --cpus 1: measure the sidecar of this checkout "
                                                               "(a git worktree) as the working tree, default this one")
    ap.add_argument("--also", type=Path, action="append", metavar="DIR",
                    help="with --cpus 1: one more checkout to measure in the same rounds (repeatable)")
    ap.add_argument("--stages", action="store_true", help="with --cpus 1: CPU per delivery by stage")
    ap.add_argument("--adnanh", type=Path, metavar="PATH",
                    help="with --cpus 1: also measure adnanh/webhook, this binary (built elsewhere), in the same "
                         "rounds (bench/adnanh.py); skipped when PATH is not an executable file")
    args = ap.parse_args()
    if args.cpus == 1:
        args.budget = 900 if args.budget is None else args.budget
        args.paced_seconds = 5 if args.paced_seconds is None else args.paced_seconds
        return onecore.run_onecore(args)
    args.budget = 285 if args.budget is None else args.budget
    args.paced_seconds = 10 if args.paced_seconds is None else args.paced_seconds
    if args.baseline or args.stages or args.tree or args.also or args.adnanh:
        ap.error("--baseline, --tree, --also, --adnanh and --stages go with --cpus 1")
    return figures.run_default(args)


if __name__ == "__main__":
    sys.exit(main())
