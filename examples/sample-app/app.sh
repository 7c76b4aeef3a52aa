#!/bin/sh
# Sample app entry point: remember when we started, then serve one process per connection.
# Env: PORT, BUILD_ID, PS_SLOT, APP_STATUS (healthy|...), HEALTHY_AFTER (seconds, fractional ok),
#      FAIL_AFTER (health fails after N app requests), SLOW_MS, HEALTH_DATABASE, HEALTH_REDIS,
#      LISTEN_AFTER (seconds the process boots before it binds its port, like a JVM starting up).
#      STARTING_STATUS=200 (answer 200 {"status":"starting"} instead of 503 before HEALTHY_AFTER).
#      FAIL_EVERY=N (every Nth app request answers 500; /health is not affected).
: > /tmp/requests
echo "sample-app starting: slot=${PS_SLOT:-none} build=${BUILD_ID:-unknown} port=${PORT:-80}" >&2
[ -n "${LISTEN_AFTER:-}" ] && sleep "$LISTEN_AFTER"
cut -d' ' -f1 /proc/uptime > /tmp/started
echo "sample-app listening on :${PORT:-80}" >&2
exec nc -ll -p "${PORT:-80}" -e /bin/sh /app/handler.sh
