-- GET /api/items/{id} with id drawn uniformly from lo..hi (the items the benchmark created),
-- the bearer token and Accept. The requests are built once in init(); request() only picks one.
-- Arguments: see common.lua.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

local requests = {}

function init(args)
  local opts = common.init(args, "GET")
  local lo, hi = tonumber(opts.lo), tonumber(opts.hi)
  assert(lo and hi and lo <= hi, "get_item.lua needs lo=<id> hi=<id>")
  for id = lo, hi do
    requests[#requests + 1] = wrk.format("GET", "/api/items/" .. id)
  end
  math.randomseed(os.time() * 1000 + (thread_no or 0))
end

function request()
  return requests[math.random(#requests)]
end
