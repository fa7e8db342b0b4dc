#!/bin/sh
# Ignores SIGTERM and starts a child that ignores it too; records both pids.
trap '' TERM
sh -c 'trap "" TERM; echo $$ > "$OUT/child.pid"; while :; do sleep 0.1; done' &
echo $$ > "$OUT/parent.pid"
while :; do sleep 0.1; done
