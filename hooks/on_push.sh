#!/bin/sh
# Runs for pushes to main. The payload (the sender's JSON) arrives on stdin;
# the facts about the delivery arrive as WEBHOOK_* variables.
set -eu
bytes=$(wc -c)
echo "deploying $APP: $WEBHOOK_EVENT delivery $WEBHOOK_DELIVERY ($bytes bytes of payload)"
# A real hook would now run e.g. `git -C /srv/app pull && systemctl reload app`:
# hooks run sandboxed and may write only their own $HOME and $TMPDIR, /dev and (usually)
# /tmp, so grant the checkout on the route in config.yaml: sandbox: {write: [/srv/app]}.
# Exit 0 = done; exit 75 = try again later; anything else = failed.
