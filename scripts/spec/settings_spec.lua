-- Specs for scripts/settings.lua: the defaults build, operators' values override them, typos and
-- wrong types fail with the setting's name, and the section shipped in conf/wahook.conf is the
-- same as the defaults (read with lyaml, from Debian's lua-yaml).
local fake = require("spec.support.wahook_fake")._install()
local settings = require "settings"
local fixtures = require "spec.support.fixtures"

local function build(config)
  fake._reset{ config = config }
  return settings.build(fake.config)
end

local function fails(config, text)
  local ok, e = pcall(build, config)
  assert.is_false(ok, "expected a configuration error")
  assert.truthy(tostring(e):find(text, 1, true), ("%q does not contain %q"):format(tostring(e), text))
end

describe("settings", function()
  it("build from an empty config", function()
    local cfg = build({})
    assert.equals("Europe/Madrid", cfg.hours.timezone)
    assert.equals(4, cfg.bot.debounce)
    assert.equals(7200, cfg.bot.takeover)
    assert.equals(600, cfg.bot.max_message_age)
    assert.same({ { 540, 840 }, { 960, 1170 } }, cfg.hours.days[1])
    assert.same({}, cfg.hours.days[7])
    assert.is_true(cfg.hours.holidays["12-25"])
    assert.equals("#bot", cfg.resume_keyword)
    assert.same({}, cfg.admin_emails)
    assert.same({ word = "compra", prefix = true, label = "compra*" }, cfg.intents.buy.keywords[1])
  end)

  it("lay the operator's values over the defaults", function()
    local cfg = build({
      admin_email = "ops@example.com",
      hours = { timezone = "Atlantic/Canary", weekly = { sun = { "10:00-12:00" } } },
      bot = { debounce = "1500ms", takeover = 600, blacklist = { "+34 600 000 001", "99@lid" },
              loop = { mute = "1d" }, resume_keyword = "  #BOT " },
      texts = { greeting = "Hi {name}", reasons = { banned = "banned!" } },
    })
    assert.equals("Atlantic/Canary", cfg.hours.timezone)
    assert.same({ { 600, 720 } }, cfg.hours.days[7])
    assert.same({ { 540, 840 }, { 960, 1170 } }, cfg.hours.days[1]) -- the other days stay
    assert.equals(1.5, cfg.bot.debounce)
    assert.equals(600, cfg.bot.takeover)
    assert.equals(86400, cfg.bot.loop.mute)
    assert.equals(4, cfg.bot.loop.max_fast_replies)
    assert.is_true(cfg.blacklist["34600000001"])
    assert.is_true(cfg.blacklist["99@lid"])
    assert.equals("#bot", cfg.resume_keyword)
    assert.equals("Hi {name}", cfg.texts.greeting)
    assert.equals("¡Hola de nuevo! 😊", cfg.texts.greeting_again_no_name)
    -- An operator's map of reasons replaces the default one whole.
    assert.same({ banned = "banned!" }, cfg.texts.reasons)
    assert.same({ "ops@example.com" }, cfg.admin_emails)
    -- The defaults themselves are untouched.
    assert.equals("4s", settings.DEFAULTS.bot.debounce)
  end)

  it("accept operators' own intents, flows and types", function()
    local cfg = build({
      intents = { invest = { keywords = { "rentabilidad" } }, human = { keywords = { "persona" } } },
      flows = { invest = { "budget", "zone" } },
      flow_priority = { "invest" },
      slots = { property_types = { nave = { "nave industrial" } } },
    })
    assert.same({ "budget", "zone" }, cfg.flows.invest)
    assert.equals("nave", cfg.property_types[1].name)
  end)

  it("refuse typos and wrong types, naming the setting", function()
    fails({ bot = { debouce = "3s" } }, "wahook.scripts.config.bot.debouce: unknown setting (known here: ")
    fails({ hoursx = {} }, "wahook.scripts.config.hoursx: unknown setting")
    fails({ bot = { debounce = "soon" } }, "bot.debounce: must be a duration such as 30s")
    fails({ bot = { enabled = "yes" } }, "bot.enabled: must be true or false, got a text")
    fails({ bot = { max_replies_per_minute = "4" } }, "must be a number, got a text")
    fails({ hours = { weekly = { mon = "09:00-14:00" } } }, "hours.weekly.mon: must be a list")
    fails({ hours = { weekly = { mon = { "9-14" } } } }, "hours.weekly.mon[1]: \"9\" is not a time HH:MM")
    fails({ hours = { weekly = { mon = { "nine to two" } } } }, "\"nine to two\" is not an interval HH:MM-HH:MM")
    fails({ hours = { weekly = { mon = { "14:00-09:00" } } } }, "ends before it starts")
    fails({ hours = { weekly = { mon = { "09:00-25:00" } } } }, "\"25:00\" is not a time HH:MM")
    fails({ hours = { weekly = { monday = {} } } }, "hours.weekly.monday: unknown setting")
    fails({ hours = { holidays = { "25/12" } } }, "hours.holidays[1]: \"25/12\" is not a date")
    fails({ hours = { timezone = "Mars/Olympus" } }, "unknown time zone \"Mars/Olympus\"")
    fails({ flows = { buy = { "zone", "color" } } }, "flows.buy[2]: unknown slot \"color\"")
    fails({ flows = { invest = { "zone" } } }, "flows.invest: has no intent of that name")
    fails({ intents = { buy = { keywords = { "x" }, patterns = { "[" } } } }, "intents.buy.patterns[1]: is not a valid Lua pattern")
    fails({ flow_priority = { "lease" } }, "flow_priority[1]: \"lease\" has no flow")
    fails({ texts = { weekdays = { "lunes" } } }, "texts.weekdays: must list 7 day names")
    fails({ admin_email = "admin at example.com" }, "admin_email: \"admin at example.com\" is not an e-mail address")
    fails({ admin_email = 5 }, "admin_email: must be a text, got a number")
    fails({ bot = { max_replies_per_minute = 0 } }, "bot.max_replies_per_minute: must be between 1 and 1000")
    fails({ csat = { quiet_after_handoff = "60d" } }, "csat.quiet_after_handoff: must be between 1 and 2592000")
    fails({ bot = { typing_delay_ms = 400000 } }, "bot.typing_delay_ms: must be between 0 and 300000")
    fails({ lead_score = { intent = { buy = "many" } } }, "lead_score.intent.buy: must be a number")
    fails({ lead_score = { budget = { buy = { { from = 1 } } } } }, "lead_score.budget.buy[1]: must be {from: amount, points: n}")
    fails({ texts = { reasons = { banned = 5 } } }, "texts.reasons.banned: must be a text")
    fails({ texts = { questions_by_intent = { buy = { color = "?" } } } }, "texts.questions_by_intent.buy: must map slots")
  end)

  it("cache per configuration", function()
    fake._reset{ config = { agency = "A" } }
    local a = settings.get()
    assert.equals(a, settings.get())
    fake._reset{ config = { agency = "B" } }
    assert.equals("B", settings.get().agency)
  end)

  it("match the section shipped in conf/wahook.conf", function()
    -- lua-yaml is installed by make test; without it this fails rather than skipping.
    local lyaml = require "lyaml"
    -- The rest of the file uses wahook's unquoted ${VAR} inside flow lists, which plain YAML
    -- does not allow: read the section alone (up to the next top-level line).
    local lines, inside = {}, false
    for line in fixtures.read(fixtures.source_dir() .. "/conf/wahook.conf"):gmatch("([^\n]*)\n") do
      if line:match("^wahook%.scripts%.config:") then
        inside = true
      elseif inside and line:match("^[^%s#]") then
        break
      end
      if inside then lines[#lines + 1] = line end
    end
    assert.is_true(#lines > 10, "conf/wahook.conf has no wahook.scripts.config section")
    local section = lyaml.load(table.concat(lines, "\n"))["wahook.scripts.config"]
    assert.is_table(section, "conf/wahook.conf has no wahook.scripts.config section")
    -- Every default is in the sample, with the same value (environment references aside).
    local function same(def, got, path)
      if type(got) == "string" and got:find("${", 1, true) then return end
      if type(def) ~= "table" then
        assert.equals(def, got, path)
        return
      end
      assert.is_table(got, path)
      for k, v in pairs(def) do same(v, got[k], path .. "." .. tostring(k)) end
      for k in pairs(got) do assert.is_not_nil(def[k], path .. "." .. tostring(k) .. " is not a default") end
    end
    same(settings.DEFAULTS, section, "wahook.scripts.config")
    -- And it builds, with the environment references expanded to nothing (unset).
    local function expand(v)
      if type(v) == "string" and v:find("${", 1, true) then return "" end
      if type(v) ~= "table" then return v end
      local out = {}
      for k, x in pairs(v) do out[k] = expand(x) end
      return out
    end
    local cfg = build(expand(section))
    assert.equals("Anclora Private Estates", cfg.agency)
    assert.same({}, cfg.admin_emails)
  end)
end)
