-- Test support for the busted specs: where the shared fixtures and the source tree are, and JSON
-- loading through lua-cjson (which yields floats for every number and cjson.null for null).
local cjson = require "cjson"

local M = {}

-- scripts/spec/support/ -> the repository root, for runs without WH_SOURCE_DIR.
local function here()
  local src = debug.getinfo(1, "S").source
  return src:match("^@(.*)/[^/]*$") or "."
end

function M.source_dir()
  return os.getenv("WH_SOURCE_DIR") or (here() .. "/../../..")
end

function M.fixtures_dir()
  return os.getenv("WH_FIXTURES_DIR") or (M.source_dir() .. "/../shared/fixtures")
end

function M.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

function M.json(path)
  return cjson.decode(M.read(path))
end

-- A webhook body from fixtures/evolution/.
function M.evolution(name)
  return M.json(M.fixtures_dir() .. "/evolution/" .. name)
end

-- The sorted names of the *.json files in fixtures/evolution/.
function M.evolution_names()
  local lfs = require "lfs"
  local dir = M.fixtures_dir() .. "/evolution"
  local names = {}
  for name in lfs.dir(dir) do
    if name:match("%.json$") then names[#names + 1] = name end
  end
  table.sort(names)
  return names
end

-- cjson.null (and nil) as nil, anything else unchanged.
function M.nonnull(v)
  if v == cjson.null then return nil end
  return v
end

return M
