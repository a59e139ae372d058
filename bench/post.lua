-- wrk script for bench/run_http.py: POST a JSON body to /api/predict, and print
-- the results as one JSON line ("WRK_JSON {...}") when the run is done.
-- The body is the file named by WRK_BODY (run_http.py writes one passenger, or an
-- array of 100); without it, one passenger (PassengerId 892 of test.csv).
-- Latencies are in microseconds.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local body_file = os.getenv("WRK_BODY")
if body_file and body_file ~= "" then
   local fh = assert(io.open(body_file, "rb"))
   wrk.body = fh:read("*a")
   fh:close()
else
   wrk.body = '{"PassengerId": 892, "Pclass": 3, "Name": "Kelly, Mr. James", "Sex": "male", "Age": 34.5, '
           .. '"SibSp": 0, "Parch": 0, "Ticket": "330911", "Fare": 7.8292, "Cabin": null, "Embarked": "Q"}'
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, '
      .. '"p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
