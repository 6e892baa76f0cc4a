-- POSTs photos as raw image bodies to /v1/embed/image, one photo per request, cycling
-- through the files listed (space-separated) in $BENCH_PHOTOS.
package.path = package.path .. ";" .. (os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/?.lua"
local common = require("common")

local photos = {}
local n = 0

function init(args)
  for path in string.gmatch(os.getenv("BENCH_PHOTOS") or "", "%S+") do
    local f = assert(io.open(path, "rb"))
    local body = f:read("*a")
    f:close()
    local kind = path:match("%.png$") and "image/png" or "image/jpeg"
    table.insert(photos, { body = body, kind = kind })
  end
  assert(#photos > 0, "BENCH_PHOTOS names no photo")
end

function request()
  n = n + 1
  local p = photos[(n % #photos) + 1]
  return wrk.format("POST", "/v1/embed/image", { ["Content-Type"] = p.kind }, p.body)
end

function done(summary, latency, requests)
  common.report(summary, latency, requests)
end
