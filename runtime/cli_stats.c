/* `wahook stats`: the analytics of /api/stats from a read-only connection to the store, printed
 * as a table for a terminal or as the same JSON with --json. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "wahook/common.h"
#include "wahook/config.h"
#include "wahook/stats.h"
#include "wahook/tz.h"

const char wh_cli_stats_usage[] =
    "      --since T       start of the range (default: 30 days before --until): epoch ms,\n"
    "                      ISO 8601 (2025-03-10, 2025-03-10T09:00:00Z), now, or 7d / 24h / 2w ago\n"
    "      --until T       end of the range, exclusive (default: now)\n"
    "      --instance X    only this Evolution instance (default: all)\n"
    "      --tz ZONE       days and hours in this zone, e.g. Europe/Madrid (default: UTC);\n"
    "                      also how dates without an offset are read\n"
    "      --top N         top contacts listed (default 10, at most 100)\n"
    "      --json          the /api/stats JSON instead of a table\n";

static json_int_t wh__i(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (b != NULL)
        v = json_object_get(v, b);
    return json_integer_value(v);
}

static const char *wh__s(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s != NULL ? s : "";
}

/* "85.2%" or "-" when the rate is undefined (null). */
static const char *wh__pct(json_t *v, char *buf, size_t len)
{
    if (!json_is_number(v))
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%.1f%%", json_number_value(v) * 100.0);
    return buf;
}

/* A duration in ms as "850 ms", "4.2 s" or "3.5 min"; "-" for null. */
static const char *wh__dur(json_t *v, char *buf, size_t len)
{
    if (!json_is_number(v)) {
        snprintf(buf, len, "-");
        return buf;
    }
    double ms = json_number_value(v);
    if (ms < 1000)
        snprintf(buf, len, "%.0f ms", ms);
    else if (ms < 120000)
        snprintf(buf, len, "%.1f s", ms / 1000);
    else
        snprintf(buf, len, "%.1f min", ms / 60000);
    return buf;
}

static const char *wh__when(int64_t ms, const char *tz, char *buf, size_t len)
{
    wh_tm_t tm;
    if (tz != NULL && strcmp(tz, "UTC") != 0 && wh_tz_localtime(tz, ms / 1000, &tm) == WH_OK) {
        snprintf(buf, len, "%04d-%02d-%02d %02d:%02d", tm.year, tm.month, tm.day, tm.hour,
                 tm.min);
        return buf;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm g;
    if (gmtime_r(&t, &g) == NULL)
        snprintf(buf, len, "%lld", (long long)ms);
    else
        strftime(buf, len, "%Y-%m-%d %H:%M", &g);
    return buf;
}

/* "k1 n1 · k2 n2 · …" from an array of objects, at most max items. */
static void wh__inline_list(FILE *f, json_t *arr, const char *key, const char *count, size_t max)
{
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e) {
        if (i >= max) {
            fprintf(f, " · …");
            break;
        }
        fprintf(f, "%s%s %lld", i ? " · " : "", wh__s(e, key),
                (long long)json_integer_value(json_object_get(e, count)));
    }
    if (json_array_size(arr) == 0)
        fprintf(f, "-");
}

static void wh__inline_obj(FILE *f, json_t *obj)
{
    const char *k;
    json_t *v;
    int first = 1;
    json_object_foreach(obj, k, v) {
        fprintf(f, "%s%s %lld", first ? "" : " · ", k, (long long)json_integer_value(v));
        first = 0;
    }
    if (first)
        fprintf(f, "-");
}

