-- Checks normalize.lua against the shared contact-key vectors (tests/vectors/contact-keys.json),
-- the same file the C rule is tested with (DESIGN rule 4b), so both sides key contacts alike.
local normalize = require "lib.normalize"
local fixtures = require "spec.support.fixtures"

local path = fixtures.source_dir() .. "/tests/vectors/contact-keys.json"
local vectors = fixtures.json(path)
local nonnull = fixtures.nonnull

-- The key rule: the phone, else the phone the alias table knows for the LID, else the LID.
local function contact_key(phone, lid, alias)
  if phone then return phone end
  if lid and alias and nonnull(alias[lid]) then return alias[lid] end
  return lid
end

describe("contact-key vectors", function()
  it("are present", function()
    assert.is_table(vectors.cases, path)
    assert.is_true(#vectors.cases > 0, path)
  end)

  for i, case in ipairs(vectors.cases) do
    it(("%d %s"):format(i, tostring(case.name)), function()
      local body = case.body
      if case.fixture then body = fixtures.evolution(case.fixture) end
      assert.is_table(body, "case has neither body nor fixture")
      local msg = normalize.event(body)
      local phone = msg and msg.phone
      local lid = msg and msg.lid
      local want = case.expect
      assert.same({ phone = nonnull(want.phone), lid = nonnull(want.lid) }, { phone = phone, lid = lid })
      assert.equals(nonnull(want.key), contact_key(phone, lid, nonnull(case.alias)))
    end)
  end
end)
