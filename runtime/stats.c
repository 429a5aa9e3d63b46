/* Analytics over the store: argument parsing (ISO 8601, epoch ms, spans), the index-backed
 * queries run in one read transaction, their aggregation into the /api/stats JSON (totals, rates,
 * nearest-rank percentiles, daily and hourly series in a time zone), and the admin module that
 * serves it off the loop thread. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "wahook/admin.h"
#include "wahook/common.h"
#include "wahook/stats.h"
#include "wahook/tz.h"

#define WH__MS_HOUR INT64_C(3600000)
#define WH__MS_DAY INT64_C(86400000)
#define WH__TAB_MAX 64        /* distinct message types / event names / targets kept */
#define WH__LIST_MAX 20       /* handoff reasons, CSAT scores, lead stages listed */
#define WH__MAX_CONCURRENT 2  /* stats queries running at once in the server */

static void wh__err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void wh__err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- calendar arithmetic (proleptic Gregorian, no time zone) --------------------------------- */

static int64_t wh__floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* Days since 1970-01-01 of a civil date (H. Hinnant's algorithm). */
static int64_t wh__days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = wh__floordiv(y, 400);
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void wh__civil_from_days(int64_t z, int *y, int *m, int *d)
{
    z += 719468;
    int64_t era = wh__floordiv(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

static int wh__days_in_month(int y, int m)
{
    static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return dm[m - 1];
}

static int wh__is_utc(const char *tz)
{
    return tz == NULL || tz[0] == '\0' || strcmp(tz, "UTC") == 0;
}

/* Local calendar fields of epoch second t in tz; UTC without touching zoneinfo. */
static int wh__local(const char *tz, int64_t t, wh_tm_t *tm)
{
    if (!wh__is_utc(tz))
        return wh_tz_localtime(tz, t, tm);
    memset(tm, 0, sizeof(*tm));
    int64_t days = wh__floordiv(t, 86400), rem = t - days * 86400;
    wh__civil_from_days(days, &tm->year, &tm->month, &tm->day);
    tm->hour = (int)(rem / 3600);
    tm->min = (int)(rem % 3600 / 60);
    tm->sec = (int)(rem % 60);
    snprintf(tm->abbr, sizeof(tm->abbr), "UTC");
    return WH_OK;
}

/* ---- time arguments ------------------------------------------------------------------------- */

/* Reads exactly n digits at *s into *out and advances. */
static int wh__digits(const char **s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*s)[i]))
            return 0;
        v = v * 10 + ((*s)[i] - '0');
    }
    *s += n;
    *out = v;
    return 1;
}

static int wh__parse_iso(const char *s, const char *tz, int64_t *out_ms)
{
    int y, mo, d, h = 0, mi = 0, sec = 0, ms = 0;
    if (!wh__digits(&s, 4, &y) || *s++ != '-' || !wh__digits(&s, 2, &mo) || *s++ != '-' ||
        !wh__digits(&s, 2, &d))
        return WH_EINVAL;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > wh__days_in_month(y, mo))
        return WH_EINVAL;
    int has_zone = 0;
    int64_t zone_sec = 0;
    if (*s == 'T' || *s == 't' || *s == ' ') {
        s++;
        if (!wh__digits(&s, 2, &h) || *s++ != ':' || !wh__digits(&s, 2, &mi))
            return WH_EINVAL;
        if (*s == ':') {
            s++;
            if (!wh__digits(&s, 2, &sec))
                return WH_EINVAL;
            if (*s == '.' || *s == ',') {
                s++;
                int nd = 0, frac = 0;
                while (isdigit((unsigned char)*s)) {
                    if (nd < 3)
                        frac = frac * 10 + (*s - '0');
                    nd++, s++;
                }
                if (nd == 0)
                    return WH_EINVAL;
                for (int i = nd; i < 3; i++)
                    frac *= 10;
                ms = frac;
            }
        }
        if (h > 23 || mi > 59 || sec > 59)
            return WH_EINVAL;
        if (*s == 'Z' || *s == 'z') {
            s++;
            has_zone = 1;
        } else if (*s == '+' || *s == '-') {
            int sign = *s++ == '-' ? -1 : 1, zh, zm;
            if (!wh__digits(&s, 2, &zh))
                return WH_EINVAL;
            if (*s == ':')
                s++;
            if (!wh__digits(&s, 2, &zm) || zh > 23 || zm > 59)
                return WH_EINVAL;
            has_zone = 1;
            zone_sec = sign * (zh * 3600 + zm * 60);
        }
    }
    if (*s != '\0')
        return WH_EINVAL;
    int64_t t;
    if (has_zone || wh__is_utc(tz)) {
        t = wh__days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - zone_sec;
    } else {
        wh_tm_t f = {.year = y, .month = mo, .day = d, .hour = h, .min = mi, .sec = sec};
        int rc = wh_tz_mktime(tz, &f, &t);
        if (rc != WH_OK)
            return rc;
    }
    *out_ms = t * 1000 + ms;
    return WH_OK;
}

int wh_stats_parse_time(const char *s, const char *tz, int64_t now_ms, int64_t *out_ms)
{
    if (s == NULL || s[0] == '\0')
        return WH_EINVAL;
    if (strcmp(s, "now") == 0) {
        *out_ms = now_ms;
        return WH_OK;
    }
    size_t nd = strspn(s, "0123456789");
    if (nd > 0 && s[nd] == '\0') { /* epoch milliseconds */
        if (nd > 15)
            return WH_EINVAL;
        *out_ms = strtoll(s, NULL, 10);
        return WH_OK;
    }
    if (nd > 0 && nd <= 7 && s[nd + 1] == '\0' && strchr("smhdw", s[nd]) != NULL) {
        static const int64_t unit[] = {['s' - 'a'] = 1000,
                                       ['m' - 'a'] = 60000,
                                       ['h' - 'a'] = WH__MS_HOUR,
                                       ['d' - 'a'] = WH__MS_DAY,
                                       ['w' - 'a'] = 7 * WH__MS_DAY};
        int64_t n = strtoll(s, NULL, 10);
        *out_ms = now_ms - n * unit[s[nd] - 'a'];
        return WH_OK;
    }
    if (nd == 4 && s[4] == '-')
        return wh__parse_iso(s, tz, out_ms);
    return WH_EINVAL;
}

/* ---- parameters ------------------------------------------------------------------------------ */

void wh_stats_params_init(wh_stats_params_t *p)
{
    memset(p, 0, sizeof(*p));
    p->top = WH_STATS_TOP_DEFAULT;
}

static int wh__copy_arg(char *dst, size_t cap, const char *name, const char *value, char *err,
                        size_t errlen)
{
    size_t n = strlen(value);
    if (n == 0 || n >= cap) {
        wh__err(err, errlen, "%s must be 1 to %zu bytes", name, cap - 1);
        return WH_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)value[i] < 0x20 || value[i] == 0x7f) {
            wh__err(err, errlen, "%s contains a control character", name);
            return WH_EINVAL;
        }
    }
    memcpy(dst, value, n + 1);
    return WH_OK;
}

int wh_stats_param_set(wh_stats_params_t *p, const char *name, const char *value, char *err,
                       size_t errlen)
{
    if (name == NULL || value == NULL) {
        wh__err(err, errlen, "missing argument");
        return WH_EINVAL;
    }
    if (strcmp(name, "since") == 0)
        return wh__copy_arg(p->since_arg, sizeof(p->since_arg), name, value, err, errlen);
    if (strcmp(name, "until") == 0)
        return wh__copy_arg(p->until_arg, sizeof(p->until_arg), name, value, err, errlen);
    if (strcmp(name, "instance") == 0)
        return wh__copy_arg(p->instance, sizeof(p->instance), name, value, err, errlen);
    if (strcmp(name, "tz") == 0)
        return wh__copy_arg(p->tz, sizeof(p->tz), name, value, err, errlen);
    if (strcmp(name, "top") == 0) {
        char *end = NULL;
        errno = 0;
        long v = strtol(value, &end, 10);
        if (value[0] == '\0' || *end != '\0' || errno != 0 || v < 1 || v > WH_STATS_TOP_MAX) {
            wh__err(err, errlen, "top must be a number from 1 to %d", WH_STATS_TOP_MAX);
            return WH_EINVAL;
        }
        p->top = (int)v;
        return WH_OK;
    }
    wh__err(err, errlen, "unknown argument '%.40s'", name);
    return WH_EINVAL;
}

