-- The settings every script reads: the wahook.scripts.config section of conf/wahook.conf
-- (wahook.config) laid over the defaults below, checked once per configuration. The sample
-- config carries the same values with comments; operators edit the config, not this file (a key
-- missing from their config falls back to the value here).
--
--   local settings = require "settings"
--   local cfg = settings.get()   -- plain tables; durations in seconds, keywords folded
--
-- A setting with a wrong type or an unknown name (a typo) raises when main.lua loads, so a bad
-- reload is refused with the reason and the running scripts stay.
local wahook = require "wahook"
local text = require "bot.text"

local M = {}

M.DEFAULTS = {
  agency = "Anclora Private Estates",
  admin_email = "",
  hours = {
    timezone = "Europe/Madrid",
    weekly = {
      mon = { "09:00-14:00", "16:00-19:30" },
      tue = { "09:00-14:00", "16:00-19:30" },
      wed = { "09:00-14:00", "16:00-19:30" },
      thu = { "09:00-14:00", "16:00-19:30" },
      fri = { "09:00-15:00" },
      sat = { "10:00-13:30" },
      sun = {},
    },
    holidays = { "01-01", "01-06", "05-01", "08-15", "10-12", "11-01", "12-06", "12-08", "12-25",
                 "2026-04-02", "2026-04-03", "2027-03-25", "2027-03-26" },
  },
  conversation = {
    window = "12h",
  },
  bot = {
    enabled = true,
    blacklist = {},
    debounce = "4s",
    typing_extension = "8s",
    debounce_max = "40s",
    typing_delay_ms = 1200,
    max_replies_per_minute = 4,
    max_message_age = "10m",
    takeover = "2h",
    resume_keyword = "#bot",
    close_keyword = "#cerrar",
    max_not_understood = 2,
    max_pending = 10,
    loop = {
      fast_reply = "1s",
      max_fast_replies = 4,
      max_repeats = 4,
      mute = "6h",
      signatures = { "respuesta automatica", "mensaje automatico", "auto reply", "autoreply",
                     "automatic reply", "out of office", "fuera de la oficina",
                     "no responda a este mensaje" },
    },
  },
  csat = {
    enabled = true,
    quiet_after_handoff = "24h",
    answer_window = "24h",
  },
  alerts = {
    connection_cooldown = "15m",
    qr_mail_interval = "10m",
    out_of_hours = true,
  },
  intents = {
    buy = { keywords = { "compra*", "compro", "busco casa", "busco piso", "busco una casa",
                         "busco un piso", "busco villa", "busco una villa", "adquirir", "invertir",
                         "inversion*" },
            patterns = { "quiero un[ao]? %a+ en" } },
    rent = { keywords = { "alquil*", "arrendar", "arrendamiento", "de alquiler" },
             patterns = { "por meses", "larga temporada" } },
    sell = { keywords = { "vender", "vendo", "vendemos", "venta de mi", "tasar", "tasacion",
                          "valorar mi", "poner a la venta", "poner en venta" },
             patterns = { "cuanto vale mi", "cuanto valdria mi" } },
    visit = { keywords = { "visita*", "ver el piso", "ver la casa", "ver la villa", "verla",
                           "verlo", "cita", "ensenar*" },
              patterns = { "quedar para ver", "cuando puedo ver" } },
    human = { keywords = { "persona", "humano", "agente", "asesor*", "comercial", "hablar con",
                           "llamame", "llamadme", "que me llamen", "atencion al cliente" },
              patterns = {} },
    prices = { keywords = { "precio*", "cuanto cuesta*", "tarifa*", "honorario*", "comision*" },
               patterns = { "cuanto co[bs]%a*" } },
  },
  flow_priority = { "sell", "rent", "buy", "visit" },
  flows = {
    buy = { "zone", "type", "budget", "timing" },
    rent = { "zone", "type", "budget", "timing" },
    sell = { "zone", "type", "timing" },
    visit = { "zone", "timing" },
  },
  slots = {
    zones = { "Palma", "Andratx", "Port d'Andratx", "Calvià", "Santa Ponsa", "Son Vida",
              "Deià", "Sóller", "Pollença", "Alcúdia", "Santanyí", "Llucmajor" },
    property_types = {
      piso = { "piso*", "apartamento*", "estudio", "loft" },
      casa = { "casa", "casas", "chalet*", "adosado*", "finca*" },
      villa = { "villa*", "mansion*" },
      ["ático"] = { "atico*", "duplex", "penthouse" },
      local_comercial = { "local", "locales", "nave*" },
      terreno = { "terreno*", "parcela*", "solar", "solares" },
    },
    timing = {
      inmediato = { "ya", "cuanto antes", "urgente", "inmediat*", "esta semana", "este mes",
                    "lo antes posible" },
      pronto = { "proximo mes", "1 mes", "un mes", "2 meses", "dos meses", "pronto", "en breve" },
      medio = { "3 meses", "tres meses", "6 meses", "seis meses", "este ano", "unos meses" },
      sin_prisa = { "sin prisa", "mas adelante", "ano que viene", "solo mirando", "curiosear",
                    "no tengo prisa" },
    },
  },
  lead_score = {
    intent = { buy = 20, rent = 10, sell = 20, visit = 15 },
    known = { zone = 10, type = 10, budget = 15, timing = 5 },
    timing = { inmediato = 20, pronto = 10, medio = 5, sin_prisa = 0 },
    budget = {
      buy = { { from = 500000, points = 10 }, { from = 1000000, points = 20 } },
      rent = { { from = 2000, points = 10 } },
    },
    visit = 15,
    human = 5,
    max = 100,
  },
  texts = {
    greeting = "¡Hola, {name}! 👋 Soy el asistente virtual de {agency}.",
    greeting_no_name = "¡Hola! 👋 Soy el asistente virtual de {agency}.",
    greeting_again = "¡Hola de nuevo, {name}! 😊",
    greeting_again_no_name = "¡Hola de nuevo! 😊",
    menu = "¿En qué puedo ayudarte? Puedo ayudarte a comprar, alquilar o vender una propiedad, "
           .. "reservar una visita o ponerte en contacto con una persona del equipo.",
    not_understood = "Perdona, no te he entendido. ¿Quieres comprar, alquilar, vender, reservar "
                     .. "una visita o hablar con una persona?",
    audio = "Ahora mismo no puedo escuchar audios. ¿Me lo escribes, por favor?",
    prices = "Nuestros honorarios dependen del tipo de operación y del inmueble. Cuéntame qué "
             .. "buscas y te enviamos opciones con su precio.",
    questions = {
      zone = "¿En qué zona te interesa?",
      type = "¿Qué tipo de propiedad buscas (piso, casa, villa, ático, local, terreno…)?",
      budget = "¿Cuál es tu presupuesto aproximado?",
      timing = "¿Para cuándo lo necesitas?",
    },
    questions_by_intent = {
      rent = { budget = "¿Cuánto quieres pagar al mes, aproximadamente?" },
      sell = {
        zone = "¿En qué zona está la propiedad que quieres vender?",
        type = "¿Qué tipo de propiedad es (piso, casa, villa, ático, local, terreno…)?",
        timing = "¿Cuándo te gustaría venderla?",
      },
      visit = {
        zone = "¿Qué propiedad te gustaría visitar? Dime la referencia o la zona.",
        timing = "¿Qué día y a qué hora te vendría bien la visita?",
      },
    },
    summary = "¡Gracias, {name}! Este es el resumen de tu solicitud:\n{summary}\n\nUna persona "
              .. "de nuestro equipo te escribirá en breve.",
    summary_no_name = "¡Gracias! Este es el resumen de tu solicitud:\n{summary}\n\nUna persona de "
                      .. "nuestro equipo te escribirá en breve.",
    summary_line = "• {label}: {value}",
    labels = { intent = "Interés", zone = "Zona", type = "Tipo", budget = "Presupuesto",
               timing = "Plazo", visit = "Visita" },
    intent_names = { buy = "comprar", rent = "alquilar", sell = "vender",
                     visit = "visitar una propiedad" },
    timing_names = { inmediato = "lo antes posible", pronto = "en las próximas semanas",
                     medio = "en unos meses", sin_prisa = "sin prisa" },
    visit_yes = "sí",
    not_given = "sin indicar",
    handoff = "Enseguida te atiende una persona de nuestro equipo. 🙌",
    out_of_hours = "¡Gracias por escribirnos, {name}! Ahora mismo estamos fuera de horario; te "
                   .. "responderemos {next_open}.",
    out_of_hours_no_name = "¡Gracias por escribirnos! Ahora mismo estamos fuera de horario; te "
                           .. "responderemos {next_open}.",
    out_of_hours_unknown = "en cuanto volvamos a abrir",
    next_open_today = "hoy a las {time}",
    next_open_tomorrow = "mañana a las {time}",
    next_open_weekday = "el {weekday} a las {time}",
    next_open_date = "el {day}/{month} a las {time}",
    weekdays = { "lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo" },
    csat_question = "¿Qué tal te hemos atendido? Responde con un número del 1 (muy mal) al 5 "
                    .. "(excelente).",
    csat_thanks = "¡Gracias por tu valoración! 🙏",
    task_title = "Responder a {name} ({phone})",
    task_body = "Escribió fuera de horario: \"{text}\"\n{summary}",
    alert_handoff = "Lead para atender: {name} ({phone}), puntuación {score}. Motivo: {reason}.\n"
                    .. "{summary}",
    alert_out_of_hours = "Mensaje fuera de horario de {name} ({phone}): \"{text}\". Tarea creada "
                         .. "para {due}.",
    alert_loop = "Posible bucle con otro bot en la conversación con {phone}: el asistente se "
                 .. "silencia durante {minutes} minutos.",
    alert_connection_close = "WhatsApp desconectado en la instancia {instance}: {reason} "
                             .. "(código {code}).{suppressed}",
    alert_connection_restored = "WhatsApp conectado de nuevo en la instancia {instance} ({number}).",
    alert_qr_limit = "La instancia {instance} ha agotado los códigos QR sin vincular el "
                     .. "teléfono: hay que volver a conectarla desde Evolution API.",
    suppressed = " ({count} desconexiones más sin avisar desde la última alerta)",
    handoff_reasons = { requested = "pide hablar con una persona", qualified = "lead cualificado",
                        not_understood = "el asistente no le entiende",
                        takeover = "conversación atendida por el equipo" },
    reasons = {
      logged_out = "la sesión se cerró desde el teléfono",
      banned = "WhatsApp ha bloqueado el número",
      banned_temporarily = "WhatsApp ha bloqueado el número temporalmente",
      forbidden = "WhatsApp ha denegado el acceso",
      connection_lost = "se perdió la conexión",
      connection_closed = "la conexión se cerró",
      replaced = "la sesión se abrió en otro sitio",
      bad_session = "las credenciales guardadas no son válidas",
      unavailable = "el servicio no está disponible",
      restart_required = "hay que reiniciar la instancia",
      multidevice_mismatch = "versión multidispositivo incompatible",
      qr_limit_reached = "se agotaron los códigos QR",
      unknown = "motivo desconocido",
    },
    qr_subject = "Código QR para vincular WhatsApp ({instance})",
    qr_body = "Hola:\n\nLa instancia {instance} necesita vincular el teléfono de la empresa. "
              .. "Abre WhatsApp > Dispositivos vinculados > Vincular un dispositivo y escanea el "
              .. "código adjunto. Los códigos caducan en unos 20 segundos; si ha caducado, "
              .. "espera al siguiente correo (como mucho uno cada {interval} minutos).{pairing}\n\n"
              .. "— wahook",
    qr_pairing = "\n\nTambién puedes vincularlo con el código {code}.",
    media_label = { image = "[imagen]", video = "[vídeo]", audio = "[audio]", voice = "[nota de voz]",
                    document = "[documento]", sticker = "[sticker]", location = "[ubicación]",
                    contact = "[contacto]", poll = "[encuesta]", unknown = "[mensaje]" },
  },
}

