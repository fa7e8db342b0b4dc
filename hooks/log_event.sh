#!/bin/sh
# Runs for every event: records what arrived, one line per delivery.
set -eu
bytes=$(wc -c)
echo "received $WEBHOOK_PROVIDER $WEBHOOK_EVENT ($bytes bytes) delivery=$WEBHOOK_DELIVERY attempt=$WEBHOOK_ATTEMPT"
