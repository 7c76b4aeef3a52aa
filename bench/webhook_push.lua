-- wrk script for bench/webhook.py: every request a distinct GitLab push delivery (its own
-- X-Gitlab-Event-UUID and commit), a new connection each (Connection: close, as GitLab opens them).
-- Environment: WRK_TOKEN, WRK_BRANCH (develop), WRK_RUN (a number unique to the wrk run).
-- done() prints one JSON line: requests, errors, duration and the latency percentiles (microseconds).
local counter, tid = 0, 0
local token = os.getenv("WRK_TOKEN") or ""
local branch = os.getenv("WRK_BRANCH") or "develop"
local run = tonumber(os.getenv("WRK_RUN") or "") or os.time()
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  tid = tonumber(wrk.thread:get("tid")) or 0
end

function request()
  counter = counter + 1
  local n = string.format("%d-%d-%d", run, tid, counter)
  local sha = string.format("%016x%08x%016x", run, tid, counter)
  local body = '{"object_kind": "push", "ref": "refs/heads/' .. branch .. '", "before": "' ..
    string.rep("f", 40) .. '", "after": "' .. sha .. '", "checkout_sha": "' .. sha ..
    '", "user_username": "bench", "project": {"id": 1, "path_with_namespace": "team/app"}, "n": "' .. n .. '"}'
  return wrk.format("POST", "/", {["Content-Type"] = "application/json", ["X-Gitlab-Event"] = "Push Hook",
    ["X-Gitlab-Token"] = token, ["X-Gitlab-Event-UUID"] = "wrk-" .. n, ["Connection"] = "close"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n', summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50),
    latency:percentile(99), latency.max))
end
