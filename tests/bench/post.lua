-- wrk script for the webhook benchmark: POSTs pre-signed, distinct bodies.
-- Bodies file: wrk argument after "--" or $BENCH_BODIES; one "<signature>\t<body>" per line
-- (gen_bodies.py). Thread i of n sends only lines i, i+n, i+2n, ... so no two threads send the
-- same body; each thread pre-formats its requests in init() so request() costs nothing.
-- done() prints one machine-readable line:
--   BENCH_POST ok=<200s> non200=<count> repeats=<requests past the end of a slice> codes=<c:n,...>
-- plus a human-readable one.

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1] or os.getenv("BENCH_BODIES")
   if path == nil or path == "" then
      error("post.lua: no bodies file (pass it after -- or set BENCH_BODIES)")
   end
   local nthreads = tonumber(os.getenv("BENCH_THREADS") or "2")
   local me = tid or 1
   local f = assert(io.open(path, "r"))
   reqs = {}
   local n = 0
   local i = 0
   local path_url = wrk.path
   for line in f:lines() do
      if i % nthreads == me - 1 then
         local tab = line:find("\t", 1, true)
         if tab then
            local sig = line:sub(1, tab - 1)
            local body = line:sub(tab + 1)
            n = n + 1
            reqs[n] = wrk.format("POST", path_url, {
               ["Content-Type"] = "application/json",
               ["X-Webhook-Signature"] = sig,
            }, body)
         end
      end
      i = i + 1
   end
   f:close()
   if n == 0 then
      error("post.lua: no bodies for thread " .. me .. " in " .. path)
   end
   nreqs = n
   next_req = 0
   ok = 0
   non200 = 0
   repeats = 0
   codes = {}
end

function request()
   next_req = next_req + 1
   if next_req > nreqs then
      -- Out of distinct bodies: wrap (the server will answer them as duplicates) and count it.
      repeats = repeats + 1
      return reqs[((next_req - 1) % nreqs) + 1]
   end
   return reqs[next_req]
end

function response(status, headers, body)
   if status == 200 then
      ok = ok + 1
   else
      non200 = non200 + 1
      codes[status] = (codes[status] or 0) + 1
      -- thread:get copies plain values only: keep a string form up to date.
      local parts = {}
      for c, k in pairs(codes) do
         parts[#parts + 1] = c .. ":" .. k
      end
      codes_str = table.concat(parts, ",")
   end
end

function done(summary, latency, requests)
   local tok, tnon, trep = 0, 0, 0
   local all = {}
   for _, t in ipairs(threads) do
      tok = tok + (t:get("ok") or 0)
      tnon = tnon + (t:get("non200") or 0)
      trep = trep + (t:get("repeats") or 0)
      local cs = t:get("codes_str")
      if cs and cs ~= "" then
         for c, k in cs:gmatch("(%d+):(%d+)") do
            all[c] = (all[c] or 0) + tonumber(k)
         end
      end
   end
   local parts = {}
   for c, k in pairs(all) do
      parts[#parts + 1] = c .. ":" .. k
   end
   table.sort(parts)
   local cs = table.concat(parts, ",")
   io.write(string.format("BENCH_POST ok=%d non200=%d repeats=%d codes=%s\n", tok, tnon, trep,
                          cs ~= "" and cs or "-"))
   io.write(string.format("  responses: %d x 200, %d other (%s), %d repeated bodies\n", tok, tnon,
                          cs ~= "" and cs or "none", trep))
end
