/* Analytics over the store (issue 6 "Analytics"): messages, events, bot response and handoff
 * rates, first-response times, delivery and read rates, errors per stage, dead letters, CSAT and
 * daily/hourly series for a time range and an instance, computed from read-only connections with
 * index-backed queries. Served as GET /api/stats (an admin module) and `wahook stats`. */
#ifndef WAHOOK_STATS_H
#define WAHOOK_STATS_H

#include <jansson.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

struct wh_config;
struct wh_admin_module;
struct st_h2o_req_t;

#define WH_STATS_NAME_MAX 128        /* instance names (bytes, NUL included) */
#define WH_STATS_TZ_MAX 64           /* time zone names */
#define WH_STATS_TOP_DEFAULT 10      /* top contacts */
#define WH_STATS_TOP_MAX 100
#define WH_STATS_DEFAULT_DAYS 30     /* range when since is not given */
#define WH_STATS_MAX_RANGE_DAYS 400  /* longer ranges are refused */
#define WH_STATS_HOURLY_MAX_DAYS 31  /* the hourly series is only built up to this range */
#define WH_STATS_MAX_SAMPLES 1000000 /* first-response samples kept; beyond, a reservoir sample */
#define WH_STATS_TIMEOUT_MS 30000    /* default query deadline */

/* Migration 4 (to be appended to the store's migrations after migration 3): what the stats
 * queries need. Time-ordered covering indexes on messages and outbox; events by (event, status,
 * time, instance); a small partial index of dead outbox rows; and stats_replies, bot_reply facts'
 * in_reply_to and latency_ms in plain columns kept by triggers (SQLite 3.40 re-parses the JSON on
 * every row at query time and cannot read an indexed expression back from its index).
 * Idempotent (IF NOT EXISTS, INSERT OR IGNORE), so tests and benchmarks may apply it again. */
#define WH_STATS_MIGRATION                                                                     \
    "CREATE INDEX IF NOT EXISTS stats_events_kind"                                           \
    " ON events(event, status, received_at, instance);"                                      \
    "CREATE INDEX IF NOT EXISTS stats_messages_time ON messages(created_at, instance,"       \
    " direction, origin, type, status, contact_key, wa_id);"                                 \
    "CREATE INDEX IF NOT EXISTS stats_outbox_time"                                           \
    " ON outbox(created_at, instance, target, status);"                                      \
    "CREATE INDEX IF NOT EXISTS stats_outbox_dead"                                           \
    " ON outbox(status, instance, target) WHERE status = 'dead';"                            \
    "CREATE TABLE IF NOT EXISTS stats_replies("                                              \
    " fact_id INTEGER PRIMARY KEY," /* facts.id */                                           \
    " instance TEXT NOT NULL,"                                                               \
    " contact_key TEXT,"                                                                     \
    " in_reply_to TEXT,"                                                                     \
    " latency_ms INTEGER,"                                                                   \
    " created_at INTEGER NOT NULL);"                                                         \
    "CREATE INDEX IF NOT EXISTS stats_replies_time ON stats_replies(created_at, instance,"   \
    " contact_key, in_reply_to, latency_ms);"                                                \
    "CREATE TRIGGER IF NOT EXISTS stats_replies_insert AFTER INSERT ON facts"                \
    " WHEN NEW.kind = 'bot_reply' BEGIN"                                                     \
    " INSERT OR REPLACE INTO stats_replies(fact_id, instance, contact_key, in_reply_to,"     \
    " latency_ms, created_at) VALUES(NEW.id, NEW.instance, NEW.contact_key,"                 \
    " CASE WHEN json_valid(NEW.fields) THEN json_extract(NEW.fields, '$.in_reply_to') END,"  \
    " CASE WHEN json_valid(NEW.fields) THEN json_extract(NEW.fields, '$.latency_ms') END,"   \
    " NEW.created_at); END;"                                                                 \
    "CREATE TRIGGER IF NOT EXISTS stats_replies_rekey"                                       \
    " AFTER UPDATE OF instance, contact_key ON facts WHEN NEW.kind = 'bot_reply' BEGIN"      \
    " UPDATE stats_replies SET instance = NEW.instance, contact_key = NEW.contact_key"       \
    " WHERE fact_id = NEW.id; END;"                                                          \
    "CREATE TRIGGER IF NOT EXISTS stats_replies_delete AFTER DELETE ON facts"                \
    " WHEN OLD.kind = 'bot_reply' BEGIN DELETE FROM stats_replies WHERE fact_id = OLD.id;"   \
    " END;"                                                                                  \
    "INSERT OR IGNORE INTO stats_replies(fact_id, instance, contact_key, in_reply_to,"       \
    " latency_ms, created_at) SELECT id, instance, contact_key,"                             \
    " CASE WHEN json_valid(fields) THEN json_extract(fields, '$.in_reply_to') END,"          \
    " CASE WHEN json_valid(fields) THEN json_extract(fields, '$.latency_ms') END,"           \
    " created_at FROM facts WHERE kind = 'bot_reply';"

