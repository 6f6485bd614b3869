-- wrk script for bench/bench.py. Always: print the run's numbers as one JSON line (done).
-- With BENCH_COOKIE_POOL set (variant e): every request carries a different session, taken
-- from that file (one Cookie header value a line) and then from the Set-Cookie of each answer.
-- The filter rotates the refresh token on every refresh (so does the IdP), so a session is
-- never sent twice with the same refresh token: each request is a real refresh, not the
-- shared outcome of an earlier one.

local pool = os.getenv("BENCH_COOKIE_POOL")
local cookie_name = os.getenv("BENCH_COOKIE_NAME") or "__Host-bff-session"
local threads = {}

-- Per thread; read by done() through thread:get.
sent, renewed, reused, unrenewed = 0, 0, 0, 0

function setup(thread)
  table.insert(threads, thread)
end

if pool then
  local ready, head, tail = {}, 1, 0
  local headers = {}
  local last

  function init(args)
    for line in io.lines(pool) do
      if #line > 0 then
        tail = tail + 1
        ready[tail] = line
      end
    end
    for k, v in pairs(wrk.headers) do
      headers[k] = v
    end
  end

  function request()
    local cookie
    if head <= tail then
      cookie = ready[head]
      ready[head] = nil
      head = head + 1
    else
      -- Every session is in flight: send one again (its refresh outcome is shared, no new
      -- refresh). Counted and reported; a big enough pool keeps this at 0.
      cookie = last
      reused = reused + 1
    end
    last = cookie
    sent = sent + 1
    headers["Cookie"] = cookie
    return wrk.format(nil, nil, headers)
  end

  function response(status, hdrs, body)
    local set = hdrs["set-cookie"] or hdrs["Set-Cookie"]
    local pair = set and set:match("^([^;]*)")
    if pair and pair:sub(1, #cookie_name + 1) == cookie_name .. "=" and #pair > #cookie_name + 1 then
      tail = tail + 1
      ready[tail] = pair
      renewed = renewed + 1
    else
      unrenewed = unrenewed + 1
    end
  end
end

function done(summary, latency, requests)
  local extra = { sent = 0, renewed = 0, reused = 0, unrenewed = 0 }
  for _, t in ipairs(threads) do
    for k, _ in pairs(extra) do
      extra[k] = extra[k] + (t:get(k) or 0)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, ' ..
    '"p50": %d, "p90": %d, "p99": %d, "p999": %d}, ' ..
    '"rotation": {"sent": %d, "renewed": %d, "reused": %d, "unrenewed": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9),
    extra.sent, extra.renewed, extra.reused, extra.unrenewed))
end
