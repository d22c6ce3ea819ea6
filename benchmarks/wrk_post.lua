-- wrk script of bench_load.py: POSTs the JSON bodies of the file named by BODIES (one a line)
-- in turn, and prints a JSON summary line (requests, errors, latency percentiles in us).
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local i = 0
-- THINK_MS: each connection (a client) waits about this long after an answer before asking
-- again: uniformly between half and one and a half times it, so that clients which all
-- started together do not stay in lockstep, arriving in waves.
local think = tonumber(os.getenv("THINK_MS") or "0")
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  i = i % #bodies + 1
  return wrk.format(nil, "/api/chat/query", nil, bodies[i])
end

-- RETRY_AFTER_MS: after a 503 (the server's admission limit), a client waits this long
-- before asking again, as Retry-After tells it to. wrk calls delay() once per response, but
-- not always for the connection that just got it, so refusals are counted and each next
-- delay() pays one: as many clients wait as were refused. 0: ask again at once. Only then are
-- response() and delay() defined, as wrk does more work per request for each.
local retry_after = tonumber(os.getenv("RETRY_AFTER_MS") or "0")
local owed = 0

local function think_delay()
  if think > 0 then return math.floor(think * (0.5 + math.random())) end
  return 0
end

if retry_after > 0 then
  response = function(status, headers, body)
    if status == 503 then owed = owed + 1 end
  end
  delay = function()
    if owed > 0 then
      owed = owed - 1
      return retry_after
    end
    return think_delay()
  end
elseif think > 0 then
  delay = think_delay
end

-- wrk "corrects" its latency histogram for coordinated omission before done() sees it: with
-- interval = duration / (requests / connections), every sample of n us adds synthetic ones at
-- n - interval, n - 2 interval, ... (wrk.c: stats_correct). One 400 ms stall of 20 connections
-- at 3,000 requests/s so adds ~1,200 samples and moves p90 and p99 of a 10 s run by hundreds
-- of ms. With CONNECTIONS set, the histogram is inverted too (walking the buckets from the top,
-- a bucket minus what the buckets one, two... intervals above it added) and the percentiles of
-- the requests actually answered are printed beside wrk's, as raw_percentiles_us.
local function raw_percentiles(summary, latency)
  local conns = tonumber(os.getenv("CONNECTIONS") or "0")
  local per_conn = math.floor(summary.requests / math.max(conns, 1))
  if conns <= 0 or per_conn <= 0 then return nil end
  local interval = math.floor(summary.duration / per_conn)
  local values, counts = {}, {}
  for i = 1, #latency do
    local v, c = latency(i)
    values[i], counts[i] = v, c
  end
  local above, orig, total = {}, {}, 0
  for i = #values, 1, -1 do
    local v, r = values[i], values[i] % interval
    local c = counts[i]
    if v > interval then c = c - (above[r] or 0) end
    if c < 0 then c = 0 end
    above[r] = (above[r] or 0) + c
    orig[i] = c
    total = total + c
  end
  local parts = {}
  for _, p in ipairs({50, 75, 90, 95, 99, 99.9}) do
    local want, seen, at = total * p / 100, 0, values[#values]
    for i = 1, #values do
      seen = seen + orig[i]
      if seen >= want then at = values[i]; break end
    end
    parts[#parts + 1] = string.format('"%s": %d', tostring(p), at)
  end
  return string.format('"raw_count": %d, "raw_percentiles_us": {%s}', total,
                       table.concat(parts, ", "))
end

done = function(summary, latency, requests)
  local raw = raw_percentiles(summary, latency)
  local e = summary.errors
  local parts = {}
  for _, p in ipairs({50, 75, 90, 95, 99, 99.9}) do
    parts[#parts + 1] = string.format('"%s": %d', tostring(p), latency:percentile(p))
  end
  local cdf = {}
  -- percentile(100) is not the maximum in wrk: the curve ends with latency.max instead.
  for p = 1, 99 do cdf[#cdf + 1] = tostring(latency:percentile(p)) end
  cdf[#cdf + 1] = tostring(latency.max)
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "max_us": %d, "percentiles_us": {%s}, "cdf_us": [%s]%s}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.max, table.concat(parts, ", "), table.concat(cdf, ", "),
    raw and (", " .. raw) or ""))
end
