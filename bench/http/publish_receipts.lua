-- wrk script: POST /v1/publish as bench/http/publish.lua, each message
-- asking for delivery receipts (one Kafka record per delivery). Usage:
-- bench/receipts.sh.
wrk.method = "POST"
wrk.body = '{"topic":"bench/http","payload":"0123456789abcdef","qos":1,"receipts":true}'
wrk.headers["Content-Type"] = "application/json"
