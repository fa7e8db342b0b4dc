#!/bin/sh
# A hook that goes for its sidecar: signals, its environment, an abstract socket, a root-owned file.
# Prints "<what> ok|denied" and its own capability sets.
cat > /dev/null
try() { what=$1; shift; if "$@" > /dev/null 2>&1; then echo "$what ok"; else echo "$what denied"; fi; }
try stop_parent kill -STOP "$PPID"
try kill_parent kill -KILL "$PPID"
try read_environ sh -c "tr '\\0' '\\n' < /proc/$PPID/environ | grep -q ."
try write_root_file sh -c "echo x >> '$VICTIM'"
try abstract_socket python3 -c "import os, socket; socket.socket(socket.AF_UNIX).connect('\0' + os.environ['ABSTRACT'])"
# Every thread of the sidecar, the one that started this hook included (it ends right after the spawn).
sleep 0.2
reachable=0
for task in /proc/"$PPID"/task/*; do kill -0 "${task##*/}" 2>/dev/null && reachable=$((reachable + 1)); done
echo "threads_reachable $reachable"
grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status | tr -d '\t' | sed 's/:/ /'
