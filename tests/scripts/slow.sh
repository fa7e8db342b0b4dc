#!/bin/sh
# Takes a while, so a test can see that responses never wait for hooks.
cat > /dev/null
sleep "${SLEEP:-3}"
touch "$OUT/$WEBHOOK_DELIVERY.done"