int wh_stats_params_resolve(wh_stats_params_t *p, int64_t now_ms, char *err, size_t errlen)
{
    if (!wh__is_utc(p->tz)) {
        wh_tm_t tm;
        int rc = wh_tz_localtime(p->tz, now_ms / 1000, &tm);
        if (rc != WH_OK) {
            wh__err(err, errlen, "unknown time zone '%s'", p->tz);
            return WH_EINVAL;
        }
    }
    int64_t until = now_ms, since;
    if (p->until_arg[0] != '\0' &&
        wh_stats_parse_time(p->until_arg, p->tz, now_ms, &until) != WH_OK) {
        wh__err(err, errlen,
                "until: '%s' is not a time (epoch ms, ISO 8601 such as 2025-03-10T09:00:00Z, "
                "now, or a span such as 7d)",
                p->until_arg);
        return WH_EINVAL;
    }
    since = until - WH_STATS_DEFAULT_DAYS * WH__MS_DAY;
    if (p->since_arg[0] != '\0' &&
        wh_stats_parse_time(p->since_arg, p->tz, now_ms, &since) != WH_OK) {
        wh__err(err, errlen,
                "since: '%s' is not a time (epoch ms, ISO 8601 such as 2025-03-10T09:00:00Z, "
                "now, or a span such as 7d)",
                p->since_arg);
        return WH_EINVAL;
    }
    if (since >= until) {
        wh__err(err, errlen, "since must be before until");
        return WH_EINVAL;
    }
    if (until - since > WH_STATS_MAX_RANGE_DAYS * WH__MS_DAY) {
        wh__err(err, errlen, "the range is longer than %d days", WH_STATS_MAX_RANGE_DAYS);
        return WH_EINVAL;
    }
    if (since < -WH_TZ_TIME_MAX || until > WH_TZ_TIME_MAX) {
        wh__err(err, errlen, "the range is out of bounds");
        return WH_EINVAL;
    }
    if (p->top < 1 || p->top > WH_STATS_TOP_MAX)
        p->top = WH_STATS_TOP_DEFAULT;
    p->since_ms = since;
    p->until_ms = until;
    return WH_OK;
}

static int wh__hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes [s, s+n) into out (cap bytes with the NUL). Returns 0 when it does not fit or
 * decodes to a NUL byte. */
static int wh__urldecode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%' && i + 2 < n && wh__hexval(s[i + 1]) >= 0 &&
            wh__hexval(s[i + 2]) >= 0) {
            c = (char)(wh__hexval(s[i + 1]) * 16 + wh__hexval(s[i + 2]));
            i += 2;
            if (c == '\0')
                return 0;
        } else if (c == '+') {
            c = ' ';
        }
        if (o + 1 >= cap)
            return 0;
        out[o++] = c;
    }
    out[o] = '\0';
    return 1;
}

int wh_stats_params_from_query(wh_stats_params_t *p, const char *query, size_t len,
                               int64_t now_ms, char *err, size_t errlen)
{
    static const char *const known[] = {"since", "until", "instance", "tz", "top"};
    wh_stats_params_init(p);
    const char *q = query, *end = query != NULL ? query + len : NULL;
    while (q != NULL && q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        if (amp == NULL)
            amp = end;
        const char *eq = memchr(q, '=', (size_t)(amp - q));
        const char *kend = eq != NULL ? eq : amp;
        char name[16], value[256];
        if (kend > q && (size_t)(kend - q) < sizeof(name) &&
            wh__urldecode(q, (size_t)(kend - q), name, sizeof(name))) {
            int is_known = 0;
            for (size_t i = 0; i < WH_ARRAY_SIZE(known); i++)
                is_known |= strcmp(name, known[i]) == 0;
            if (is_known) {
                const char *v = eq != NULL ? eq + 1 : amp;
                if (!wh__urldecode(v, (size_t)(amp - v), value, sizeof(value))) {
                    wh__err(err, errlen, "%s: value too long or not decodable", name);
                    return WH_EINVAL;
                }
                int rc = wh_stats_param_set(p, name, value, err, errlen);
                if (rc != WH_OK)
                    return rc;
            }
        }
        q = amp + 1;
    }
    return wh_stats_params_resolve(p, now_ms, err, errlen);
}

int64_t wh_stats_percentile(const int64_t *sorted, size_t n, double pct)
{
    double r = ceil(pct / 100.0 * (double)n);
    size_t k = r < 1 ? 1 : (size_t)r;
    if (k > n)
        k = n;
    return sorted[k - 1];
}

/* ---- the queries ----------------------------------------------------------------------------- */

/* SQLite's GROUP BY sorts every row (about 0.6 us each) and json_extract parses per call (about
 * 1.5 us), which together made a 30-day query take 600 ms on a million messages. So: rows of the
 * covering time indexes stream into C, which aggregates them with hash tables; events are counted
 * per (event, status) with range counts inside SQLite (no rows leave it); bot replies come from
 * stats_replies, a copy of their two fields in plain columns kept by triggers (migration 4).
 *
 * Statements bind ?1 since (ms), ?2 until (ms, exclusive), ?3 the instance or NULL, ?4 the zone's
 * offset in ms (conversations are contact-days in the zone); ?5/?6 are statement specific. Each
 * one's plan must search an index of events, messages, facts, outbox (test_stats.c checks). */
enum {
    WH__Q_MESSAGES,
    WH__Q_REPLIES,
    WH__Q_EVENT_NEXT_STATUS,
    WH__Q_EVENT_NEXT,
    WH__Q_EVENT_COUNT,
    WH__Q_EVENT_DEAD,
    WH__Q_RETRYING,
    WH__Q_DEAD_EVENTS,
    WH__Q_OUTBOX,
    WH__Q_DEAD_OUTBOX,
    WH__Q_FACTS,
    WH__Q_HANDOFF_CONV,
    WH__Q_HANDOFF_REASONS,
    WH__Q_CSAT,
    WH__Q_LEADS,
    WH__Q_CONTACT_NAME, /* binds ?1 instance, ?2 contact key */
    WH__Q_HAS_SCHEMA,
    WH__Q_COUNT
};

#define WH__INST " AND (?3 IS NULL OR instance = ?3)"
#define WH__RANGE(col) " " col " >= ?1 AND " col " < ?2" WH__INST

static const char *const wh__sql[WH__Q_COUNT] = {
    [WH__Q_MESSAGES] = "SELECT created_at, instance, contact_key, direction, origin, type, status,"
                       " wa_id FROM messages INDEXED BY stats_messages_time"
                       " WHERE" WH__RANGE("created_at"),
    /* A reply recorded up to a day after the range still answers a message in it. */
    [WH__Q_REPLIES] = "SELECT created_at, instance, contact_key, in_reply_to, latency_ms"
                      " FROM stats_replies WHERE created_at >= ?1 AND created_at < ?2 + 86400000"
                      WH__INST " ORDER BY created_at",
    /* Skip scan: the next status of event ?5 after ?6, else the first pair of the next
     * event. (A row-value "(event, status) > (?5, ?6)" seeks on event only and then walks
     * every row of the current pair.) */
    [WH__Q_EVENT_NEXT_STATUS] = "SELECT event, status FROM events INDEXED BY stats_events_kind"
                                " WHERE event = ?5 AND status > ?6 ORDER BY status LIMIT 1",
    [WH__Q_EVENT_NEXT] = "SELECT event, status FROM events INDEXED BY stats_events_kind"
                         " WHERE event > ?5 ORDER BY event, status LIMIT 1",
    [WH__Q_EVENT_COUNT] = "SELECT count(*) FROM events INDEXED BY stats_events_kind"
                          " WHERE event = ?5 AND status = ?6 AND" WH__RANGE("received_at"),
    [WH__Q_EVENT_DEAD] = "SELECT received_at FROM events INDEXED BY stats_events_kind"
                         " WHERE event = ?5 AND status = 'dead' AND" WH__RANGE("received_at"),
    /* Events waiting for a retry now (like dead letters, not limited to the range): the
     * small partial index of migration 2. */
    [WH__Q_RETRYING] = "SELECT count(*) FROM events INDEXED BY events_retry"
                       " WHERE status = 'pending' AND next_attempt_at > 0" WH__INST,
    /* All dead events of one event name (the pair walk), whatever their time. */
    [WH__Q_DEAD_EVENTS] = "SELECT count(*) FROM events INDEXED BY stats_events_kind"
                          " WHERE event = ?5 AND status = 'dead'" WH__INST,
    [WH__Q_OUTBOX] = "SELECT created_at, target, status FROM outbox INDEXED BY stats_outbox_time"
                     " WHERE" WH__RANGE("created_at"),
    [WH__Q_DEAD_OUTBOX] = "SELECT target, count(*) FROM outbox INDEXED BY stats_outbox_dead"
                          " WHERE status = 'dead'" WH__INST " GROUP BY target",
    [WH__Q_FACTS] = "SELECT created_at, kind FROM facts INDEXED BY facts_kind"
                    " WHERE kind IN ('handoff', 'lead', 'csat', 'custom', 'timer_dead') AND"
                    WH__RANGE("created_at"),
    [WH__Q_HANDOFF_CONV] = "SELECT count(*) FROM (SELECT DISTINCT instance, contact_key,"
                           " (created_at + ?4) / 86400000 FROM facts INDEXED BY facts_kind"
                           " WHERE kind = 'handoff' AND" WH__RANGE("created_at") ")",
    [WH__Q_HANDOFF_REASONS] = "SELECT coalesce(json_extract(fields, '$.reason'), '') AS r,"
                              " count(*) AS n FROM facts INDEXED BY facts_kind"
                              " WHERE kind = 'handoff' AND" WH__RANGE("created_at")
                              " GROUP BY r ORDER BY n DESC, r LIMIT 20",
    [WH__Q_CSAT] = "SELECT json_extract(fields, '$.score') AS s, count(*)"
                   " FROM facts INDEXED BY facts_kind WHERE kind = 'csat' AND"
                   WH__RANGE("created_at") " AND s IS NOT NULL GROUP BY s ORDER BY s",
    [WH__Q_LEADS] = "SELECT coalesce(json_extract(fields, '$.stage'), '') AS st, count(*) AS n,"
                    " avg(json_extract(fields, '$.score')) FROM facts INDEXED BY facts_kind"
                    " WHERE kind = 'lead' AND" WH__RANGE("created_at")
                    " GROUP BY st ORDER BY n DESC, st LIMIT 20",
    [WH__Q_CONTACT_NAME] = "SELECT push_name FROM contacts WHERE instance = ?1 AND"
                           " contact_key = ?2",
    [WH__Q_HAS_SCHEMA] = "SELECT count(*) FROM sqlite_master WHERE name IN ('stats_replies',"
                         " 'stats_events_kind', 'stats_messages_time', 'stats_outbox_time',"
                         " 'stats_outbox_dead')",
};

