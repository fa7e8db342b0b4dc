#!/bin/sh
# Fails with EX_TEMPFAIL (75) until it has been called $FAILS times for this delivery.
cat > /dev/null
echo "$WEBHOOK_ATTEMPT $(date +%s.%N)" >> "$OUT/$WEBHOOK_DELIVERY.attempts"
n=$(wc -l < "$OUT/$WEBHOOK_DELIVERY.attempts")
if [ "$n" -le "${FAILS:-2}" ]; then echo "not yet ($n)"; exit 75; fi
echo "ok after $n"