-- Settings whose value is a duration: seconds as a number, or "500ms", "30s", "10m", "2h", "1d".
M.DURATIONS = {
  ["conversation.window"] = true, ["bot.debounce"] = true, ["bot.typing_extension"] = true,
  ["bot.debounce_max"] = true, ["bot.max_message_age"] = true, ["bot.takeover"] = true,
  ["bot.loop.fast_reply"] = true, ["bot.loop.mute"] = true, ["csat.quiet_after_handoff"] = true,
  ["csat.answer_window"] = true, ["alerts.connection_cooldown"] = true,
  ["alerts.qr_mail_interval"] = true,
}

-- Maps whose keys the operator chooses: a configured one replaces the default whole.
M.OPEN = {
  ["intents"] = true, ["flows"] = true, ["slots.property_types"] = true, ["slots.timing"] = true,
  ["lead_score.intent"] = true, ["lead_score.timing"] = true, ["lead_score.budget"] = true,
  ["texts.questions_by_intent"] = true, ["texts.intent_names"] = true,
  ["texts.timing_names"] = true, ["texts.reasons"] = true, ["texts.handoff_reasons"] = true,
  ["texts.media_label"] = true,
}

-- Numbers (and durations, in seconds) with bounds, where a value outside would break something:
-- the host refuses timers over 30 days and typing delays over 300000 ms.
M.RANGES = {
  ["bot.max_replies_per_minute"] = { 1, 1000 }, ["bot.max_not_understood"] = { 1, 1000 },
  ["bot.max_pending"] = { 1, 50 }, ["bot.typing_delay_ms"] = { 0, 300000 },
  ["bot.debounce"] = { 0, 3600 }, ["bot.debounce_max"] = { 0, 86400 },
  ["bot.typing_extension"] = { 0, 3600 }, ["bot.loop.max_fast_replies"] = { 1, 1000 },
  ["bot.loop.max_repeats"] = { 2, 1000 }, ["csat.quiet_after_handoff"] = { 1, 30 * 86400 },
  ["lead_score.max"] = { 0, 1e9 },
}