const char *wh_stats_sql(size_t i)
{
    return i < WH__Q_COUNT ? wh__sql[i] : NULL;
}

/* ---- aggregation helpers ------------------------------------------------------------------ */

/* A small table of named counters; past WH__TAB_MAX names, rows add up under "other". */
typedef struct wh__kv {
    char *key;
    int64_t v[6];
} wh__kv_t;

typedef struct wh__tab {
    wh__kv_t *e;
    size_t n, cap;
} wh__tab_t;

static wh__kv_t *wh__tab_get(wh__tab_t *t, const char *key)
{
    if (key == NULL || key[0] == '\0')
        key = "unknown";
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->e[i].key, key) == 0)
            return &t->e[i];
    if (t->n >= WH__TAB_MAX) {
        key = "other";
        for (size_t i = 0; i < t->n; i++)
            if (strcmp(t->e[i].key, key) == 0)
                return &t->e[i];
    }
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 8;
        wh__kv_t *ne = realloc(t->e, nc * sizeof(*ne));
        if (ne == NULL)
            return NULL;
        t->e = ne;
        t->cap = nc;
    }
    wh__kv_t *kv = &t->e[t->n];
    memset(kv, 0, sizeof(*kv));
    if ((kv->key = strdup(key)) == NULL)
        return NULL;
    t->n++;
    return kv;
}

static void wh__tab_free(wh__tab_t *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->e[i].key);
    free(t->e);
    memset(t, 0, sizeof(*t));
}

/* Sort by column 0 descending, then by name. */
static int wh__kv_cmp(const void *a, const void *b)
{
    const wh__kv_t *x = a, *y = b;
    if (x->v[0] != y->v[0])
        return x->v[0] > y->v[0] ? -1 : 1;
    return strcmp(x->key, y->key);
}

/* 64-bit hashes of keys, for the big sets (contact-days, replied message ids): no strings kept.
 * Eight bytes per multiply, the length folded into the last word (so ("ab","c") and ("a","bc")
 * differ), a splitmix64 finish; with 64 bits, a collision among a year's million keys has a
 * probability near 1e-8. */
static uint64_t wh__hash(uint64_t h, const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    uint64_t w;
    for (; n >= 8; n -= 8, s += 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * UINT64_C(0x9E3779B97F4A7C15);
        h ^= h >> 32;
    }
    w = 0;
    if (n > 0)
        memcpy(&w, s, n);
    h = (h ^ w ^ ((uint64_t)(n + 1) << 56)) * UINT64_C(0x9E3779B97F4A7C15);
    return h ^ (h >> 29);
}

