#!/bin/sh
# Records start and end times around a short sleep, to check overlap.
cat > /dev/null
start=$(date +%s.%N)
sleep "${SLEEP:-0.2}"
echo "$start $(date +%s.%N)" >> "$OUT/spans"
