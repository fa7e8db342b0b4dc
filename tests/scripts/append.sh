#!/bin/sh
# Appends the delivery id to $OUT/ran (one short line: atomic with O_APPEND).
cat > /dev/null
echo "$WEBHOOK_DELIVERY" >> "$OUT/ran"