static uint64_t wh__hash_end(uint64_t h)
{
    h ^= h >> 30;
    h *= UINT64_C(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h *= UINT64_C(0x94d049bb133111eb);
    h ^= h >> 31;
    return h != 0 ? h : 1; /* 0 marks an empty slot */
}

#define WH__FNV UINT64_C(0xcbf29ce484222325)

/* Open addressing: key 0 is empty; val is free for the caller. */
typedef struct wh__set {
    uint64_t *keys;
    uint32_t *vals;
    size_t n, cap;
} wh__set_t;

static void wh__set_free(wh__set_t *s)
{
    free(s->keys);
    free(s->vals);
    memset(s, 0, sizeof(*s));
}

/* The slot of key: *found says whether it was there; inserted otherwise. NULL on ENOMEM. */
static uint32_t *wh__set_put(wh__set_t *s, uint64_t key, int *found)
{
    if (2 * (s->n + 1) > s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 1024;
        uint64_t *nk = calloc(nc, sizeof(*nk));
        uint32_t *nv = calloc(nc, sizeof(*nv));
        if (nk == NULL || nv == NULL) {
            free(nk);
            free(nv);
            return NULL;
        }
        for (size_t i = 0; i < s->cap; i++) {
            if (s->keys[i] == 0)
                continue;
            size_t j = s->keys[i] & (nc - 1);
            while (nk[j] != 0)
                j = (j + 1) & (nc - 1);
            nk[j] = s->keys[i];
            nv[j] = s->vals[i];
        }
        free(s->keys);
        free(s->vals);
        s->keys = nk;
        s->vals = nv;
        s->cap = nc;
    }
    size_t j = key & (s->cap - 1);
    while (s->keys[j] != 0 && s->keys[j] != key)
        j = (j + 1) & (s->cap - 1);
    *found = s->keys[j] == key;
    if (!*found) {
        s->keys[j] = key;
        s->vals[j] = 0;
        s->n++;
    }
    return &s->vals[j];
}

static int wh__set_has(const wh__set_t *s, uint64_t key)
{
    if (s->cap == 0)
        return 0;
    size_t j = key & (s->cap - 1);
    while (s->keys[j] != 0) {
        if (s->keys[j] == key)
            return 1;
        j = (j + 1) & (s->cap - 1);
    }
    return 0;
}

typedef struct wh__bucket {
    int64_t in, out, events, errors, bot, handoff;
} wh__bucket_t;

typedef struct wh__contact {
    size_t instance, key; /* offsets of their strings in the arena */
    int64_t in, out;
    int64_t last_day; /* the last contact-day with an inbound message */
} wh__contact_t;

typedef struct wh__ctx {
    sqlite3 *db;
    const wh_stats_params_t *p;
    const char *tz;
    int64_t off_ms;
    double deadline;
    char *err;
    size_t errlen;
    sqlite3_stmt *st[WH__Q_COUNT]; /* prepared on first use */
    /* series */
    int64_t since_h, day0;
    size_t ndays, nhours;
    int64_t *day_start; /* ndays + 1 bounds, ms, clamped to the range */
    wh__bucket_t *days, *hours, hod[24];
    int64_t last_h;
    int64_t last_day;
    int last_hour;
    /* totals */
    int64_t msg_total, msg_in, msg_out, out_sent, out_delivered, out_read, out_failed;
    wh__tab_t types, origins, events, targets, dead_targets;
    int64_t ev_total, ev_dead, retrying, dead_events, outbox_dead;
    int64_t conversations, contacts_in, replied;
    wh__set_t contact_ix, reply_ids, reply_days;
    wh__contact_t *contacts;
    size_t ncontacts, contacts_cap;
    char *arena; /* contact strings, NUL-terminated, one allocation */
    size_t arena_len, arena_cap;
    wh__contact_t *top;
    size_t ntop;
    int64_t kinds[6];
    int64_t reply_convs, handoff_convs;
    int64_t *samples;
    size_t nsamples, samples_cap;
    uint64_t seen_samples, rng;
    int64_t csat_answers;
    double csat_sum;
} wh__ctx_t;

static const char *const wh__kinds[6] = {"bot_reply", "handoff", "lead", "csat", "custom",
                                         "timer_dead"};

/* The buckets of UTC hour h: day and hour-of-day in the zone, and the hourly series slot. */
static void wh__buckets(wh__ctx_t *c, int64_t h, wh__bucket_t **day, wh__bucket_t **hour,
                        wh__bucket_t **hod)
{
    if (h != c->last_h) {
        wh_tm_t tm;
        if (wh__local(c->tz, h * 3600, &tm) == WH_OK) {
            c->last_day = wh__days_from_civil(tm.year, tm.month, tm.day) - c->day0;
            c->last_hour = tm.hour;
        } else {
            c->last_day = wh__floordiv(h, 24) - c->day0;
            c->last_hour = (int)(h - wh__floordiv(h, 24) * 24);
        }
        c->last_h = h;
    }
    int64_t d = c->last_day;
    if (d < 0)
        d = 0;
    if (d >= (int64_t)c->ndays)
        d = (int64_t)c->ndays - 1;
    *day = &c->days[d];
    *hod = &c->hod[c->last_hour];
    int64_t hi = h - c->since_h;
    *hour = c->nhours > 0 && hi >= 0 && hi < (int64_t)c->nhours ? &c->hours[hi] : NULL;
}

/* Adds n to field of the buckets of instant ms. */
#define WH__ADD(ms, field, n)                                                                  \
    do {                                                                                       \
        wh__bucket_t *d_, *h_, *o_;                                                            \
        wh__buckets(c, wh__floordiv((ms), WH__MS_HOUR), &d_, &h_, &o_);                        \
        d_->field += (n);                                                                      \
        o_->field += (n);                                                                      \
        if (h_ != NULL)                                                                        \
            h_->field += (n);                                                                  \
    } while (0)

static int wh__progress(void *arg)
{
    const wh__ctx_t *c = arg;
    return wh_mono_now() > c->deadline;
}

/* The statement which, reset, with ?1..?4 bound from the parameters. */
static sqlite3_stmt *wh__prep(wh__ctx_t *c, int which)
{
    sqlite3_stmt *st = c->st[which];
    if (st == NULL) {
        if (sqlite3_prepare_v2(c->db, wh__sql[which], -1, &st, NULL) != SQLITE_OK) {
            wh__err(c->err, c->errlen, "stats query %d: %s", which, sqlite3_errmsg(c->db));
            return NULL;
        }
        c->st[which] = st;
    } else {
        sqlite3_reset(st);
    }
    int n = sqlite3_bind_parameter_count(st);
    if (n >= 1)
        sqlite3_bind_int64(st, 1, c->p->since_ms);
    if (n >= 2)
        sqlite3_bind_int64(st, 2, c->p->until_ms);
    if (n >= 3) {
        if (c->p->instance[0] != '\0')
            sqlite3_bind_text(st, 3, c->p->instance, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 3);
    }
    if (n >= 4)
        sqlite3_bind_int64(st, 4, c->off_ms);
    return st;
}

/* After the last row (rc is sqlite3_step's): 0, or WH_EIO / WH_ETIMEDOUT with the reason. */
static int wh__done(wh__ctx_t *c, int rc)
{
    if (rc == SQLITE_DONE)
        return WH_OK;
    if (rc == SQLITE_INTERRUPT) {
        wh__err(c->err, c->errlen, "the stats query took longer than %d ms",
                c->p->timeout_ms > 0 ? c->p->timeout_ms : WH_STATS_TIMEOUT_MS);
        return WH_ETIMEDOUT;
    }
    wh__err(c->err, c->errlen, "stats query: %s", sqlite3_errmsg(c->db));
    return WH_EIO;
}

static const char *wh__col(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

/* A one-row, one-integer query. */
static int wh__q_count(wh__ctx_t *c, int which, int64_t *out)
{
    sqlite3_stmt *st = wh__prep(c, which);
    if (st == NULL)
        return WH_EIO;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = sqlite3_step(st);
    }
    return wh__done(c, rc);
}

/* Receipt statuses from store_work.c: PENDING 1, SERVER_ACK 2, DELIVERY_ACK 3, READ 4,
 * PLAYED 5; ERROR (-1 here) and DELETED are terminal. */
static int wh__status_rank(const char *s)
{
    static const char *const order[] = {"PENDING", "SERVER_ACK", "DELIVERY_ACK", "READ", "PLAYED"};
    if (s == NULL)
        return 0;
    for (size_t i = 0; i < WH_ARRAY_SIZE(order); i++)
        if (strcmp(s, order[i]) == 0)
            return (int)i + 1;
    return strcmp(s, "ERROR") == 0 ? -1 : 0;
}

/* Keeps every latency up to WH_STATS_MAX_SAMPLES, then a uniform reservoir sample of them. */
static int wh__sample(wh__ctx_t *c, int64_t v)
{
    c->seen_samples++;
    if (c->nsamples < WH_STATS_MAX_SAMPLES) {
        if (c->nsamples == c->samples_cap) {
            size_t nc = c->samples_cap ? c->samples_cap * 2 : 1024;
            if (nc > WH_STATS_MAX_SAMPLES)
                nc = WH_STATS_MAX_SAMPLES;
            int64_t *ns = realloc(c->samples, nc * sizeof(*ns));
            if (ns == NULL)
                return WH_ENOMEM;
            c->samples = ns;
            c->samples_cap = nc;
        }
        c->samples[c->nsamples++] = v;
        return WH_OK;
    }
    /* xorshift64: deterministic, so the same data gives the same figures */
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    uint64_t j = c->rng % c->seen_samples;
    if (j < WH_STATS_MAX_SAMPLES)
        c->samples[j] = v;
    return WH_OK;
}

/* The contact-day of instant ms in the zone (the unit of conversations). */
static int64_t wh__cday(const wh__ctx_t *c, int64_t ms)
{
    return wh__floordiv(ms + c->off_ms, WH__MS_DAY);
}

static uint64_t wh__key2(const char *a, const char *b)
{
    return wh__hash_end(wh__hash(wh__hash(WH__FNV, a), b));
}

static uint64_t wh__key3(const char *a, const char *b, int64_t day)
{
    uint64_t h = wh__hash(wh__hash(WH__FNV, a), b);
    return wh__hash_end((h ^ (uint64_t)day) * UINT64_C(0x9E3779B97F4A7C15));
}

/* Bot replies: the set of answered message ids (instance + wa_id), the first reply of each
 * contact-day with its latency, and the replies of the range per bucket. Rows come in time
 * order, so the first row of a contact-day is its first reply. */
static int wh__q_replies(wh__ctx_t *c)
{
    sqlite3_stmt *st = wh__prep(c, WH__Q_REPLIES);
    if (st == NULL)
        return WH_EIO;
    int rc, found;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t at = sqlite3_column_int64(st, 0);
        const char *inst = wh__col(st, 1), *ck = wh__col(st, 2), *to = wh__col(st, 3);
        if (to != NULL && wh__set_put(&c->reply_ids, wh__key2(inst, to), &found) == NULL)
            return WH_ENOMEM;
        if (at >= c->p->until_ms)
            continue;
        c->kinds[0]++;
        WH__ADD(at, bot, 1);
        if (wh__set_put(&c->reply_days, wh__key3(inst, ck, wh__cday(c, at)), &found) == NULL)
            return WH_ENOMEM;
        if (found)
            continue;
        c->reply_convs++;
        int t = sqlite3_column_type(st, 4);
        if (t == SQLITE_INTEGER || t == SQLITE_FLOAT) {
            double v = sqlite3_column_double(st, 4);
            if (v >= 0 && v < 9e15 && wh__sample(c, (int64_t)llround(v)) != WH_OK)
                return WH_ENOMEM;
        }
    }
    return wh__done(c, rc);
}

/* Copies str into the arena; its offset in *off. */
static int wh__arena_put(wh__ctx_t *c, const char *str, size_t *off)
{
    size_t n = strlen(str) + 1;
    if (c->arena_len + n > c->arena_cap) {
        size_t nc = c->arena_cap ? c->arena_cap * 2 : 65536;
        while (nc < c->arena_len + n)
            nc *= 2;
        char *na = realloc(c->arena, nc);
        if (na == NULL)
            return WH_ENOMEM;
        c->arena = na;
        c->arena_cap = nc;
    }
    memcpy(c->arena + c->arena_len, str, n);
    *off = c->arena_len;
    c->arena_len += n;
    return WH_OK;
}

/* The per-contact counters of (instance, key), created on first sight. */
static wh__contact_t *wh__contact(wh__ctx_t *c, const char *inst, const char *key)
{
    int found;
    uint32_t *slot = wh__set_put(&c->contact_ix, wh__key2(inst, key), &found);
    if (slot == NULL)
        return NULL;
    if (found)
        return &c->contacts[*slot];
    if (c->ncontacts == c->contacts_cap) {
        size_t nc = c->contacts_cap ? c->contacts_cap * 2 : 1024;
        wh__contact_t *n = realloc(c->contacts, nc * sizeof(*n));
        if (n == NULL)
            return NULL;
        c->contacts = n;
        c->contacts_cap = nc;
    }
    wh__contact_t *ct = &c->contacts[c->ncontacts];
    *ct = (wh__contact_t){0, 0, 0, 0, INT64_MIN};
    if (wh__arena_put(c, inst != NULL ? inst : "", &ct->instance) != WH_OK ||
        wh__arena_put(c, key, &ct->key) != WH_OK)
        return NULL;
    *slot = (uint32_t)c->ncontacts++;
    return ct;
}