/* What to compute. Fill with wh_stats_params_init, then wh_stats_param_set per argument, then
 * wh_stats_params_resolve (or all at once with wh_stats_params_from_query). */
typedef struct wh_stats_params {
    int64_t since_ms;                /* range [since, until), ms since the epoch (resolved) */
    int64_t until_ms;
    char instance[WH_STATS_NAME_MAX]; /* "" = all instances */
    char tz[WH_STATS_TZ_MAX];         /* "" = UTC: days and hours of the series */
    int top;                          /* top contacts, 1..WH_STATS_TOP_MAX */
    int timeout_ms;                   /* query deadline; 0 = WH_STATS_TIMEOUT_MS */
    char since_arg[64];               /* raw arguments, resolved by wh_stats_params_resolve */
    char until_arg[64];
} wh_stats_params_t;

/* Defaults: the last WH_STATS_DEFAULT_DAYS days up to now, all instances, UTC, top 10. */
void wh_stats_params_init(wh_stats_params_t *p);

/* Sets one argument by name: since, until (a time, see wh_stats_parse_time), instance, tz (an
 * IANA zone such as Europe/Madrid), top (1..100). Returns 0, or WH_EINVAL with the reason in err
 * (unknown name, empty or over-long value, bad number). */
int wh_stats_param_set(wh_stats_params_t *p, const char *name, const char *value, char *err,
                       size_t errlen);

/* Resolves since/until against now_ms and the zone, and checks the range: since < until, at
 * most WH_STATS_MAX_RANGE_DAYS days, an existing zone. Returns 0 or WH_EINVAL with err. */
int wh_stats_params_resolve(wh_stats_params_t *p, int64_t now_ms, char *err, size_t errlen);

/* Parses a URL query string (without '?', percent-encoded, '&'-separated; unknown names are
 * ignored) into p and resolves it. Returns 0 or WH_EINVAL with err. */
int wh_stats_params_from_query(wh_stats_params_t *p, const char *query, size_t len,
                               int64_t now_ms, char *err, size_t errlen);

/* A time argument as ms since the epoch: epoch milliseconds (digits only); ISO 8601
 * (YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS[.fff]] with Z, +HH:MM, +HHMM or no zone, a space also
 * separating date and time); "now"; or a span before now such as 90s, 15m, 24h, 7d, 2w.
 * Without a zone, local times are read in tz (NULL or "" = UTC). Returns 0, WH_EINVAL for a
 * malformed time, WH_ENOTFOUND for an unknown zone. */
int wh_stats_parse_time(const char *s, const char *tz, int64_t now_ms, int64_t *out_ms);

/* Nearest-rank percentile (0 < pct <= 100) of n sorted values: sorted[ceil(pct/100*n) - 1].
 * n must be > 0. */
int64_t wh_stats_percentile(const int64_t *sorted, size_t n, double pct);

/* Opens a read-only connection for stats queries (busy timeout, memory-mapped reads). Returns
 * 0, WH_ENOTFOUND when the database does not exist, or WH_EIO; reason in err. */
int wh_stats_open(const char *db_path, sqlite3 **out, char *err, size_t errlen);

