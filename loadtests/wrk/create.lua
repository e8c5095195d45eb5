-- POST <url> (/api/items) with a fixed body read from body=<file>, Content-Type ctype=...,
-- the bearer token and Accept. Every request creates one item. Arguments: see common.lua.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

function init(args)
  common.init(args, "POST")
end
