-- The lead score: points for what the conversation revealed, by the rules in
-- wahook.scripts.config.lead_score, capped at lead_score.max.
--
--   intent    points for the flow the lead follows (buy, rent, sell, visit, ...)
--   known     points per slot the lead told (zone, type, budget, timing)
--   timing    points per timing category (a free-text timing scores only as "known")
--   budget    per intent, a list of {from, points}: the highest threshold reached counts
--   visit     asked to see a property;  human: asked for a person
local M = {}

function M.compute(lead, rules)
  local score = 0
  if lead.intent then score = score + (rules.intent[lead.intent] or 0) end
  for slot, points in pairs(rules.known) do
    if lead[slot] ~= nil then score = score + points end
  end
  if lead.timing then score = score + (rules.timing[lead.timing] or 0) end
  local steps = lead.intent and rules.budget[lead.intent]
  if steps and lead.budget then
    local best = 0
    for _, s in ipairs(steps) do
      if lead.budget >= s.from and s.points > best then best = s.points end
    end
    score = score + best
  end
  if lead.visit and lead.intent ~= "visit" then score = score + rules.visit end
  if lead.human then score = score + rules.human end
  score = math.max(0, math.min(score, rules.max))
  return math.tointeger(score) or math.floor(score + 0.5)
end

return M
