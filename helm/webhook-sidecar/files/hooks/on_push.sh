#!/bin/sh
# Runs for pushes to main. A real hook would deploy here, e.g. with tools added to the image.
set -eu
bytes=$(wc -c)
echo "deploying $APP: $WEBHOOK_EVENT delivery $WEBHOOK_DELIVERY ($bytes bytes of payload)"
