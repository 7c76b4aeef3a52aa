#!/bin/sh
# Sample app entry point: remember when we started, then serve one process per connection.
# Env: PORT, BUILD_ID, PS_SLOT, APP_STATUS (healthy|...), HEALTHY_AFTER (seconds, fractional ok),
#      FAIL_AFTER (health fails after N app requests), SLOW_MS, HEALTH_DATABASE, HEALTH_REDIS,
#      LISTEN_AFTER (seconds the process boots before it binds its port, like a JVM starting up).
#      STARTING_STATUS=200 (answer 200 {"status":"starting"} instead of 503 before HEALTHY_AFTER).
#      FAIL_EVERY=N (every Nth app request answers 500; /health is not affected).
#      ERROR_EVERY=N (every Nth app request logs an `ERROR ...` line and still answers 200).
#      ALLOC_MB=N (holds N MiB of memory from the start: a file in /dev/shm, charged to the container).
: > /tmp/requests
echo "sample-app starting: slot=${PS_SLOT:-none} build=${BUILD_ID:-unknown} port=${PORT:-80}" >&2
[ -n "${LISTEN_AFTER:-}" ] && sleep "$LISTEN_AFTER"
[ -n "${ALLOC_MB:-}" ] && dd if=/dev/zero of=/dev/shm/ballast bs=1048576 count="$ALLOC_MB" 2>/dev/null
cut -d' ' -f1 /proc/uptime > /tmp/started
echo "sample-app listening on :${PORT:-80}" >&2
exec nc -ll -p "${PORT:-80}" -e /bin/sh /app/handler.sh