/* One pass over the range's messages: totals, types, origins, receipts, the series, contacts
 * and their days, and which inbound messages were answered. */
static int wh__q_messages(wh__ctx_t *c)
{
    sqlite3_stmt *st = wh__prep(c, WH__Q_MESSAGES);
    if (st == NULL)
        return WH_EIO;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t at = sqlite3_column_int64(st, 0);
        const char *inst = wh__col(st, 1), *ck = wh__col(st, 2), *dir = wh__col(st, 3);
        int in = dir != NULL && strcmp(dir, "in") == 0;
        int out = !in && dir != NULL && strcmp(dir, "out") == 0;
        c->msg_total++;
        wh__kv_t *t = wh__tab_get(&c->types, wh__col(st, 5));
        if (t == NULL)
            return WH_ENOMEM;
        t->v[0]++;
        if (in) {
            c->msg_in++;
            t->v[1]++;
            WH__ADD(at, in, 1);
            if (wh__set_has(&c->reply_ids, wh__key2(inst, wh__col(st, 7))))
                c->replied++;
        } else if (out) {
            c->msg_out++;
            t->v[2]++;
            WH__ADD(at, out, 1);
            wh__kv_t *o = wh__tab_get(&c->origins, wh__col(st, 4));
            if (o == NULL)
                return WH_ENOMEM;
            o->v[0]++;
            int rank = wh__status_rank(wh__col(st, 6));
            c->out_sent += rank >= 2;
            c->out_delivered += rank >= 3;
            c->out_read += rank >= 4;
            c->out_failed += rank < 0;
        }
        if (ck == NULL || (!in && !out))
            continue;
        wh__contact_t *ct = wh__contact(c, inst, ck);
        if (ct == NULL)
            return WH_ENOMEM;
        if (out) {
            ct->out++;
            continue;
        }
        c->contacts_in += ct->in++ == 0;
        /* rows come in time order, so a contact's days only move forward */
        int64_t day = wh__cday(c, at);
        c->conversations += day != ct->last_day;
        ct->last_day = day;
    }
    return wh__done(c, rc);
}

static int wh__event_pair(wh__ctx_t *c, const char *ev, const char *status);

/* Events: every (event, status) pair of the store by skip scan, then counts of the range per
 * pair and day inside SQLite; dead events' own times for the error series. */
static int wh__q_events(wh__ctx_t *c)
{
    char *ev = NULL, *status = NULL;
    int rc = SQLITE_DONE, out = WH_OK;
    /* bounded: each round moves past one pair of the index */
    for (int guard = 0; guard < 100000; guard++) {
        sqlite3_stmt *st = NULL;
        rc = SQLITE_DONE;
        if (ev != NULL) {
            if ((st = wh__prep(c, WH__Q_EVENT_NEXT_STATUS)) == NULL) {
                out = WH_EIO;
                break;
            }
            sqlite3_bind_text(st, 5, ev, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(st, 6, status, -1, SQLITE_TRANSIENT);
            rc = sqlite3_step(st);
        }
        if (rc == SQLITE_DONE) {
            if ((st = wh__prep(c, WH__Q_EVENT_NEXT)) == NULL) {
                out = WH_EIO;
                break;
            }
            sqlite3_bind_text(st, 5, ev != NULL ? ev : "", -1, SQLITE_TRANSIENT);
            rc = sqlite3_step(st);
        }
        if (rc != SQLITE_ROW)
            break;
        /* the progress handler never fires in these short statements: check here */
        if (wh_mono_now() > c->deadline) {
            rc = SQLITE_INTERRUPT;
            break;
        }
        free(ev);
        free(status);
        ev = strdup(wh__col(st, 0) ? wh__col(st, 0) : "");
        status = strdup(wh__col(st, 1) ? wh__col(st, 1) : "");
        sqlite3_reset(st);
        if (ev == NULL || status == NULL) {
            out = WH_ENOMEM;
            break;
        }
        if ((out = wh__event_pair(c, ev, status)) != WH_OK)
            break;
    }
    free(ev);
    free(status);
    if (rc == SQLITE_ROW) /* the guard: what was counted stands */
        rc = SQLITE_DONE;
    return out != WH_OK ? out : wh__done(c, rc);
}

/* The counts of one (event, status) pair: in the range, per day, and dead events' times. */
static int wh__event_pair(wh__ctx_t *c, const char *ev, const char *status)
{
    int dead = strcmp(status, "dead") == 0;
    if (dead) { /* dead letters now, whatever the range */
        sqlite3_stmt *ds = wh__prep(c, WH__Q_DEAD_EVENTS);
        if (ds == NULL)
            return WH_EIO;
        sqlite3_bind_text(ds, 5, ev, -1, SQLITE_STATIC);
        int rc = sqlite3_step(ds);
        if (rc != SQLITE_ROW)
            return wh__done(c, rc);
        c->dead_events += sqlite3_column_int64(ds, 0);
        sqlite3_reset(ds);
    }
    sqlite3_stmt *cs = wh__prep(c, WH__Q_EVENT_COUNT);
    if (cs == NULL)
        return WH_EIO;
    sqlite3_bind_text(cs, 5, ev, -1, SQLITE_STATIC);
    sqlite3_bind_text(cs, 6, status, -1, SQLITE_STATIC);
    /* one count per day of the range (its bounds clamp the first and last day) */
    int64_t total = 0;
    int rc;
    for (size_t d = 0; d < c->ndays; d++) {
        sqlite3_bind_int64(cs, 1, c->day_start[d]);
        sqlite3_bind_int64(cs, 2, c->day_start[d + 1]);
        if ((rc = sqlite3_step(cs)) != SQLITE_ROW)
            return wh__done(c, rc);
        int64_t n = sqlite3_column_int64(cs, 0);
        sqlite3_reset(cs);
        c->days[d].events += n;
        total += n;
    }
    if (total == 0)
        return WH_OK;
    wh__kv_t *e = wh__tab_get(&c->events, ev);
    if (e == NULL)
        return WH_ENOMEM;
    e->v[0] += total;
    c->ev_total += total;
    if (strcmp(status, "done") == 0) {
        e->v[1] += total;
    } else if (dead) {
        e->v[3] += total;
        c->ev_dead += total;
    } else {
        e->v[2] += total;
    }
    if (!dead)
        return WH_OK;
    sqlite3_stmt *ds = wh__prep(c, WH__Q_EVENT_DEAD);
    if (ds == NULL)
        return WH_EIO;
    sqlite3_bind_text(ds, 5, ev, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(ds)) == SQLITE_ROW)
        WH__ADD(sqlite3_column_int64(ds, 0), errors, 1);
    return wh__done(c, rc);
}

static int wh__q_outbox(wh__ctx_t *c)
{
    static const char *const cols[] = {"pending", "inflight", "done", "dead"};
    sqlite3_stmt *st = wh__prep(c, WH__Q_OUTBOX);
    if (st == NULL)
        return WH_EIO;
    int rc;
    wh__kv_t *t = NULL;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *target = wh__col(st, 1), *status = wh__col(st, 2);
        if (t == NULL || target == NULL || strcmp(t->key, target) != 0)
            if ((t = wh__tab_get(&c->targets, target)) == NULL)
                return WH_ENOMEM;
        t->v[0]++;
        for (size_t i = 0; status != NULL && i < WH_ARRAY_SIZE(cols); i++)
            if (strcmp(status, cols[i]) == 0)
                t->v[1 + i]++;
        if (status != NULL && strcmp(status, "dead") == 0) {
            c->outbox_dead++;
            WH__ADD(sqlite3_column_int64(st, 0), errors, 1);
        }
    }
    if ((rc = wh__done(c, rc)) != WH_OK)
        return rc;
    if ((st = wh__prep(c, WH__Q_DEAD_OUTBOX)) == NULL)
        return WH_EIO;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        wh__kv_t *d = wh__tab_get(&c->dead_targets, wh__col(st, 0));
        if (d == NULL)
            return WH_ENOMEM;
        d->v[0] += sqlite3_column_int64(st, 1);
    }
    return wh__done(c, rc);
}

/* The script facts other than bot_reply, per kind and bucket. */
static int wh__q_facts(wh__ctx_t *c)
{
    sqlite3_stmt *st = wh__prep(c, WH__Q_FACTS);
    if (st == NULL)
        return WH_EIO;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t at = sqlite3_column_int64(st, 0);
        const char *kind = wh__col(st, 1);
        for (size_t i = 1; kind != NULL && i < WH_ARRAY_SIZE(wh__kinds); i++)
            if (strcmp(kind, wh__kinds[i]) == 0)
                c->kinds[i]++;
        if (kind != NULL && strcmp(kind, "handoff") == 0)
            WH__ADD(at, handoff, 1);
        else if (kind != NULL && strcmp(kind, "timer_dead") == 0)
            WH__ADD(at, errors, 1);
    }
    return wh__done(c, rc);
}

