-- One wrk script for every scenario of bench/run, chosen by environment variables:
--   BENCH_SCENARIO  get | access_log | post | session | phone_enc | phone_code | login | login_users
--                   (access_log is get, sent to the targets with their access log on)
--   BENCH_TOKEN     the x-wx-session token (session, phone_enc, phone_code), of the target's own
--                   session store
--   BENCH_BODIES    a file of request bodies, one per line, replayed round-robin (phone_enc)
--   BENCH_TAG       a tag unique to this run, so that single-use codes never repeat across rounds
-- done() prints one line "BENCHJSON {...}" with the request count, errors and latency percentiles.

local scenario = os.getenv("BENCH_SCENARIO") or "get"
local token = os.getenv("BENCH_TOKEN") or ""
local tag = os.getenv("BENCH_TAG") or "0"

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- A JSON object of exactly `size` bytes.
local function json_body(size)
   local head = '{"user":"bench","action":"update","items":[1,2,3],"pad":"'
   local tail = '"}'
   return head .. string.rep("x", size - #head - #tail) .. tail
end

local n = 0
local bodies = {}
local requests = {}

if scenario == "post" then
   wrk.method = "POST"
   wrk.body = json_body(600)
   wrk.headers["Content-Type"] = "application/json"
elseif scenario == "session" then
   wrk.headers["x-wx-session"] = token
elseif scenario == "phone_enc" then
   local file = assert(io.open(os.getenv("BENCH_BODIES"), "r"))
   for line in file:lines() do
      if #line > 0 then
         table.insert(bodies, line)
      end
   end
   file:close()
   assert(#bodies > 0, "no bodies in BENCH_BODIES")
   request = function()
      -- Formatted on first use: wrk.format adds the Host header, which wrk
      -- only knows once its init ran (after this file's top level).
      if #requests == 0 then
         for i, body in ipairs(bodies) do
            requests[i] = wrk.format("POST", "/api/phone",
               { ["Content-Type"] = "application/json", ["x-wx-session"] = token }, body)
         end
      end
      n = n + 1
      return requests[(n % #requests) + 1]
   end
elseif scenario == "phone_code" then
   local headers = { ["Content-Type"] = "application/json", ["x-wx-session"] = token }
   request = function()
      n = n + 1
      -- Each phone code succeeds once: a new nonce per request.
      local body = '{"code":"phone:13800138000.' .. tag .. "_" .. id .. "_" .. n .. '"}'
      return wrk.format("POST", "/api/phone", headers, body)
   end
elseif scenario == "login" then
   local headers = { ["Content-Type"] = "application/json" }
   request = function()
      n = n + 1
      -- User "bench<tag>t<thread>", a new code (nonce) per request.
      local body = '{"code":"bench' .. tag .. "t" .. id .. "." .. n .. '"}'
      return wrk.format("POST", "/api/login", headers, body)
   end
elseif scenario == "login_users" then
   -- Every login a new user, with an openid ("oFAKE" .. user) of WeChat's 28 characters:
   -- a session, a login-code cache entry and a recent-keys entry per login, as a burst of
   -- first-time users would make.
   local headers = { ["Content-Type"] = "application/json" }
   local prefix, width
   request = function()
      if not prefix then
         -- `id` is set by setup(), after this file's top level ran.
         prefix = "u" .. tag .. "t" .. id .. "n"
         width = math.max(23 - #prefix, 1)
      end
      n = n + 1
      local body = '{"code":"' .. prefix .. string.format("%0" .. width .. "d", n) .. '"}'
      return wrk.format("POST", "/api/login", headers, body)
   end
elseif scenario ~= "get" and scenario ~= "access_log" then
   error("unknown BENCH_SCENARIO " .. scenario)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
