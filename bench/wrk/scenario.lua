-- wrk script for the benchmark: `wrk -s scenario.lua URL -- MODE USERS PRODUCTS WRITE_PERCENT`
--   MODE get   : GET /users/<random id in 1..USERS>
--   MODE post  : POST /orders for a random user, one random product (1..PRODUCTS), quantity 1
--   MODE mixed : WRITE_PERCENT % post, the rest get
-- done() prints one line "WRK_JSON {...}" that bench/wrk.py parses (latencies in microseconds).

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)  -- each thread has its own Lua state: give each its own seed
end

function init(args)
  mode = args[1] or "get"
  users = tonumber(args[2] or "100000")
  products = tonumber(args[3] or "100")
  write_percent = tonumber(args[4] or "20")
  math.randomseed(os.time() * 100 + (thread_id or 0))
  json_headers = { ["Content-Type"] = "application/json" }
end

local function get_user()
  return wrk.format("GET", "/users/" .. math.random(1, users))
end

local function post_order()
  local body = string.format('{"user_id": %d, "items": [{"product_id": %d, "quantity": 1}]}',
    math.random(1, users), math.random(1, products))
  return wrk.format("POST", "/orders", json_headers, body)
end

function request()
  if mode == "get" then return get_user() end
  if mode == "post" then return post_order() end
  if math.random(1, 100) <= write_percent then return post_order() end
  return get_user()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
