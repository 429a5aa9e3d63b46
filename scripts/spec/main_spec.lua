-- Specs for scripts/main.lua as the runtime loads it: in the load phase (where handler-only host
-- functions raise), with the handler table the runtime looks up, refusing a bad configuration
-- at load time, and using only what the sandbox offers (require within scripts/, no io, no
-- os.getenv, no debug).
local fake = require("spec.support.wahook_fake")._install()
local fixtures = require "spec.support.fixtures"

local function load_main(config)
  package.loaded.main = nil
  fake._reset{ phase = "load", config = config }
  local ok, res = pcall(require, "main")
  fake._reset()
  return ok, res
end

-- The Lua files main.lua is made of (everything this suite owns outside spec/ and lib/).
local FILES = { "main.lua", "settings.lua", "hours.lua", "alerts.lua", "crm_ops.lua",
                "bot/text.lua", "bot/understand.lua", "bot/flow.lua", "bot/score.lua",
                "bot/engine.lua", "handlers/messages.lua", "handlers/instance.lua",
                "handlers/presence.lua", "handlers/timer.lua" }

describe("main.lua", function()
  it("loads in the load phase and returns the handlers by event name", function()
    local ok, h = load_main({})
    assert.is_true(ok, tostring(h))
    local names = {}
    for k, v in pairs(h) do
      assert.is_function(v, k)
      names[#names + 1] = k
    end
    table.sort(names)
    assert.same({ "connection.update", "messages.upsert", "presence.update", "qrcode.updated",
                  "send.message", "timer" }, names)
  end)

  it("refuses to load with a bad configuration, naming the setting", function()
    local ok, e = load_main({ bot = { debouce = "3s" } })
    assert.is_false(ok)
    assert.truthy(tostring(e):find("wahook.scripts.config.bot.debouce: unknown setting", 1, true), tostring(e))
    ok, e = load_main({ hours = { timezone = "Nowhere/Land" } })
    assert.is_false(ok)
    assert.truthy(tostring(e):find("unknown time zone", 1, true), tostring(e))
  end)

  it("uses only modules from scripts/ and what the sandbox allows", function()
    local root = fixtures.source_dir() .. "/scripts/"
    for _, f in ipairs(FILES) do
      local src = fixtures.read(root .. f)
      for name in src:gmatch("require%s*%(?%s*[\"']([^\"']+)[\"']") do
        if name ~= "wahook" and name ~= "cjson" then
          local path = root .. name:gsub("%.", "/") .. ".lua"
          assert.is_true(io.open(path) ~= nil, f .. " requires " .. name .. ", which is not in scripts/")
        end
      end
      local code = src:gsub("%-%-[^\n]*", "") -- comments may mention anything
      for _, bad in ipairs({ "io%.", "os%.getenv", "os%.exit", "os%.remove", "debug%.", "loadfile",
                             "dofile", "package%.", "string%.dump" }) do
        assert.is_nil(code:find("%f[%w_]" .. bad), f .. " uses " .. bad)
      end
    end
  end)
end)
