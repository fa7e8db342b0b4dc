#!/bin/sh
# Records what the hook received: stdin byte for byte, and the environment.
# OUT is set by the route's env; one file pair per delivery and route.
set -eu
name="$OUT/$WEBHOOK_DELIVERY.$WEBHOOK_ROUTE"
cat > "$name.body.tmp"
env > "$name.env"
mv "$name.body.tmp" "$name.body"
