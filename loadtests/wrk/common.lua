-- Shared by the Duckcast wrk scripts (loaded with dofile from beside the calling script).
--
-- Script arguments come after wrk's "--" as key=value pairs:
--   token=<bearer token>      sent as "Authorization: Bearer <token>"
--   accept=<media type>       the Accept header (default application/json)
--   ctype=<media type>        the Content-Type header (requests with a body)
--   body=<path>               a file holding the raw request body (JSON text or protobuf bytes)
--   lo=<id> hi=<id>           the range of item ids to read (get_item.lua)
local M = {}

function M.options(args)
  local opts = {}
  for _, arg in ipairs(args) do
    local key, value = arg:match("^([%w_]+)=(.*)$")
    if not key then
      error("wrk script argument must be key=value, not " .. arg)
    end
    opts[key] = value
  end
  return opts
end

-- Sets the method, headers and body on the wrk table. wrk's own wrk.init calls the script's
-- init() after adding Host, then builds the static request from the wrk table.
function M.init(args, method)
  local opts = M.options(args)
  wrk.method = method
  if opts.token then
    wrk.headers["Authorization"] = "Bearer " .. opts.token
  end
  wrk.headers["Accept"] = opts.accept or "application/json"
  if opts.ctype then
    wrk.headers["Content-Type"] = opts.ctype
  end
  if opts.body then
    local file = assert(io.open(opts.body, "rb"))
    wrk.body = file:read("*a")
    file:close()
  end
  return opts
end

return M
