-- GET <url> (e.g. /api/items?limit=20) with the bearer token and Accept header: one static
-- request, rebuilt by nothing per call. Arguments: see common.lua.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

function init(args)
  common.init(args, "GET")
end
