#!/bin/sh
# Tries what a hostile hook would: each line of $OUT/report is "<what> ok|denied".
cat > /dev/null
try() { what=$1; shift; if "$@" > /dev/null 2>&1; then echo "$what ok"; else echo "$what denied"; fi >> "$OUT/report"; }
try write_config sh -c "echo '# x' >> '$CONFIG_FILE'"
try read_spool cat "$SPOOL_DIR/spool.db"
try list_spool ls "$SPOOL_DIR"
try write_spool sh -c "echo x >> '$SPOOL_DIR/spool.db'"
try read_env cat "$ENV_FILE"
try read_secret cat "$SECRET_FILE"
try write_tmp sh -c "echo x > '$OUT/tmpfile'"
try write_home sh -c "echo x > \"\$HOME/.webhook-sidecar-test\" && rm \"\$HOME/.webhook-sidecar-test\""
try read_etc cat /etc/passwd
try git git --version
try connect python3 -c "import socket; socket.create_connection(('127.0.0.1', int('$PORT')), 2).close()"
echo done >> "$OUT/report"