/* Rearranges v so that v[k] is the value a sort would put there, smaller ones before it and
 * larger after (Hoare's selection; median-of-three pivots). */
static void wh__select(int64_t *v, size_t n, size_t k)
{
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int64_t a = v[lo], b = v[mid], c = v[hi];
        int64_t pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        size_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i <= j) {
                int64_t t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                if (j == 0)
                    break;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return;
    }
}

/* The nearest-rank percentile of n unsorted values (reordered). */
static int64_t wh__percentile_of(int64_t *v, size_t n, double pct)
{
    double r = ceil(pct / 100.0 * (double)n);
    size_t k = r < 1 ? 1 : (size_t)r;
    if (k > n)
        k = n;
    wh__select(v, n, k - 1);
    return v[k - 1];
}

static json_t *wh__rate(int64_t num, int64_t den)
{
    if (den <= 0)
        return json_null();
    return json_real(round((double)num / (double)den * 10000.0) / 10000.0);
}

/* [{"<name>": key, "count": n}] from a list query (text, count[, avg score]). */
static int wh__q_list(wh__ctx_t *c, int which, const char *name, json_t *arr)
{
    sqlite3_stmt *st = wh__prep(c, which);
    if (st == NULL)
        return WH_EIO;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *k = wh__col(st, 0);
        json_t *o = json_pack("{s:s,s:I}", name, k != NULL ? k : "", "count",
                              (json_int_t)sqlite3_column_int64(st, 1));
        if (o == NULL || json_array_append_new(arr, o) != 0)
            return WH_ENOMEM;
        if (which == WH__Q_LEADS)
            json_object_set_new(o, "avg_score",
                                sqlite3_column_type(st, 2) == SQLITE_NULL
                                    ? json_null()
                                    : json_real(round(sqlite3_column_double(st, 2) * 100) / 100));
    }
    return wh__done(c, rc);
}

static int wh__q_csat(wh__ctx_t *c, json_t *dist)
{
    sqlite3_stmt *st = wh__prep(c, WH__Q_CSAT);
    if (st == NULL)
        return WH_EIO;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int t = sqlite3_column_type(st, 0);
        if (t != SQLITE_INTEGER && t != SQLITE_FLOAT)
            continue;
        int64_t n = sqlite3_column_int64(st, 1);
        c->csat_answers += n;
        c->csat_sum += sqlite3_column_double(st, 0) * (double)n;
        if (json_array_size(dist) < WH__LIST_MAX) {
            json_t *score = t == SQLITE_INTEGER ? json_integer(sqlite3_column_int64(st, 0))
                                                : json_real(sqlite3_column_double(st, 0));
            json_array_append_new(dist, json_pack("{s:o,s:I}", "score", score, "count",
                                                  (json_int_t)n));
        }
    }
    return wh__done(c, rc);
}

/* 1 when contact a ranks before b: more messages, then instance and key order. */
static int wh__ranks_before(const wh__ctx_t *c, const wh__contact_t *a, const wh__contact_t *b)
{
    int64_t ta = a->in + a->out, tb = b->in + b->out;
    if (ta != tb)
        return ta > tb;
    int r = strcmp(c->arena + a->instance, c->arena + b->instance);
    return r != 0 ? r < 0 : strcmp(c->arena + a->key, c->arena + b->key) < 0;
}

/* The top-N contacts (borrowed from c->contacts), best first. */
static void wh__top(wh__ctx_t *c)
{
    size_t cap = (size_t)c->p->top;
    for (size_t i = 0; i < c->ncontacts; i++) {
        const wh__contact_t *ct = &c->contacts[i];
        if (c->ntop == cap && !wh__ranks_before(c, ct, &c->top[cap - 1]))
            continue;
        size_t pos = c->ntop < cap ? c->ntop++ : cap - 1;
        while (pos > 0 && wh__ranks_before(c, ct, &c->top[pos - 1])) {
            c->top[pos] = c->top[pos - 1];
            pos--;
        }
        c->top[pos] = *ct;
    }
}

/* ---- JSON assembly --------------------------------------------------------------------------- */

static json_t *wh__bucket_json(const wh__bucket_t *b, const char *key, json_t *keyval,
                               int with_events)
{
    json_t *o = json_pack("{s:o,s:I,s:I,s:I,s:I,s:I}", key, keyval, "in", (json_int_t)b->in,
                          "out", (json_int_t)b->out, "errors", (json_int_t)b->errors,
                          "bot_replies", (json_int_t)b->bot, "handoffs", (json_int_t)b->handoff);
    if (o != NULL && with_events)
        json_object_set_new(o, "events", json_integer(b->events));
    return o;
}

static json_t *wh__series_json(wh__ctx_t *c)
{
    json_t *days = json_array(), *hours = c->nhours > 0 ? json_array() : json_null();
    json_t *hod = json_array();
    for (size_t i = 0; i < c->ndays; i++) {
        int y, m, d;
        char date[16];
        wh__civil_from_days(c->day0 + (int64_t)i, &y, &m, &d);
        snprintf(date, sizeof(date), "%04d-%02d-%02d", y, m, d);
        json_array_append_new(days, wh__bucket_json(&c->days[i], "date", json_string(date), 1));
    }
    for (size_t i = 0; i < c->nhours; i++)
        json_array_append_new(
            hours, wh__bucket_json(&c->hours[i], "start",
                                   json_integer((c->since_h + (int64_t)i) * WH__MS_HOUR), 0));
    for (int i = 0; i < 24; i++)
        json_array_append_new(hod, wh__bucket_json(&c->hod[i], "hour", json_integer(i), 0));
    return json_pack("{s:o,s:o,s:o}", "day", days, "hour", hours, "hour_of_day", hod);
}

/* The named counters of t as [{name: key, cols[0]: v[0], …}], largest first. */
static json_t *wh__tab_json(wh__tab_t *t, const char *name, const char *const *cols, size_t ncols)
{
    if (t->n > 1)
        qsort(t->e, t->n, sizeof(*t->e), wh__kv_cmp);
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < t->n; i++) {
        json_t *o = json_pack("{s:s}", name, t->e[i].key);
        for (size_t k = 0; o != NULL && k < ncols; k++)
            json_object_set_new(o, cols[k], json_integer(t->e[i].v[k]));
        json_array_append_new(a, o);
    }
    return a;
}

/* {key: v[0]} for every name of t. */
static json_t *wh__tab_obj(const wh__tab_t *t, int64_t *total)
{
    json_t *o = json_object();
    for (size_t i = 0; o != NULL && i < t->n; i++) {
        json_object_set_new(o, t->e[i].key, json_integer(t->e[i].v[0]));
        if (total != NULL)
            *total += t->e[i].v[0];
    }
    return o;
}

static json_t *wh__top_json(wh__ctx_t *c)
{
    json_t *a = json_array();
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(c->db, wh__sql[WH__Q_CONTACT_NAME], -1, &st, NULL) != SQLITE_OK)
        st = NULL;
    for (size_t i = 0; a != NULL && i < c->ntop; i++) {
        const wh__contact_t *t = &c->top[i];
        const char *inst = c->arena + t->instance, *key = c->arena + t->key;
        json_t *name = json_null();
        if (st != NULL) {
            sqlite3_bind_text(st, 1, inst, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
            if (sqlite3_step(st) == SQLITE_ROW && wh__col(st, 0) != NULL) {
                json_decref(name);
                name = json_string(wh__col(st, 0));
            }
            sqlite3_reset(st);
        }
        json_array_append_new(a, json_pack("{s:s,s:s,s:o*,s:I,s:I,s:I}", "instance", inst,
                                           "contact", key, "name", name, "in",
                                           (json_int_t)t->in, "out", (json_int_t)t->out, "total",
                                           (json_int_t)(t->in + t->out)));
    }
    sqlite3_finalize(st);
    return a;
}

static json_t *wh__first_response_json(wh__ctx_t *c)
{
    json_t *median = NULL, *p95 = NULL, *avg = NULL;
    if (c->nsamples > 0) {
        double sum = 0;
        for (size_t i = 0; i < c->nsamples; i++)
            sum += (double)c->samples[i];
        median = json_integer(wh__percentile_of(c->samples, c->nsamples, 50));
        p95 = json_integer(wh__percentile_of(c->samples, c->nsamples, 95));
        avg = json_real(round(sum / (double)c->nsamples * 10) / 10);
    }
    return json_pack("{s:I,s:I,s:o,s:o,s:o,s:b}", "conversations", (json_int_t)c->reply_convs,
                     "measured", (json_int_t)c->seen_samples, "median_ms",
                     median ? median : json_null(), "p95_ms", p95 ? p95 : json_null(), "avg_ms",
                     avg ? avg : json_null(), "sampled", c->seen_samples > c->nsamples);
}

