#!/bin/sh
# One HTTP request on stdin, the answer on stdout (run by `nc -ll -e`).
cr=$(printf '\r')
read -r method target proto
[ -z "$method" ] && exit 0  # a bare connect (port probe): no request, no answer
target=${target%"$cr"}
path=${target%%\?*}
while IFS= read -r line; do
  line=${line%"$cr"}
  [ -z "$line" ] && break
done

respond() { # status reason content-type body
  printf 'HTTP/1.0 %s %s\r\nContent-Type: %s\r\nContent-Length: %s\r\nX-Build-Id: %s\r\nX-Slot: %s\r\nConnection: close\r\n\r\n%s' \
    "$1" "$2" "$3" "${#4}" "${BUILD_ID:-unknown}" "${PS_SLOT:-none}" "$4"
  echo "$method $path $1" >&2
}

[ -n "${SLOW_MS:-}" ] && usleep $((SLOW_MS * 1000))

case "$path" in
  /health)
    up=$(awk -v s="$(cat /tmp/started)" '{ printf "%.2f", $1 - s }' /proc/uptime)
    served=$(wc -l < /tmp/requests)
    state=${APP_STATUS:-healthy}
    if [ -n "${HEALTHY_AFTER:-}" ] && awk -v u="$up" -v h="$HEALTHY_AFTER" 'BEGIN { exit !(u < h) }'; then
      state=starting
    elif [ -n "${FAIL_AFTER:-}" ] && [ "$served" -ge "$FAIL_AFTER" ]; then
      state=unhealthy
    elif [ -e /tmp/unhealthy ]; then
      state=unhealthy
    fi
    body="{\"status\":\"$state\",\"database\":\"${HEALTH_DATABASE:-healthy}\",\"redis\":\"${HEALTH_REDIS:-healthy}\",\"version\":\"${BUILD_ID:-unknown}\",\"slot\":\"${PS_SLOT:-none}\",\"uptime\":$up,\"served\":$served}"
    if [ "$state" = healthy ]; then respond 200 OK application/json "$body"
    elif [ "$state" = starting ] && [ "${STARTING_STATUS:-503}" = 200 ]; then respond 200 OK application/json "$body"
    else respond 503 "Service Unavailable" application/json "$body"; fi
    ;;
  *)
    echo x >> /tmp/requests
    if [ -n "${ERROR_EVERY:-}" ] && [ $(( $(wc -l < /tmp/requests) % ERROR_EVERY )) -eq 0 ]; then
      echo "ERROR sample-app: request $(wc -l < /tmp/requests) failed quietly (ERROR_EVERY=$ERROR_EVERY)" >&2
    fi
    if [ -n "${FAIL_EVERY:-}" ] && [ $(( $(wc -l < /tmp/requests) % FAIL_EVERY )) -eq 0 ]; then
      respond 500 "Internal Server Error" application/json "{\"error\":\"every ${FAIL_EVERY}th request fails\"}"
      exit 0
    fi
    respond 200 OK application/json "{\"app\":\"sample-app\",\"slot\":\"${PS_SLOT:-none}\",\"build_id\":\"${BUILD_ID:-unknown}\",\"path\":\"$path\"}"
    ;;
esac
