-- wrk script of bench/gateway_throughput.py: POST prepared bodies in turn, then one JSON line.
--
--   wrk [options] -s wrk_bodies.lua URL -- BODIES_FILE PATH
--
-- BODIES_FILE holds one request body per line (compact JSON); every request is
-- built once, in init, so sending one costs wrk no Lua string work. There is no
-- response() function: defining one would make wrk hand every answer to Lua.

local prepared = {}
local following = 1

function init(args)
  for line in io.lines(args[1]) do
    prepared[#prepared + 1] = wrk.format("POST", args[2], nil, line)
  end
  if #prepared == 0 then
    error("no request bodies in " .. args[1])
  end
end

function request()
  local raw = prepared[following]
  following = following % #prepared + 1
  return raw
end

-- The figures the benchmark reads (latencies in microseconds), as the last stdout line.
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read,
    errors.write, errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