static void wh__print(FILE *f, json_t *o)
{
    char a[64], b[64], c[64];
    json_t *range = json_object_get(o, "range"), *msg = json_object_get(o, "messages");
    json_t *bot = json_object_get(o, "bot"), *del = json_object_get(o, "delivery");
    json_t *fr = json_object_get(bot, "first_response"), *err = json_object_get(o, "errors");
    json_t *dl = json_object_get(o, "dead_letters"), *csat = json_object_get(o, "csat");
    const char *tz = wh__s(range, "tz");
    const char *inst = json_string_value(json_object_get(range, "instance"));
    fprintf(f, "wahook stats  %s → %s %s  %s%s\n\n",
            wh__when(wh__i(range, "since", NULL), tz, a, sizeof(a)),
            wh__when(wh__i(range, "until", NULL), tz, b, sizeof(b)), tz,
            inst != NULL ? "instance " : "all instances", inst != NULL ? inst : "");

    fprintf(f, "MESSAGES      total %lld · in %lld · out %lld · contacts %lld (%lld wrote) · "
               "conversations %lld\n",
            (long long)wh__i(msg, "total", NULL), (long long)wh__i(msg, "in", NULL),
            (long long)wh__i(msg, "out", NULL), (long long)wh__i(msg, "contacts", NULL),
            (long long)wh__i(msg, "contacts_inbound", NULL),
            (long long)wh__i(msg, "conversations", NULL));
    fprintf(f, "  by type     ");
    wh__inline_list(f, json_object_get(msg, "by_type"), "type", "total", 6);
    fprintf(f, "\n  outbound by ");
    wh__inline_obj(f, json_object_get(msg, "outbound_by_origin"));
    fprintf(f, "\n");

    fprintf(f, "BOT           response rate %s (%lld of %lld inbound messages) · replies %lld\n",
            wh__pct(json_object_get(bot, "response_rate"), a, sizeof(a)),
            (long long)wh__i(bot, "replied", NULL), (long long)wh__i(bot, "inbound", NULL),
            (long long)wh__i(bot, "replies", NULL));
    fprintf(f, "              first response median %s · p95 %s · avg %s (%lld conversations%s)\n",
            wh__dur(json_object_get(fr, "median_ms"), a, sizeof(a)),
            wh__dur(json_object_get(fr, "p95_ms"), b, sizeof(b)),
            wh__dur(json_object_get(fr, "avg_ms"), c, sizeof(c)),
            (long long)wh__i(fr, "measured", NULL),
            json_is_true(json_object_get(fr, "sampled")) ? ", sampled" : "");
    fprintf(f, "              handoff rate %s (%lld of %lld conversations) · reasons ",
            wh__pct(json_object_get(bot, "handoff_rate"), a, sizeof(a)),
            (long long)wh__i(bot, "handoff_conversations", NULL),
            (long long)wh__i(bot, "conversations", NULL));
    wh__inline_list(f, json_object_get(bot, "handoff_reasons"), "reason", "count", 5);
    fprintf(f, "\n");

    fprintf(f, "DELIVERY      outbound %lld · sent %lld · delivered %lld (%s) · read %lld (%s) · "
               "failed %lld\n",
            (long long)wh__i(del, "outbound", NULL), (long long)wh__i(del, "sent", NULL),
            (long long)wh__i(del, "delivered", NULL),
            wh__pct(json_object_get(del, "delivery_rate"), a, sizeof(a)),
            (long long)wh__i(del, "read", NULL),
            wh__pct(json_object_get(del, "read_rate"), b, sizeof(b)),
            (long long)wh__i(del, "failed", NULL));

    fprintf(f, "CSAT          %lld answers · average ", (long long)wh__i(csat, "answers", NULL));
    json_t *avg = json_object_get(csat, "average");
    if (json_is_number(avg))
        fprintf(f, "%.2f", json_number_value(avg));
    else
        fprintf(f, "-");
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(csat, "distribution"), i, e) {
        json_t *s = json_object_get(e, "score");
        fprintf(f, "%s%g: %lld", i ? ", " : " · ", json_number_value(s),
                (long long)json_integer_value(json_object_get(e, "count")));
    }
    fprintf(f, "\nLEADS         %lld · ", (long long)wh__i(o, "leads", "count"));
    wh__inline_list(f, json_object_get(json_object_get(o, "leads"), "by_stage"), "stage", "count",
                    6);
    fprintf(f, "\nERRORS        processing dead %lld · retrying %lld · timers dead %lld · "
               "delivery dead ",
            (long long)wh__i(err, "processing_dead", NULL),
            (long long)wh__i(err, "processing_retrying", NULL),
            (long long)wh__i(err, "timers_dead", NULL));
    wh__inline_obj(f, json_object_get(err, "delivery_dead"));
    fprintf(f, "\nDEAD LETTERS  %lld now · events %lld · outbox ",
            (long long)wh__i(dl, "total", NULL), (long long)wh__i(dl, "events", NULL));
    wh__inline_obj(f, json_object_get(dl, "outbox"));
    fprintf(f, "\n");

    fprintf(f, "\nEVENTS        %-28s %9s %9s %9s %9s\n", "TYPE", "TOTAL", "DONE", "PENDING",
            "DEAD");
    json_array_foreach(json_object_get(json_object_get(o, "events"), "by_type"), i, e)
        fprintf(f, "              %-28s %9lld %9lld %9lld %9lld\n", wh__s(e, "event"),
                (long long)wh__i(e, "total", NULL), (long long)wh__i(e, "done", NULL),
                (long long)wh__i(e, "pending", NULL), (long long)wh__i(e, "dead", NULL));

    fprintf(f, "\nOUTBOX        %-12s %9s %9s %9s %9s %9s\n", "TARGET", "TOTAL", "PENDING",
            "INFLIGHT", "DONE", "DEAD");
    json_array_foreach(json_object_get(json_object_get(o, "outbox"), "by_target"), i, e)
        fprintf(f, "              %-12s %9lld %9lld %9lld %9lld %9lld\n", wh__s(e, "target"),
                (long long)wh__i(e, "total", NULL), (long long)wh__i(e, "pending", NULL),
                (long long)wh__i(e, "inflight", NULL), (long long)wh__i(e, "done", NULL),
                (long long)wh__i(e, "dead", NULL));

    fprintf(f, "\nTOP CONTACTS  %-12s %-22s %-18s %7s %7s %7s\n", "INSTANCE", "CONTACT", "NAME",
            "IN", "OUT", "TOTAL");
    json_array_foreach(json_object_get(msg, "top_contacts"), i, e)
        fprintf(f, "              %-12.12s %-22.22s %-18.18s %7lld %7lld %7lld\n",
                wh__s(e, "instance"), wh__s(e, "contact"), wh__s(e, "name"),
                (long long)wh__i(e, "in", NULL), (long long)wh__i(e, "out", NULL),
                (long long)wh__i(e, "total", NULL));

    fprintf(f, "\nBY DAY        %-10s %8s %8s %8s %7s %8s %8s\n", "DATE", "IN", "OUT", "EVENTS",
            "ERRORS", "BOT", "HANDOFF");
    json_array_foreach(json_object_get(json_object_get(o, "series"), "day"), i, e)
        fprintf(f, "              %-10s %8lld %8lld %8lld %7lld %8lld %8lld\n", wh__s(e, "date"),
                (long long)wh__i(e, "in", NULL), (long long)wh__i(e, "out", NULL),
                (long long)wh__i(e, "events", NULL), (long long)wh__i(e, "errors", NULL),
                (long long)wh__i(e, "bot_replies", NULL), (long long)wh__i(e, "handoffs", NULL));
    fprintf(f, "\n(%lld ms)\n", (long long)wh__i(o, "took_ms", NULL));
}

