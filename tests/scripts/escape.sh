#!/bin/sh
# Starts a child in a new session (setsid), out of reach of a process-group kill,
# records its pid, then outlives the timeout. Marks start and end with timestamps.
cat > /dev/null
echo "start $(date +%s.%N)" >> "$OUT/marks"
setsid sh -c 'echo $$ > "$OUT/escaped.pid"; exec sleep 300' &
while [ ! -s "$OUT/escaped.pid" ]; do sleep 0.01; done
echo $$ > "$OUT/hook.pid"
sleep "${SLEEP:-300}"
echo "end $(date +%s.%N)" >> "$OUT/marks"