static json_t *wh__assemble(wh__ctx_t *c, json_t *reasons, json_t *csat_dist, json_t *stages)
{
    static const char *const type_cols[] = {"total", "in", "out"};
    static const char *const event_cols[] = {"total", "done", "pending", "dead"};
    static const char *const target_cols[] = {"total", "pending", "inflight", "done", "dead"};
    const wh_stats_params_t *p = c->p;
    int64_t dead_outbox_total = 0;
    json_t *dead_outbox = wh__tab_obj(&c->dead_targets, &dead_outbox_total);
    json_t *delivery_dead = json_object();
    for (size_t i = 0; i < c->targets.n; i++)
        if (c->targets.e[i].v[4] > 0)
            json_object_set_new(delivery_dead, c->targets.e[i].key,
                                json_integer(c->targets.e[i].v[4]));
    json_t *facts = json_object();
    for (size_t i = 0; i < WH_ARRAY_SIZE(wh__kinds); i++)
        json_object_set_new(facts, wh__kinds[i], json_integer(c->kinds[i]));
    wh__top(c);

    json_t *o = json_object();
    json_object_set_new(
        o, "range",
        json_pack("{s:I,s:I,s:o,s:s,s:I}", "since", (json_int_t)p->since_ms, "until",
                  (json_int_t)p->until_ms, "instance",
                  p->instance[0] ? json_string(p->instance) : json_null(), "tz",
                  wh__is_utc(p->tz) ? "UTC" : p->tz, "days", (json_int_t)c->ndays));
    json_object_set_new(
        o, "messages",
        json_pack("{s:I,s:I,s:I,s:o,s:o,s:I,s:I,s:I,s:o}", "total", (json_int_t)c->msg_total,
                  "in", (json_int_t)c->msg_in, "out", (json_int_t)c->msg_out, "by_type",
                  wh__tab_json(&c->types, "type", type_cols, 3), "outbound_by_origin",
                  wh__tab_obj(&c->origins, NULL), "contacts", (json_int_t)c->ncontacts,
                  "contacts_inbound", (json_int_t)c->contacts_in, "conversations",
                  (json_int_t)c->conversations, "top_contacts", wh__top_json(c)));
    json_object_set_new(o, "events",
                        json_pack("{s:I,s:o}", "total", (json_int_t)c->ev_total, "by_type",
                                  wh__tab_json(&c->events, "event", event_cols, 4)));
    json_object_set_new(
        o, "bot",
        json_pack("{s:I,s:I,s:o,s:I,s:I,s:I,s:I,s:o,s:O,s:o}", "inbound", (json_int_t)c->msg_in,
                  "replied", (json_int_t)c->replied, "response_rate",
                  wh__rate(c->replied, c->msg_in), "replies", (json_int_t)c->kinds[0],
                  "conversations", (json_int_t)c->conversations, "handoffs",
                  (json_int_t)c->kinds[1], "handoff_conversations", (json_int_t)c->handoff_convs,
                  "handoff_rate", wh__rate(c->handoff_convs, c->conversations),
                  "handoff_reasons", reasons, "first_response", wh__first_response_json(c)));
    json_object_set_new(
        o, "delivery",
        json_pack("{s:I,s:I,s:I,s:I,s:I,s:o,s:o}", "outbound", (json_int_t)c->msg_out, "sent",
                  (json_int_t)c->out_sent, "delivered", (json_int_t)c->out_delivered, "read",
                  (json_int_t)c->out_read, "failed", (json_int_t)c->out_failed, "delivery_rate",
                  wh__rate(c->out_delivered, c->msg_out), "read_rate",
                  wh__rate(c->out_read, c->msg_out)));
    json_object_set_new(
        o, "errors",
        json_pack("{s:I,s:I,s:I,s:o,s:I}", "processing_dead", (json_int_t)c->ev_dead,
                  "processing_retrying", (json_int_t)c->retrying, "timers_dead",
                  (json_int_t)c->kinds[5], "delivery_dead", delivery_dead,
                  "delivery_dead_total", (json_int_t)c->outbox_dead));
    json_object_set_new(o, "outbox",
                        json_pack("{s:o}", "by_target",
                                  wh__tab_json(&c->targets, "target", target_cols, 5)));
    json_object_set_new(o, "dead_letters",
                        json_pack("{s:I,s:o,s:I}", "events", (json_int_t)c->dead_events,
                                  "outbox", dead_outbox, "total",
                                  (json_int_t)(c->dead_events + dead_outbox_total)));
    json_object_set_new(
        o, "csat",
        json_pack("{s:I,s:o,s:O}", "answers", (json_int_t)c->csat_answers, "average",
                  c->csat_answers > 0
                      ? json_real(round(c->csat_sum / (double)c->csat_answers * 100) / 100)
                      : json_null(),
                  "distribution", csat_dist));
    json_object_set_new(o, "leads",
                        json_pack("{s:I,s:O}", "count", (json_int_t)c->kinds[2], "by_stage",
                                  stages));
    json_object_set_new(o, "facts", facts);
    json_object_set_new(o, "series", wh__series_json(c));
    return o;
}

static void wh__ctx_free(wh__ctx_t *c)
{
    for (size_t i = 0; i < WH__Q_COUNT; i++)
        sqlite3_finalize(c->st[i]);
    free(c->days);
    free(c->hours);
    free(c->day_start);
    wh__tab_free(&c->types);
    wh__tab_free(&c->origins);
    wh__tab_free(&c->events);
    wh__tab_free(&c->targets);
    wh__tab_free(&c->dead_targets);
    wh__set_free(&c->contact_ix);
    wh__set_free(&c->reply_ids);
    wh__set_free(&c->reply_days);
    free(c->contacts);
    free(c->arena);
    free(c->top); /* its entries are borrowed from contacts */
    free(c->samples);
}

/* The instant local midnight starts day number day (days since the epoch) in the zone. */
static int64_t wh__day_start(const wh__ctx_t *c, int64_t day)
{
    if (wh__is_utc(c->tz))
        return day * WH__MS_DAY;
    int y, m, d;
    int64_t t;
    wh__civil_from_days(day, &y, &m, &d);
    wh_tm_t f = {.year = y, .month = m, .day = d};
    if (wh_tz_mktime(c->tz, &f, &t) != WH_OK)
        return day * WH__MS_DAY;
    return t * 1000;
}

/* Sets up the series: local day numbers of since and of the last instant of the range. */
static int wh__series_init(wh__ctx_t *c)
{
    const wh_stats_params_t *p = c->p;
    wh_tm_t a, b;
    int64_t since_s = wh__floordiv(p->since_ms, 1000), last_s = wh__floordiv(p->until_ms - 1, 1000);
    if (wh__local(c->tz, since_s, &a) != WH_OK || wh__local(c->tz, last_s, &b) != WH_OK) {
        wh__err(c->err, c->errlen, "unknown time zone '%s'", c->tz);
        return WH_EINVAL;
    }
    c->day0 = wh__days_from_civil(a.year, a.month, a.day);
    int64_t nd = wh__days_from_civil(b.year, b.month, b.day) - c->day0 + 1;
    if (nd < 1 || nd > WH_STATS_MAX_RANGE_DAYS + 2) {
        wh__err(c->err, c->errlen, "the range is longer than %d days", WH_STATS_MAX_RANGE_DAYS);
        return WH_EINVAL;
    }
    c->ndays = (size_t)nd;
    c->off_ms = (int64_t)b.utc_offset * 1000;
    c->since_h = wh__floordiv(p->since_ms, WH__MS_HOUR);
    if (p->until_ms - p->since_ms <= WH_STATS_HOURLY_MAX_DAYS * WH__MS_DAY)
        c->nhours = (size_t)(wh__floordiv(p->until_ms - 1, WH__MS_HOUR) - c->since_h + 1);
    c->last_h = INT64_MIN;
    c->rng = UINT64_C(0x9E3779B97F4A7C15);
    c->days = calloc(c->ndays, sizeof(*c->days));
    c->day_start = calloc(c->ndays + 1, sizeof(*c->day_start));
    c->hours = c->nhours > 0 ? calloc(c->nhours, sizeof(*c->hours)) : NULL;
    c->top = calloc((size_t)p->top, sizeof(*c->top));
    if (c->days == NULL || c->day_start == NULL || (c->nhours > 0 && c->hours == NULL) ||
        c->top == NULL) {
        wh__err(c->err, c->errlen, "out of memory");
        return WH_ENOMEM;
    }
    for (size_t i = 0; i <= c->ndays; i++) {
        int64_t t = i == 0 ? p->since_ms
                    : i == c->ndays ? p->until_ms
                                    : wh__day_start(c, c->day0 + (int64_t)i);
        c->day_start[i] = t < p->since_ms ? p->since_ms : t > p->until_ms ? p->until_ms : t;
    }
    return WH_OK;
}

