"""`--profile`: where the sidecar's time goes under load, written to bench/results/profile-*.txt.

profile_wall  py-spy, the wall clock of every thread (waiting included)
profile_cpu   bench/cpuprofile.py: cProfile on every thread, timed by each thread's CPU clock
(the one-core mode's CPU per stage is bench/stages.py)
"""

from __future__ import annotations

import argparse
import collections
import pstats
import subprocess
import sys
import time
from pathlib import Path

import load
from servers import HERE, ROOT, Budget, LogTail, Sidecar, cpu_of, wait_for_hooks

RESULTS = HERE / "results"

def ensure_py_spy() -> str | None:
    venv = HERE / ".venv"
    exe = venv / "bin" / "py-spy"
    if exe.exists():
        return str(exe)
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "py-spy"],
                       check=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"  (no profile: cannot install py-spy: {e})")
        return None
    return str(exe) if exe.exists() else None


PROFILE_RATE = 250


THREAD_BOOT = {"Thread._bootstrap (threading.py)", "Thread._bootstrap_inner (threading.py)",
               "Thread.run (threading.py)", "_run_module_as_main (<frozen runpy>)", "_run_code (<frozen runpy>)",
               "<module> (sidecar/__main__.py)"}


def profile_wall(sc: Sidecar, args: argparse.Namespace, tool: str, valid: bool, name: str) -> dict | None:
    """py-spy: the wall clock of every thread, waiting included, while the closed-loop load runs.

    Where requests wait (for the spool's commit, a lock, the GIL); a thread waiting for the GIL
    shows the frame it waits in, so this says little about CPU: see profile_cpu for that.
    """
    py_spy = ensure_py_spy()
    if not py_spy:
        return None
    assert sc.proc is not None
    raw = sc.dir / "logs" / f"wall-{name}.raw"
    seconds = args.seconds
    spy = subprocess.Popen([py_spy, "record", "--pid", str(sc.pid), "--duration", str(seconds),
                            "--rate", str(PROFILE_RATE), "--format", "raw", "--output", str(raw), "--nonblocking",
                            "--idle", "--threads"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)  # attached before the load starts
    result = load.closed(sc.port, seconds, args.connections, valid, tool)
    try:
        _, err = spy.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        spy.kill()
        return None
    if not raw.exists():
        print(f"  (no profile: {err.decode()[-500:]})")
        return None
    summary = summarize_stacks(raw.read_text(), args.profile_top)
    summary["rate_while_profiled"] = round(result["rate"], 1)
    lines = [f"py-spy record --rate {PROFILE_RATE} --nonblocking --idle --threads, {seconds} s of {name} "
             f"deliveries at {result['rate']:.0f} req/s: {summary['samples']} samples of every thread's wall clock",
             "", "by what a thread runs (its first frame below threading), then where it is, % of its samples:"]
    for entry, part in summary["threads"].items():
        lines += ["", f"{entry}: {part['share']:.1f}% of all samples"]
        lines += [f"  {p:5.1f}%  {f}" for f, p in part["inclusive"]]
    write_profile(f"profile-{name}-wall.txt", lines, summary)
    return summary


def summarize_stacks(collapsed: str, top: int) -> dict:
    """py-spy's collapsed stacks ('a (f.py:1);b (g.py:2) N') -> per kind of thread, inclusive frames in %."""
    per_entry: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in (_frame(x) for x in stack.split(";")) if f]
        if not frames:
            continue
        n = int(count)
        total += n
        entry = next((f for f in frames if f not in THREAD_BOOT), frames[0])
        totals[entry] += n
        for f in dict.fromkeys(frames):
            if f not in THREAD_BOOT and f != entry:
                per_entry[entry][f] += n
    threads = {}
    for entry, n in totals.most_common(8):
        threads[entry] = {"share": round(100 * n / total, 1),
                          "inclusive": [(f, round(100 * c / n, 1)) for f, c in per_entry[entry].most_common(14)]}
    return {"samples": total, "threads": threads}


