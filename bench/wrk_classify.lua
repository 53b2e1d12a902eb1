-- wrk script: POST /classify with one text per request, cycling through the file in TEXTS_FILE.
local texts = {}
for line in io.lines(os.getenv("TEXTS_FILE")) do texts[#texts + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #texts + 1
  return wrk.format(nil, wrk.path, nil, texts[i])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d errors=%d p50_us=%d p99_us=%d non2xx=%d\n",
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), summary.errors.status))
end
