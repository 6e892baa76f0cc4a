-- Shared by the wrk scripts: writes one JSON line of results to the file named by
-- $BENCH_WRK_OUT (wrk's own report goes to stdout as usual).
local M = {}

function M.report(summary, latency, requests)
  local path = os.getenv("BENCH_WRK_OUT")
  if not path then return end
  local e = summary.errors
  local secs = summary.duration / 1e6
  local f = assert(io.open(path, "w"))
  f:write(string.format(
    '{"requests": %d, "duration_s": %.3f, "rps": %.3f, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_ms": {"mean": %.3f, "p50": %.3f, "p90": %.3f, "p95": %.3f, "p99": %.3f, "max": %.3f}}\n',
    summary.requests, secs, summary.requests / secs, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean / 1e3, latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(95) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
  f:close()
end

return M
