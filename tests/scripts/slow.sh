#!/bin/sh
# Takes a while, so a test can see that responses never wait for hooks.
# Marks its start and its end, so tests wait on files instead of sleeping.
cat > /dev/null
touch "$OUT/$WEBHOOK_DELIVERY.started"
sleep "${SLEEP:-3}"
touch "$OUT/$WEBHOOK_DELIVERY.done"
