#!/bin/sh
# Marks its start, then holds until $OUT/release exists (at most 60 s), then records the delivery
# and its attempt. With TEMPFAIL_FIRST set, attempt 1 exits 75 (EX_TEMPFAIL) after the hold.
cat > /dev/null
touch "$OUT/$WEBHOOK_DELIVERY.started"
i=0
while [ ! -e "$OUT/release" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
echo "$WEBHOOK_DELIVERY $WEBHOOK_ATTEMPT" >> "$OUT/attempts"
if [ -n "$TEMPFAIL_FIRST" ] && [ "$WEBHOOK_ATTEMPT" = 1 ]; then exit 75; fi
echo "$WEBHOOK_DELIVERY" >> "$OUT/ran"
