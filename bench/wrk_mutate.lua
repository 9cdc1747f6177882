-- wrk script: POST /mutate with a fresh uid per request and a spec drawn from a set of bodies.
--
--   wrk -t1 -c16 -d20s -s bench/wrk_mutate.lua https://127.0.0.1:PORT -- BODIES_FILE
--
-- BODIES_FILE holds one compact AdmissionReview JSON per line, each with the uid placeholder
-- below exactly once (bench/admission_body.py writes it). Each request picks a body at random
-- and puts a new uid (of the placeholder's length) in. done() prints one line "WRK_RESULT {json}" that bench/wrk_runner.py reads.

local PLACEHOLDER = "00000000-0000-4000-8000-000000000000"
local prefixes, suffixes = {}, {}
local count, counter = 0, 0
-- thread_id is a global that setup() sets in each thread (a local would hide it).
local threads = {}

function setup(thread)
   thread:set("thread_id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1]
   local file = assert(io.open(path, "r"), "cannot open bodies file " .. tostring(path))
   for line in file:lines() do
      local first, last = string.find(line, PLACEHOLDER, 1, true)
      if first then
         count = count + 1
         prefixes[count] = string.sub(line, 1, first - 1)
         suffixes[count] = string.sub(line, last + 1)
      end
   end
   file:close()
   assert(count > 0, "no body with the uid placeholder in " .. path)
   math.randomseed(os.time() * 1000 + (thread_id or 0))
   wrk.method = "POST"
   wrk.path = "/mutate"
   wrk.headers["Content-Type"] = "application/json"
   -- Each body's whole request (request line, headers with its Content-Length, body) formatted
   -- once; a fresh uid has the placeholder's length, so each request is one concatenation.
   for i = 1, count do
      local formatted = wrk.format(nil, nil, nil, prefixes[i] .. PLACEHOLDER .. suffixes[i])
      local first, last = string.find(formatted, PLACEHOLDER, 1, true)
      prefixes[i] = string.sub(formatted, 1, first - 1)
      suffixes[i] = string.sub(formatted, last + 1)
   end
end

local function fresh_uid()
   counter = counter + 1
   return string.format("%08x-%04x-4%03x-8%03x-%04x%08x",
      math.random(0, 0x7fffffff), thread_id or 0, math.random(0, 0xfff), math.random(0, 0xfff),
      math.random(0, 0xffff), counter)
end

function request()
   local i = math.random(1, count)
   return prefixes[i] .. fresh_uid() .. suffixes[i]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
