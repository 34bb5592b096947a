-- wrk script: POST /v1/publish as bench/http/publish.lua, each request with
-- its own Idempotency-Key (a backend that sends a key with every call):
-- the cost of remembering keys. Usage: see bench/RESULTS.md, "Idempotent
-- publishes".
wrk.method = "POST"
wrk.body = '{"topic":"bench/http","payload":"0123456789abcdef","qos":1}'
local run = tostring(os.time())
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "bench-" .. run .. "-" .. n,
  }, nil)
end
