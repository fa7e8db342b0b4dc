#!/bin/sh
# Fails (exit 3) until $OUT/open exists; then records the delivery.
cat > /dev/null
[ -e "$OUT/open" ] || { echo "gate closed" >&2; exit 3; }
echo "$WEBHOOK_DELIVERY" >> "$OUT/ran"
