-- The handler table wahook calls for every stored event: keys are event names
-- ("messages.upsert", "connection.update", …, "timer"), "*" is the fallback. A handler gets
-- `ev` (the envelope, the decoded `data` and the normalised view `ev.msg`) and queues actions
-- through the wahook module; it never touches the network itself.
--
-- The runtime already records messages, receipts, contacts, connection states and QR codes on
-- its own, so an event without a handler is simply marked done.
local wahook = require "wahook"

local handlers = {}

-- Counts every event by name, so operators see traffic per type in the metrics.
handlers["*"] = function(ev)
  wahook.metric.inc("events_handled", { event = ev.event })
end

return handlers
