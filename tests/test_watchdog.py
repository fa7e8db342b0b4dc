"""A sidecar's hooks die with it, on a plain host: kill -9 of the sidecar, no restart, no container.

The hooks here start a child in a session of its own (setsid), out of reach of a group kill.
Processes are found by their environment (every process of a hook inherits it), so a
process the test never heard of counts too.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .conftest import Sidecar, wait_for, write_config
from .pg import server
from .support import alive, lines, shared_table, start_replicas, table


def holding(item: str) -> list[int]:
    """Live processes whose environment holds `item` ("NAME=value")."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and name != str(os.getpid()):
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    env = b"\0" + f.read()
            except OSError:
                continue
            if b"\0" + item.encode() + b"\0" in env + b"\0" and alive(int(name)):
                found.append(int(name))
    return found


def ignored(pid: int) -> int:
    """The signal mask a process ignores (bit n-1 for signal n)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))


def watchdog_of(sidecar: Sidecar) -> int:
    return int(sidecar.wait_log(lambda e: e.get("msg") == "hooks.watchdog")["pid"])


def time_to_die(item: str, limit: float = 3.0) -> float:
    """Seconds until no live process holds `item` in its environment (`limit` if some still do then)."""
    start = time.monotonic()
    while holding(item):
        if time.monotonic() - start > limit:
            return limit
        time.sleep(0.01)
    return time.monotonic() - start


HELD = table("""
    - event: push
      name: held
      run: [sh, -c, 'cat >/dev/null; setsid sh -c "echo \\$\\$ > $OUT/child; exec sleep 60" &
        echo $$ > "$OUT/main"; exec sleep 60']
      env: {{OUT: {out}}}
      sandbox: {{write: [{out}]}}
    - event: create
      name: quick
      run: [/bin/true]
""")


def test_kill_9_of_the_sidecar_ends_its_hook_and_setsid_child_within_a_second(tmp_path: Path, sidecars) -> None:
    sidecar = sidecars(write_config(tmp_path, HELD))
    out = (tmp_path / "out").resolve()
    watchdog = watchdog_of(sidecar)
    home = Path(sidecar.wait_log(lambda e: e.get("msg") in ("hooks.sandboxed", "hooks.unsandboxed"))["home"])
    assert home.is_dir()
    assert sidecar.deliver(b"{}", delivery="held").status == 200
    wait_for(lambda: (out / "main").exists() and (out / "child").exists() and len(holding(f"OUT={out}")) >= 2)
    main, child = int((out / "main").read_text()), int((out / "child").read_text())
    assert os.getpgid(child) == os.getsid(child) == child != os.getpgid(main)  # out of the hook's group
    sidecar.proc.kill()
    took = time_to_die(f"OUT={out}")
    assert took < 1.0, f"hook processes still alive {took:.2f} s after the kill: {holding(f'OUT={out}')}"
    assert not alive(main) and not alive(child)
    wait_for(lambda: not alive(watchdog), timeout=2)  # done, it leaves
    assert not home.exists()  # and the hooks' private HOME/TMPDIR went with the sidecar


def test_the_watchdog_outlives_runs_and_stray_signals_and_leaves_with_a_clean_stop(tmp_path: Path,
                                                                                      sidecars) -> None:
    sidecar = sidecars(write_config(tmp_path, HELD))
    watchdog = watchdog_of(sidecar)
    with open(f"/proc/{watchdog}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # A child of the sidecar, in its own session.
    assert int(fields[1]) == sidecar.proc.pid and int(fields[3]) == watchdog

    def fds() -> set[str]:
        return {os.readlink(f"/proc/{watchdog}/fd/{fd}") for fd in os.listdir(f"/proc/{watchdog}/fd")}

    # Stdio on /dev/null and the pipe, nothing of the sidecar's; while the watchdog starts, Python also
    # holds its own script open until it has read it.
    wait_for(lambda: len(fds()) == 2, timeout=5)
    assert "/dev/null" in fds() and not any("watchdog.py" in f for f in fds())
    with open(f"/proc/{watchdog}/environ", "rb") as f:
        assert f.read() == b""  # no secrets, no database URL
    stray = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    wait_for(lambda: all(ignored(watchdog) >> (sig - 1) & 1 for sig in stray))  # once its interpreter is up
    for sig in stray:
        os.kill(watchdog, sig)
    for i in range(3):  # an ended run's processes are killed; the watchdog, a child like them, is not
        assert sidecar.deliver(b"{}", event="create", delivery=f"quick-{i}").status == 200
    wait_for(lambda: len(sidecar.find_logs("hook.finished")) == 3)
    assert all(e.get("exit_code") == 0 for e in sidecar.find_logs("hook.finished"))
    assert alive(watchdog) and not sidecar.find_logs("hooks.watchdog_lost")
    assert sidecar.stop(signal.SIGTERM) == 0
    wait_for(lambda: not alive(watchdog), timeout=2)


def test_a_lost_watchdog_is_logged_once_and_reaped(tmp_path: Path, sidecars) -> None:
    sidecar = sidecars(write_config(tmp_path, HELD))
    watchdog = watchdog_of(sidecar)
    os.kill(watchdog, signal.SIGKILL)
    for i in range(3):
        assert sidecar.deliver(b"{}", event="create", delivery=f"quick-{i}").status == 200
    wait_for(lambda: len(sidecar.find_logs("hook.finished")) == 3)
    assert all(e.get("exit_code") == 0 for e in sidecar.find_logs("hook.finished"))  # hooks still run
    lost = sidecar.find_logs("hooks.watchdog_lost")
    assert len(lost) == 1 and lost[0]["pid"] == watchdog and lost[0]["returncode"] == -signal.SIGKILL
    assert not os.path.exists(f"/proc/{watchdog}")  # reaped, not a zombie


# A concurrency-1 route whose first attempt outlives the lease: "<delivery>/<replica>/<attempt> <pid> <time>"
# every 50 ms from the hook and from a child in a session of its own; a later attempt is short.
PROGRESS = r"""#!/bin/sh
cat >/dev/null
run="$WEBHOOK_DELIVERY/$WEBHOOK_REPLICA/$WEBHOOK_ATTEMPT"
setsid sh -c 'for i in $(seq 300); do echo "$0 $$ $(date +%s.%N)" >> "$1"; sleep 0.05; done' "$run" "$OUT/progress" &
n=6
[ "$WEBHOOK_ATTEMPT" = 1 ] && n=200
i=0
while [ $i -lt $n ]; do echo "$run $$ $(date +%s.%N)" >> "$OUT/progress"; sleep 0.05; i=$((i + 1)); done
echo "$run done" >> "$OUT/progress"
"""

ROUTE = """
- event: push
  name: serial
  concurrency: 1
  run: HOOK
  env: {{OUT: {out}}}
  sandbox: {{write: [{out}]}}
"""


def spans(path: Path) -> dict[str, tuple[float, float]]:
    """Each run's first and last progress time."""
    out: dict[str, tuple[float, float]] = {}
    for line in lines(path):
        if not line.endswith(" done"):
            run, _pid, stamp = line.split()
            first, last = out.get(run, (float(stamp), float(stamp)))
            out[run] = (min(first, float(stamp)), max(last, float(stamp)))
    return out


def writers(out: Path, run: str) -> set[int]:
    """The pids that wrote progress for `run`."""
    return {int(line.split()[1]) for line in lines(out / "progress") if line.split()[0] == run}


def rounds_on_a_pair(tmp: Path, sidecars, pair: int, rounds: int) -> list[dict[str, Any]]:
    """Two replicas on a database of their own; each round kills the one running the hook."""
    hook = tmp / "progress.sh"
    hook.write_text(PROGRESS)
    hook.chmod(0o755)
    config = write_config(tmp, shared_table(ROUTE.replace("HOOK", str(hook))))  # lease_s: 2
    out = tmp / "out"
    url = server().create_database()
    live = dict(zip((f"w{pair}a", f"w{pair}b"), start_replicas(sidecars, config, url, [f"w{pair}a", f"w{pair}b"]),
                    strict=True))
    every = list(live.values())
    results = []
    for n in range(rounds):
        delivery = f"pair{pair}-round{n}"
        assert next(iter(live.values())).deliver(b"{}", delivery=delivery).status == 200
        first = wait_for(lambda d=delivery: next((r for r in spans(out / "progress") if r.startswith(d + "/")), None),
                         timeout=10)
        # Both writers going (the hook and its setsid'd child): then the replica running them dies.
        pids = wait_for(lambda r=first: (lambda found: found if len(found) == 2 else None)(writers(out, r)))
        victim = first.split("/")[1]
        live.pop(victim).proc.kill()
        start = time.monotonic()
        while any(alive(p) for p in pids) and time.monotonic() - start < 3:
            time.sleep(0.005)
        gone_s = time.monotonic() - start
        assert time_to_die(f"WEBHOOK_REPLICA={victim}") < 1.0  # and whatever else they had started
        name = f"w{pair}r{n}"  # a new pod, a new name
        live[name] = start_replicas(sidecars, config, url, [name])[0]
        every.append(live[name])
        again = wait_for(lambda d=delivery: next((line.split()[0] for line in lines(out / "progress")
                                                  if line.startswith(d + "/") and line.endswith(" done")), None),
                         timeout=20)
        # Every run of the delivery in order (a takeover that was itself fenced counts too): gaps between them.
        runs = sorted((span, run) for run, span in spans(out / "progress").items() if run.startswith(delivery + "/"))
        results.append({"runs": [run for _, run in runs], "gone_s": round(gone_s, 3),
                        "gap_s": round(min(b[0][0] - a[0][1] for a, b in itertools.pairwise(runs)), 3)})
        assert runs[0][1] == first and first.endswith("/1") and again.split("/")[1] != victim, [
            results, *(e for s in every for e in s.logs if e.get("delivery") == delivery and "job" in e)]
    return results


def test_a_killed_replicas_long_hook_never_overlaps_its_takeover(tmp_path: Path, sidecars) -> None:
    """20 rounds on plain processes, 4 pairs of replicas at once (5 rounds each), lease 2 s."""
    pairs, per_pair = 4, 5
    dirs = [tmp_path / f"pair{p}" for p in range(pairs)]
    for d in dirs:
        d.mkdir()
    with ThreadPoolExecutor(pairs) as pool:
        done = list(pool.map(lambda p: rounds_on_a_pair(dirs[p], sidecars, p, per_pair), range(pairs)))
    results = [r for pair in done for r in pair]
    overlaps = [r for r in results if r["gap_s"] <= 0]
    slow = [r for r in results if r["gone_s"] >= 1.0]
    print(f"\nkill -9 of the replica running a concurrency-1 hook: {len(results)} rounds, {len(overlaps)} overlaps,"
          f" hook processes gone after at most {max(r['gone_s'] for r in results):.3f} s,"
          f" the next run began {min(r['gap_s'] for r in results):.2f}-{max(r['gap_s'] for r in results):.2f} s"
          f" after the killed run's last progress; runs per delivery: {sorted(len(r['runs']) for r in results)}")
    assert len(results) == 20
    assert not overlaps and not slow, results
