-- wrk script for the GoLedger benchmarks: requests between random users of a pool.
--
-- Settings come from the environment (read when the script loads, in every Lua
-- state wrk creates, so that delay() is only defined when pacing is asked for):
--   WRK_POOL           file of "username token" lines (required)
--   WRK_MODE           transfer | hot | balance | batch        (default transfer)
--                      hot: every transfer goes to the pool's first user (a merchant)
--   WRK_BATCH          items per batch request                 (default 1)
--   WRK_MEAN_DELAY_MS  > 0: each connection pauses an exponentially distributed
--                      time of this mean between requests (not counted in latency)
-- done() prints one line "BENCH_JSON {...}" that benchmarks/common.py parses.

local mode = os.getenv("WRK_MODE") or "transfer"
local batch_size = tonumber(os.getenv("WRK_BATCH") or "1") or 1
local mean_delay_ms = tonumber(os.getenv("WRK_MEAN_DELAY_MS") or "0") or 0
local pool_path = os.getenv("WRK_POOL")

local users, tokens = {}, {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_number", thread_count)
end

function init(args)
   assert(pool_path, "WRK_POOL is not set")
   for line in io.lines(pool_path) do
      local name, token = line:match("^(%S+)%s+(%S+)$")
      if name then
         users[#users + 1] = name
         tokens[#tokens + 1] = token
      end
   end
   assert(#users >= 2, "the pool needs at least two users")
   math.randomseed(os.time() * 1000 + (thread_number or 0))
end

-- A random pool index other than `caller`.
local function other_than(caller)
   local index = math.random(#users - 1)
   if index >= caller then
      index = index + 1
   end
   return index
end

local function batch_body(caller)
   local items = {}
   for k = 1, batch_size do
      items[k] = '{"type":"transfer","to":"' .. users[other_than(caller)] .. '","amount":1}'
   end
   return '{"atomic":false,"operations":[' .. table.concat(items, ",") .. "]}"
end

function request()
   local caller = math.random(#users)
   local headers = { Authorization = tokens[caller] }
   if mode == "balance" then
      return wrk.format("GET", "/account/coins?username=" .. users[caller], headers)
   elseif mode == "batch" then
      headers["Content-Type"] = "application/json"
      -- Big batches queue behind each other on the one write lock: allow the longest
      -- deadline the contract accepts rather than count lock waits as failures.
      headers["X-Timeout-Ms"] = "60000"
      return wrk.format("POST", "/account/coins/batch?username=" .. users[caller], headers, batch_body(caller))
   end
   local target = users[other_than(caller)]
   if mode == "hot" then
      if caller == 1 then -- the merchant pays nobody: another customer pays it instead
         caller = other_than(1)
         headers = { Authorization = tokens[caller] }
      end
      target = users[1]
   end
   local path = "/account/coins/transfer?username=" .. users[caller] .. "&to=" .. target
   return wrk.format("POST", path .. "&amount=1", headers)
end

if mean_delay_ms > 0 then
   function delay()
      return -math.log(1 - math.random()) * mean_delay_ms
   end
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(
      string.format(
         'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
            .. '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
         summary.requests,
         summary.duration,
         summary.bytes,
         errors.connect,
         errors.read,
         errors.write,
         errors.status,
         errors.timeout,
         latency:percentile(50),
         latency:percentile(90),
         latency:percentile(99),
         latency.max
      )
   )
end