int wh_cli_stats(const struct wh_config *conf, int argc, char **argv)
{
    static const struct {
        const char *opt, *name;
    } map[] = {{"--since", "since"}, {"--until", "until"}, {"--instance", "instance"},
               {"--tz", "tz"},       {"--top", "top"}};
    wh_stats_params_t p;
    wh_stats_params_init(&p);
    int json = 0;
    char err[512] = "";
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (i == 0 && strcmp(a, "stats") == 0)
            continue;
        if (strcmp(a, "--json") == 0) {
            json = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            printf("usage: wahook stats [-c FILE] [--env-file FILE] [--since T] [--until T] "
                   "[--instance X] [--tz ZONE] [--top N] [--json]\n\noptions:\n%s",
                   wh_cli_stats_usage);
            return 0;
        }
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0 || strcmp(a, "--env-file") == 0) {
            i++; /* handled by main */
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t alen = eq != NULL ? (size_t)(eq - a) : strlen(a);
        const char *name = NULL;
        for (size_t k = 0; k < WH_ARRAY_SIZE(map); k++)
            if (strlen(map[k].opt) == alen && strncmp(a, map[k].opt, alen) == 0)
                name = map[k].name;
        if (name == NULL) {
            fprintf(stderr, "wahook stats: unknown argument '%s' (see wahook stats --help)\n", a);
            return 2;
        }
        const char *value = eq != NULL ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (value == NULL) {
            fprintf(stderr, "wahook stats: %s needs a value\n", a);
            return 2;
        }
        if (wh_stats_param_set(&p, name, value, err, sizeof(err)) != WH_OK) {
            fprintf(stderr, "wahook stats: %s\n", err);
            return 2;
        }
    }
    if (wh_stats_params_resolve(&p, wh_now_ms(), err, sizeof(err)) != WH_OK) {
        fprintf(stderr, "wahook stats: %s\n", err);
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/wahook.db",
             conf != NULL && conf->data_dir != NULL ? conf->data_dir : "data");
    json_t *o = wh_stats_query(path, &p, err, sizeof(err));
    if (o == NULL) {
        fprintf(stderr, "wahook stats: %s\n", err);
        return 1;
    }
    if (json) {
        char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10));
        if (s != NULL)
            printf("%s\n", s);
        free(s);
    } else {
        wh__print(stdout, o);
    }
    json_decref(o);
    return fflush(stdout) == 0 ? 0 : 1;
}
