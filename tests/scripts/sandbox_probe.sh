#!/bin/sh
# What a hostile hook tries and what ordinary hooks do; prints "<what> ok|denied" per line on stdout
# (the test reads them from hook.finished's output tail). Paths come from the route's env.
cat > /dev/null
try() { what=$1; shift; if "$@" > /dev/null 2>&1; then echo "$what ok"; else echo "$what denied"; fi; }
try read_env cat "$ENV_FILE"
try list_spool ls "$SPOOL_DIR"
try read_spool cat "$SPOOL_DIR/spool.db"
try read_config cat "$CONFIG_DIR/config.yaml"
try write_config sh -c "echo '# x' >> '$CONFIG_DIR/config.yaml'"
try add_to_config touch "$CONFIG_DIR/added"
try write_hook sh -c "echo 'echo pwned' >> '$CONFIG_DIR/hooks/on_push.sh'"
try write_tmp sh -c "echo x > /tmp/webhook-sidecar-probe.$$ && rm /tmp/webhook-sidecar-probe.$$"
[ -n "${USER_HOME:-}" ] && try write_user_home sh -c "echo x > '$USER_HOME/.probe'"
try home sh -c 'echo x > "$HOME/.probe" && rm "$HOME/.probe"'
try mktemp sh -c 'f=$(mktemp) && echo x > "$f" && case "$f" in "$TMPDIR"/*) rm "$f";; *) false;; esac'
try git sh -c 'cd "$(mktemp -d)" && git init -q a && git -C a -c user.name=t -c user.email=t@t commit -q --allow-empty -m x && git clone -q a b && git -C b log --oneline | grep -q x'
try curl curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$PORT/"
try python python3 -c "import json, tempfile; tempfile.TemporaryFile().write(json.dumps(1).encode())"
exit 0