-- Open maps whose values are all of one kind.
M.OPEN_VALUES = {
  ["lead_score.intent"] = "number", ["lead_score.timing"] = "number",
  ["texts.intent_names"] = "string", ["texts.timing_names"] = "string",
  ["texts.reasons"] = "string", ["texts.handoff_reasons"] = "string",
  ["texts.media_label"] = "string",
}

-- Settings that take a text or a list of texts.
M.TEXT_OR_LIST = { ["admin_email"] = true }

M.SLOTS = { zone = true, type = true, budget = true, timing = true }
M.WEEKDAYS = { "mon", "tue", "wed", "thu", "fri", "sat", "sun" }

-- ---- reading the configuration --------------------------------------------------------------

local function bad(path, fmt, ...)
  error("wahook.scripts.config." .. path .. ": " .. string.format(fmt, ...), 0)
end

local function is_null(v)
  return type(v) == "userdata" -- the JSON null sentinel; nothing else reaches scripts
end

-- A plain copy of a (read-only) config value; null becomes nil.
local function plain(v)
  if is_null(v) then return nil end
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = plain(x) end
  return out
end

local function is_list(t)
  if type(t) ~= "table" then return false end
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

function M.duration(v, path)
  if type(v) == "number" then
    if v < 0 or v ~= v then bad(path, "must be a duration >= 0") end
    return v
  end
  if type(v) == "string" then
    local n, unit = v:match("^%s*(%d+%.?%d*)%s*(%a*)%s*$")
    local mult = ({ [""] = 1, ms = 0.001, s = 1, m = 60, h = 3600, d = 86400 })[unit or "?"]
    if n and mult then return tonumber(n) * mult end
  end
  bad(path, "must be a duration such as 30s, 10m, 2h or 1d (a number means seconds), got %s",
      tostring(v))
