-- wrk script for the bench: GETs as given on the command line, or order POSTs
-- (BENCH_MODE=order) with a bearer token and a unique Idempotency-Key per request.
-- Prints one line "BENCH_RESULT {json}" at the end with counts and latency percentiles.
local mode = os.getenv("BENCH_MODE") or "get"
local run_id = os.getenv("BENCH_RUN_ID") or "00000000"
local threads = {}
local next_thread = 1

function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

local tokens, products, counter = {}, {}, 0
statuses = {}

function init(args)
  if mode == "order" then
    for line in io.lines(os.getenv("BENCH_TOKENS_FILE")) do
      table.insert(tokens, line)
    end
    for id in string.gmatch(os.getenv("BENCH_PRODUCTS"), "%d+") do
      table.insert(products, id)
    end
  end
end

local address = '"shipping_address":{"full_name":"Bench Buyer","line1":"1 Loop Road",'
  .. '"city":"Localhost","postal_code":"12345","country":"GB"}'

function request()
  if mode ~= "order" then
    return wrk.request()
  end
  counter = counter + 1
  local token = tokens[(counter * 7 + thread_id) % #tokens + 1]
  local product = products[(counter + thread_id) % #products + 1]
  local key = string.format("%s-%04x-4000-8000-%012x", run_id, thread_id, counter)
  local body = '{"items":[{"product_id":' .. product .. ',"quantity":1}],' .. address
    .. ',"payment":{"token":"tok_visa"}}'
  return wrk.format("POST", "/api/v1/orders", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
    ["Idempotency-Key"] = key,
  }, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(merged) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"socket_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f,'
      .. '"status":{%s}}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, table.concat(parts, ",")))
end
