#!/bin/sh
# Runs for every event: one line per delivery in the hook's log line.
set -eu
bytes=$(wc -c)
echo "received $WEBHOOK_PROVIDER $WEBHOOK_EVENT ($bytes bytes) delivery=$WEBHOOK_DELIVERY attempt=$WEBHOOK_ATTEMPT"