end

local function shape(v)
  if type(v) ~= "table" then return type(v) end
  if next(v) == nil then return "empty" end
  return is_list(v) and "list" or "map"
end

local SHAPE_NAMES = { string = "a text", number = "a number", boolean = "true or false",
                      list = "a list", map = "a mapping", empty = "an empty list" }

local function join(path, k)
  return path == "" and tostring(k) or path .. "." .. tostring(k)
end

-- Lays user over def at path, checking names and types. Returns tables shared with def; the
-- caller copies.
local function merge(def, user, path)
  if user == nil then return def end
  if M.DURATIONS[path] then return M.duration(user, path) end
  local ds, us = shape(def), shape(user)
  if M.TEXT_OR_LIST[path] and (us == "string" or us == "list" or us == "empty") then return user end
  if ds == "list" or ds == "empty" then
    if us ~= "list" and us ~= "empty" then
      bad(path, "must be a list, got %s", SHAPE_NAMES[us] or us)
    end
    return user
  end
  if ds == "map" then
    if us ~= "map" and us ~= "empty" then
      bad(path, "must be a mapping, got %s", SHAPE_NAMES[us] or us)
    end
    if M.OPEN[path] then return user end
    local out = {}
    for k, v in pairs(def) do out[k] = v end
    for k, v in pairs(user) do
      if def[k] == nil then
        local known = {}
        for name in pairs(def) do known[#known + 1] = name end
        table.sort(known)
        bad(join(path, k), "unknown setting (known%s: %s)", path == "" and "" or " here",
            table.concat(known, ", "))
      end
      out[k] = merge(def[k], v, join(path, k))
    end
    return out
  end
  if ds ~= us then bad(path, "must be %s, got %s", SHAPE_NAMES[ds] or ds, SHAPE_NAMES[us] or us) end
  return user
end

local function deep_copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = deep_copy(v) end
  return c
end

-- Turns every duration setting (also those left at their default) into seconds.
local function parse_durations(t, path)
  for k, v in pairs(t) do
    local p = join(path, k)
    if M.DURATIONS[p] then
      t[k] = M.duration(v, p)
    elseif type(v) == "table" and not is_list(v) then
      parse_durations(v, p)
    end
  end
end

local function get_path(t, path)
  for k in path:gmatch("[^.]+") do
    if type(t) ~= "table" then return nil end
    t = t[k]
  end
  return t
end

local function check_values(cfg)
  for path, range in pairs(M.RANGES) do
    local v = get_path(cfg, path)
    if type(v) == "number" and (v < range[1] or v > range[2]) then
      bad(path, "must be between %s and %s", tostring(range[1]), tostring(range[2]))
    end
  end
  for path, kind in pairs(M.OPEN_VALUES) do
    for k, v in pairs(get_path(cfg, path) or {}) do
      if type(v) ~= kind then bad(path .. "." .. tostring(k), "must be %s", SHAPE_NAMES[kind]) end
    end
  end
  for intent, by in pairs(cfg.texts.questions_by_intent) do
    for slot, q in pairs(type(by) == "table" and by or { [""] = by }) do
      if not M.SLOTS[slot] or type(q) ~= "string" then
        bad("texts.questions_by_intent." .. tostring(intent),
            "must map slots (zone, type, budget, timing) to texts")
      end
    end
  end
  for intent, steps in pairs(cfg.lead_score.budget) do
    for i, st in ipairs(type(steps) == "table" and steps or { false }) do
      if type(st) ~= "table" or type(st.from) ~= "number" or type(st.points) ~= "number" then
        bad("lead_score.budget." .. tostring(intent) .. "[" .. i .. "]",
            "must be {from: amount, points: n}")
      end
    end
  end
end

local function merge_root(user)
  local out = deep_copy(merge(M.DEFAULTS, user, ""))
  parse_durations(out, "")
  check_values(out)
  return out
end

-- ---- derived values -------------------------------------------------------------------------

local function strings(list, path)
  for i, v in ipairs(list) do
    if type(v) ~= "string" then bad(path .. "[" .. i .. "]", "must be a text") end
  end
  return list
end

local function minutes(hhmm, path)
  local h, m = hhmm:match("^(%d%d?):(%d%d)$")
  h, m = tonumber(h), tonumber(m)
  if not h or h > 24 or m > 59 or (h == 24 and m > 0) then
    bad(path, "\"%s\" is not a time HH:MM", hhmm)
  end
  return h * 60 + m
end

local function parse_hours(h)
  local days = {}
  for i, name in ipairs(M.WEEKDAYS) do
    local list = {}
    for j, span in ipairs(strings(h.weekly[name] or {}, "hours.weekly." .. name)) do
      local path = "hours.weekly." .. name .. "[" .. j .. "]"
      local a, b = span:match("^%s*([%d:]+)%s*%-%s*([%d:]+)%s*$")
      if not a then bad(path, "\"%s\" is not an interval HH:MM-HH:MM", span) end
      local s, e = minutes(a, path), minutes(b, path)
      if e <= s then bad(path, "\"%s\" ends before it starts (split intervals at midnight)", span) end
      list[#list + 1] = { s, e }
    end
    table.sort(list, function(x, y) return x[1] < y[1] end)
    days[i] = list
  end
  for name in pairs(h.weekly) do
    local known = false
    for _, d in ipairs(M.WEEKDAYS) do known = known or d == name end
    if not known then
      bad("hours.weekly." .. tostring(name), "unknown day (use mon, tue, wed, thu, fri, sat, sun)")
    end
  end
  local holidays = {}
  for i, d in ipairs(strings(h.holidays, "hours.holidays")) do
    local y, mo, da = d:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
    if not y then mo, da = d:match("^(%d%d)%-(%d%d)$") end
    if not mo or tonumber(mo) < 1 or tonumber(mo) > 12 or tonumber(da) < 1 or tonumber(da) > 31 then
      bad("hours.holidays[" .. i .. "]", "\"%s\" is not a date YYYY-MM-DD or MM-DD", d)
    end
    holidays[d] = true
  end
  -- An unknown zone raises here, at load time, with the host module's message.
  wahook.localtime(h.timezone, 0)
  return { timezone = h.timezone, days = days, holidays = holidays }
end

local function fold_list(list, path)
  local out = {}
  for _, v in ipairs(strings(list, path)) do
    local k = text.keyword(v)
    if k.word ~= "" then out[#out + 1] = k end
  end
  return out
end

local function compile_intents(intents)
  local out = {}
  for name, spec in pairs(intents) do
    local path = "intents." .. name
    if type(spec) ~= "table" or is_list(spec) and next(spec) ~= nil then
      bad(path, "must be a mapping {keywords: [...], patterns: [...]}")
    end
    for k in pairs(spec) do
      if k ~= "keywords" and k ~= "patterns" then
        bad(path .. "." .. k, "unknown setting (known here: keywords, patterns)")
      end
    end
    local patterns = strings(spec.patterns or {}, path .. ".patterns")
    for i, p in ipairs(patterns) do
      if not pcall(string.find, "", p) then
        bad(path .. ".patterns[" .. i .. "]", "is not a valid Lua pattern")
      end
    end
    out[name] = { keywords = fold_list(spec.keywords or {}, path .. ".keywords"),
                  patterns = patterns }
  end
  return out
end

local function compile_map_of_words(map, path)
  local out = {}
  for name, words in pairs(map) do
    out[#out + 1] = { name = name, words = fold_list(words, path .. "." .. name) }
  end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

local function compile_flows(flows, intents)
  for name, slots in pairs(flows) do
    for i, s in ipairs(strings(slots, "flows." .. name)) do
      if not M.SLOTS[s] then
        bad("flows." .. name .. "[" .. i .. "]",
            "unknown slot \"%s\" (known: zone, type, budget, timing)", s)
      end
    end
    if not intents[name] then bad("flows." .. name, "has no intent of that name under intents") end
  end
  return flows
end

local function blacklist(list)
  local set = {}
  for i, v in ipairs(list) do
    if type(v) == "number" then v = string.format("%d", math.tointeger(v) or -1) end
    if type(v) ~= "string" then
      bad("bot.blacklist[" .. i .. "]", "must be a phone number or a JID")
    end
    if v:find("@", 1, true) then set[v] = true else set[(v:gsub("%D", ""))] = true end
  end
  return set
end

function M.build(src)
  local cfg = merge_root(plain(src) or {})
  cfg.hours = parse_hours(cfg.hours)
  cfg.intents = compile_intents(cfg.intents)
  cfg.flows = compile_flows(cfg.flows, cfg.intents)
  for i, name in ipairs(strings(cfg.flow_priority, "flow_priority")) do
    if not cfg.flows[name] then
      bad("flow_priority[" .. i .. "]", "\"%s\" has no flow under flows", name)
    end
  end
  cfg.zones = fold_list(cfg.slots.zones, "slots.zones")
  cfg.property_types = compile_map_of_words(cfg.slots.property_types, "slots.property_types")
  cfg.timings = compile_map_of_words(cfg.slots.timing, "slots.timing")
  cfg.signatures = fold_list(cfg.bot.loop.signatures, "bot.loop.signatures")
  cfg.blacklist = blacklist(cfg.bot.blacklist)
  -- Keywords typed on the business phone compare whole, case-insensitively ("#bot").
  cfg.resume_keyword = text.lower(text.squash(cfg.bot.resume_keyword))
  cfg.close_keyword = text.lower(text.squash(cfg.bot.close_keyword))
  if #cfg.texts.weekdays ~= 7 then bad("texts.weekdays", "must list 7 day names, Monday first") end
  local mail = cfg.admin_email
  if type(mail) == "string" then mail = mail ~= "" and { mail } or {} end
  cfg.admin_emails = strings(mail or {}, "admin_email")
  for _, addr in ipairs(cfg.admin_emails) do
    if not addr:match("^[^%s@<>,;\"]+@[^%s@<>,;\"]+$") then
      bad("admin_email", "\"%s\" is not an e-mail address", addr)
    end
  end
  return cfg
end

-- ---- the cache ------------------------------------------------------------------------------

local cached_src, cached

-- The settings for the running configuration (rebuilt when wahook.config changes, i.e. on a
-- reload, or in specs).
function M.get()
  local src = wahook.config
  if cached == nil or src ~= cached_src then
    cached = M.build(src)
    cached_src = src
  end
  return cached
end

return M