json_t *wh_stats_query_db(sqlite3 *db, const wh_stats_params_t *p, char *err, size_t errlen)
{
    wh_stats_params_t pp = *p;
    if (pp.top < 1 || pp.top > WH_STATS_TOP_MAX)
        pp.top = WH_STATS_TOP_DEFAULT;
    if (pp.since_ms >= pp.until_ms) {
        wh__err(err, errlen, "since must be before until (resolve the parameters first)");
        return NULL;
    }
    wh__ctx_t c = {.db = db, .p = &pp, .tz = pp.tz, .err = err, .errlen = errlen};
    double t0 = wh_mono_now();
    c.deadline = t0 + (pp.timeout_ms > 0 ? pp.timeout_ms : WH_STATS_TIMEOUT_MS) / 1000.0;
    json_t *reasons = json_array(), *dist = json_array(), *stages = json_array(), *out = NULL;
    int in_txn = 0, rc = wh__series_init(&c);
    int64_t schema = 0;
    if (rc != WH_OK)
        goto done;
    if (reasons == NULL || dist == NULL || stages == NULL) {
        rc = WH_ENOMEM;
        goto done;
    }
    sqlite3_progress_handler(db, 1000, wh__progress, &c);
    /* One read transaction: every figure comes from the same snapshot. */
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        wh__err(err, errlen, "stats: %s", sqlite3_errmsg(db));
        rc = WH_EIO;
        goto done;
    }
    in_txn = 1;
    if ((rc = wh__q_count(&c, WH__Q_HAS_SCHEMA, &schema)) != WH_OK)
        goto done;
    if (schema < 5) {
        wh__err(err, errlen, "the store has no stats indexes yet (schema migration 4): start "
                             "the server once on it");
        rc = WH_EINVAL;
        goto done;
    }
    if ((rc = wh__q_replies(&c)) != WH_OK || (rc = wh__q_messages(&c)) != WH_OK ||
        (rc = wh__q_events(&c)) != WH_OK ||
        (rc = wh__q_count(&c, WH__Q_RETRYING, &c.retrying)) != WH_OK ||
        (rc = wh__q_outbox(&c)) != WH_OK || (rc = wh__q_facts(&c)) != WH_OK ||
        (rc = wh__q_count(&c, WH__Q_HANDOFF_CONV, &c.handoff_convs)) != WH_OK ||
        (rc = wh__q_list(&c, WH__Q_HANDOFF_REASONS, "reason", reasons)) != WH_OK ||
        (rc = wh__q_csat(&c, dist)) != WH_OK ||
        (rc = wh__q_list(&c, WH__Q_LEADS, "stage", stages)) != WH_OK)
        goto done;
    out = wh__assemble(&c, reasons, dist, stages);
    if (out == NULL) {
        rc = WH_ENOMEM;
        goto done;
    }
    json_object_set_new(out, "generated_at", json_integer(wh_now_ms()));
    json_object_set_new(out, "took_ms",
                        json_integer((json_int_t)llround((wh_mono_now() - t0) * 1000)));
done:
    if (rc == WH_ENOMEM)
        wh__err(err, errlen, "out of memory");
    for (size_t i = 0; i < WH__Q_COUNT; i++) {
        sqlite3_finalize(c.st[i]);
        c.st[i] = NULL;
    }
    if (in_txn)
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_progress_handler(db, 0, NULL, NULL);
    json_decref(reasons);
    json_decref(dist);
    json_decref(stages);
    wh__ctx_free(&c);
    return out;
}

int wh_stats_open(const char *db_path, sqlite3 **out, char *err, size_t errlen)
{
    *out = NULL;
    struct stat sb;
    if (db_path == NULL || stat(db_path, &sb) != 0) {
        wh__err(err, errlen, "no store at %s", db_path != NULL ? db_path : "(null)");
        return WH_ENOTFOUND;
    }
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        wh__err(err, errlen, "cannot open %s: %s", db_path,
                db != NULL ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return WH_EIO;
    }
    sqlite3_busy_timeout(db, 5000);
    /* No mmap: a fresh mapping per query page-faults on every page it touches, which costs
     * more than read() on virtual machines (measured). 16 MiB of page cache for the query. */
    sqlite3_exec(db, "PRAGMA mmap_size = 0; PRAGMA cache_size = -16384", NULL, NULL, NULL);
    *out = db;
    return WH_OK;
}

json_t *wh_stats_query(const char *db_path, const wh_stats_params_t *p, char *err,
                       size_t errlen)
{
    sqlite3 *db = NULL;
    if (wh_stats_open(db_path, &db, err, errlen) != WH_OK)
        return NULL;
    json_t *o = wh_stats_query_db(db, p, err, errlen);
    sqlite3_close(db);
    return o;
}

/* ---- the admin module: GET /api/stats ----------------------------------------------------- */

static int (*wh__auth_fn)(void *ud, h2o_req_t *req);
static void *wh__auth_ud;
static atomic_int wh__running;

void wh_stats_set_auth(int (*auth)(void *ud, struct st_h2o_req_t *req), void *ud)
{
    wh__auth_fn = auth;
    wh__auth_ud = ud;
}

typedef struct wh__stats_job {
    wh_stats_params_t params;
    char *db_path;
} wh__stats_job_t;

static char *wh__error_body(const char *msg)
{
    json_t *o = json_pack("{s:s}", "error", msg);
    char *s = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

/* Runs on a worker thread (wh_admin_defer): the query, then the reply. */
static void wh__stats_run(void *arg, wh_admin_reply_t *reply)
{
    wh__stats_job_t *job = arg;
    char err[256] = "";
    json_t *o = wh_stats_query(job->db_path, &job->params, err, sizeof(err));
    reply->content_type = "application/json";
    if (o != NULL) {
        reply->status = 200;
        reply->body = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10));
        json_decref(o);
    } else {
        reply->status = 503;
        reply->body = wh__error_body(err[0] ? err : "stats unavailable");
    }
    if (reply->body == NULL) {
        reply->status = 503;
        reply->body = wh__error_body("out of memory");
    }
    reply->body_len = 0;
    free(job->db_path);
    free(job);
    atomic_fetch_sub(&wh__running, 1);
}

static int wh__stats_serve(void *self, const wh_admin_env_t *env, h2o_req_t *req, h2o_iovec_t path)
{
    if (!h2o_memis(path.base, path.len, H2O_STRLIT("/api/stats")))
        return 0;
    int ok = wh__auth_fn != NULL && wh__auth_fn(wh__auth_ud, req);
    if (!ok && !wh_admin_token_ok(env, req)) {
        wh_admin_respond_error(req, 401,
                               env->conf == NULL || env->conf->admin.token == NULL ||
                                       env->conf->admin.token[0] == '\0'
                                   ? "the admin API is disabled: set WAHOOK_ADMIN_TOKEN"
                                   : "invalid admin token");
        return 1;
    }
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET"));
        wh_admin_respond_error(req, 405, "method not allowed");
        return 1;
    }
    const char *q = NULL;
    size_t qlen = 0;
    if (req->query_at != SIZE_MAX) {
        q = req->path.base + req->query_at + 1;
        qlen = req->path.len - req->query_at - 1;
    }
    char err[256] = "";
    wh__stats_job_t *job = calloc(1, sizeof(*job));
    if (job == NULL) {
        wh_admin_respond_error(req, 503, "out of memory");
        return 1;
    }
    if (wh_stats_params_from_query(&job->params, q, qlen, wh_now_ms(), err, sizeof(err)) !=
        WH_OK) {
        free(job);
        wh_admin_respond_error(req, 400, err);
        return 1;
    }
    if (atomic_fetch_add(&wh__running, 1) >= WH__MAX_CONCURRENT) {
        atomic_fetch_sub(&wh__running, 1);
        free(job);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                       H2O_STRLIT("1"));
        wh_admin_respond_error(req, 503, "stats busy: other queries are running");
        return 1;
    }
    job->db_path = env->db_path != NULL ? strdup(env->db_path) : NULL;
    if (job->db_path == NULL || wh_admin_defer(req, wh__stats_run, job) != WH_OK) {
        atomic_fetch_sub(&wh__running, 1);
        free(job->db_path);
        free(job);
        wh_admin_respond_error(req, 503, "cannot run the stats query now");
    }
    return 1;
}

void wh_stats_module_init(struct wh_admin_module *m)
{
    m->prefix = "/api/stats";
    m->serve = wh__stats_serve;
    m->self = NULL;
}