/* Runs every stats query in one read transaction on db and returns a new JSON object, or NULL
 * with the reason in err (a read error, the deadline, a store without migration 4). p must be
 * resolved. The object (rates are 0..1 with 4 decimals, null when undefined):
 *
 *  range        {since, until (ms, exclusive), instance|null, tz, days}
 *  messages     {total, in, out, by_type:[{type,total,in,out}], outbound_by_origin:{origin:n},
 *                contacts, contacts_inbound, conversations,
 *                top_contacts:[{instance,contact,name|null,in,out,total}]}
 *  events       {total, by_type:[{event,total,done,pending,dead}]}
 *  bot          {inbound, replied, response_rate, replies, conversations, handoffs,
 *                handoff_conversations, handoff_rate, handoff_reasons:[{reason,count}],
 *                first_response:{conversations, measured, median_ms, p95_ms, avg_ms, sampled}}
 *  delivery     {outbound, sent, delivered, read, failed, delivery_rate, read_rate}
 *  errors       {processing_dead, processing_retrying, timers_dead, delivery_dead:{target:n},
 *                delivery_dead_total}
 *  outbox       {by_target:[{target,total,pending,inflight,done,dead}]}
 *  dead_letters {events, outbox:{target:n}, total}
 *  csat         {answers, average|null, distribution:[{score,count}]}
 *  leads        {count, by_stage:[{stage,count,avg_score|null}]}
 *  facts        {bot_reply, handoff, lead, csat, custom, timer_dead}
 *  series       {day:[{date,in,out,events,errors,bot_replies,handoffs}],
 *                hour:[{start,in,out,errors,bot_replies,handoffs}] | null over 31 days,
 *                hour_of_day:[{hour,in,out,errors,bot_replies,handoffs}] (24)}
 *  generated_at, took_ms
 *
 * Messages count by when the store recorded them (created_at). A conversation is a contact-day
 * (in tz) with an inbound message. replied: inbound messages of the range named by a bot_reply
 * fact's in_reply_to (recorded up to a day after until). first_response: latency_ms of the first
 * bot_reply of each contact-day, nearest-rank median and p95. handoff_rate: contact-days with a
 * handoff fact over conversations. delivery: outbound messages by their furthest receipt (sent
 * from SERVER_ACK, delivered from DELIVERY_ACK, read from READ, failed = ERROR). Lists are
 * largest first; names past 64 add up as "other". errors and series count within the range;
 * dead_letters and processing_retrying are the store's state now. */
json_t *wh_stats_query_db(sqlite3 *db, const wh_stats_params_t *p, char *err, size_t errlen);
/* The same on a connection of its own to db_path. */
json_t *wh_stats_query(const char *db_path, const wh_stats_params_t *p, char *err,
                       size_t errlen);

/* The SQL of every statement wh_stats_query_db runs, for the EXPLAIN QUERY PLAN test. NULL past
 * the end. */
const char *wh_stats_sql(size_t i);

/* The admin module serving GET /api/stats?since=…&until=…&instance=…&tz=…&top=… (prefix
 * "/api/stats"): 401 without the admin token (or an accepted session, see wh_stats_set_auth),
 * 400 for bad arguments, 405 for other methods, 503 when busy or on a read error; the query
 * runs through wh_admin_defer, never on the loop thread. At most two queries run at once. */
void wh_stats_module_init(struct wh_admin_module *m);

/* An extra way in besides the admin bearer token, e.g. the dashboard's session cookie: auth
 * returns 1 when req is allowed. Runs on the loop thread. Set before the server starts (or
 * NULL to remove). */
void wh_stats_set_auth(int (*auth)(void *ud, struct st_h2o_req_t *req), void *ud);

/* `wahook stats [--since T] [--until T] [--instance X] [--tz ZONE] [--top N] [--json]`: argv
 * holds the arguments after "stats" (-c/--config and --env-file, which main handles, are
 * skipped with their value). Opens <data-dir>/wahook.db read-only and prints a table, or the
 * /api/stats JSON with --json. Returns the exit status: 0, 1 on a store error, 2 on a usage
 * error. */
int wh_cli_stats(const struct wh_config *conf, int argc, char **argv);
/* The option lines of `wahook stats --help`. */
extern const char wh_cli_stats_usage[];

#endif
