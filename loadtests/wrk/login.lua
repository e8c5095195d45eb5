-- POST /api/login with one user's credentials, as a flood: every request costs an argon2 hash.
-- Arguments: body=<path to the JSON credentials> (see common.lua).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

function init(args)
  common.init(args, "POST")
  wrk.headers["Content-Type"] = "application/json"
end
