-- wrk script: POST /v1/publish with a QoS 1 message (answered only once a
-- core accepted it). Usage: see bench/README.md, "HTTP push".
wrk.method = "POST"
wrk.body = '{"topic":"bench/http","payload":"0123456789abcdef","qos":1}'
wrk.headers["Content-Type"] = "application/json"