def profile_cpu(budget: Budget, args: argparse.Namespace, tool: str, valid: bool, name: str) -> dict | None:
    """A sidecar under bench/cpuprofile.py (cProfile on every thread, thread CPU clock) and one load run."""
    sc = Sidecar(budget, args.workers, args.log_level, cpu_profile=Path("cpu.prof"))
    prof = sc.dir / "cpu.prof"
    try:
        sc.start()
        sc.wait_port()
        sc.wait_ready()
        log = LogTail(sc.log_path)
        assert sc.proc is not None
        cpu0 = cpu_of(sc.pid)[0]
        result = load.closed(sc.port, args.seconds, args.connections, valid, tool)
        if valid:
            wait_for_hooks(log, min(60, max(1, budget.left() - 30)))
        cpu_s = cpu_of(sc.pid)[0] - cpu0
        sc.stop()
        log.read()
        if not prof.exists():
            print(f"  (no CPU profile: {(sc.dir / 'logs' / 'stderr.log').read_text()[-500:]})")
            return None
        stats = pstats.Stats(str(prof))
    finally:
        sc.cleanup()
    requests = log.counts["delivery.accepted" if valid else "delivery.rejected"]
    summary = summarize_pstats(stats, args.profile_top)
    summary.update(rate_while_profiled=round(result["rate"], 1), requests=requests,
                   cpu_ms_per_request=round(1000 * cpu_s / requests, 3) if requests else None)
    what = "each delivery's 200 and its hook run" if valid else "each 401"
    lines = [f"cProfile on every thread, timed by the thread's own CPU clock (bench/cpuprofile.py): {args.seconds} s "
             f"of {name} deliveries ({requests}; {result['rate']:.0f} req/s, slowed by the profiler), "
             f"{summary['cpu_s']:.2f} s of CPU in finished calls; {what} cost "
             f"{summary['cpu_ms_per_request']} ms of CPU under the profiler.",
             "Percentages are of all profiled CPU; cProfile inflates many small Python calls, so read them as shares.",
             "", "self time by file:"]
    lines += [f"  {p:5.1f}%  {f}" for f, p in summary["files"]]
    lines += ["", "self time (tottime) by function:"]
    lines += [f"  {p:5.1f}%  {n:>8} calls  {f}" for f, p, n in summary["self"]]
    lines += ["", "inclusive time (cumtime) by function:"]
    lines += [f"  {p:5.1f}%  {n:>8} calls  {f}" for f, p, n in summary["inclusive"]]
    write_profile(f"profile-{name}-cpu.txt", lines, summary)
    return summary


def summarize_pstats(stats: pstats.Stats, top: int) -> dict:
    entries = vars(stats)["stats"]  # pstats' raw table: (file, line, function) -> (cc, nc, tt, ct, callers)
    total = sum(tt for (_, _, tt, _, _) in entries.values()) or 1e-9

    def label(key: tuple[str, int, str]) -> str:
        file, _, func = key
        return _frame(f"{func} ({file}:0)") if file != "~" else func

    by_file: collections.Counter[str] = collections.Counter()
    for key, (_, _, tt, _, _) in entries.items():
        file = label(key).rpartition(" (")[2].rstrip(")") if key[0] != "~" else "(builtins)"
        by_file[file] += tt
    ranked_self = sorted(entries.items(), key=lambda kv: -kv[1][2])[:top]
    ranked_cum = sorted(entries.items(), key=lambda kv: -kv[1][3])[:top]
    return {
        "cpu_s": round(total, 3),
        "files": [(f, round(100 * t / total, 1)) for f, t in by_file.most_common(15)],
        "self": [(label(k), round(100 * v[2] / total, 1), v[1]) for k, v in ranked_self],
        "inclusive": [(label(k), round(100 * v[3] / total, 1), v[1]) for k, v in ranked_cum],
    }


def write_profile(filename: str, lines: list[str], summary: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / filename
    out.write_text("\n".join(lines) + "\n")
    summary["file"] = str(out.relative_to(ROOT))


def _frame(text: str) -> str:
    """'handle (/x/lib/python3.11/http/server.py:42)' -> 'handle (http/server.py)'; thread roots dropped."""
    if text.startswith(("process ", "thread ")):
        return ""
    name, _, where = text.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/lib/python3", "/site-packages/", str(ROOT) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker.startswith("/lib/python3"):
                where = where.split("/", 1)[-1]
            break
    return f"{name} ({where})" if where else name



def print_profiles(profiles: dict) -> None:
    for name, p in profiles.items():
        if p and "files" in p:
            print(f"\nprofile {name}: CPU of every thread under cProfile, {p['cpu_ms_per_request']} ms per request "
                  f"under the profiler; self time, % of all ({p['file']}):")
            for frame, pct, calls in p["self"][:12]:
                print(f"  {pct:5.1f}%  {calls:>8} calls  {frame}")
        elif p:
            print(f"\nprofile {name}: wall clock of every thread (py-spy); by kind of thread ({p['file']}):")
            for entry, part in list(p["threads"].items())[:4]:
                # below the trunk every sample of the thread shares: where it actually is
                where = ", ".join(f"{f} {pct:.0f}%" for f, pct in part["inclusive"] if pct < 95)
                print(f"  {part['share']:5.1f}%  {entry}: {where}")
