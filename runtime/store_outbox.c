/* The outbox's delivery side on the store: the deliverers' read-only queries (due rows in strict
 * FIFO, echoes, connection states, counts), their writes as writer tasks (completions, retries,
 * dead letters, sent messages, contacts not on WhatsApp), gated alerts, and operator actions. */
#include <jansson.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "wahook/common.h"
#include "wahook/log.h"
#include "wahook/outbox.h"
#include "wahook/store.h"
#include "store_internal.h"

#define WH__ROW_COLS                                                                           \
    "id, event_id, instance, contact_key, target, kind, payload, status, attempts,"             \
    " next_attempt_at, progress, last_error, response, created_at, updated_at"

/* ---- rows ------------------------------------------------------------------------------------ */

void wh_outbox_row_clear(wh_outbox_row_t *r)
{
    if (r == NULL)
        return;
    free(r->instance);
    free(r->contact_key);
    free(r->target);
    free(r->kind);
    free(r->payload);
    free(r->status);
    free(r->progress);
    free(r->last_error);
    free(r->response);
    memset(r, 0, sizeof(*r));
}

static char *wh__col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t != NULL ? strdup((const char *)t) : NULL;
}

/* Copies the WH__ROW_COLS columns of st. Returns 0 or WH_ENOMEM (the row is then cleared). */
static int wh__row_read(sqlite3_stmt *st, wh_outbox_row_t *r)
{
    memset(r, 0, sizeof(*r));
    r->id = sqlite3_column_int64(st, 0);
    r->event_id = sqlite3_column_int64(st, 1);
    r->attempts = sqlite3_column_int(st, 8);
    r->next_attempt_at = sqlite3_column_int64(st, 9);
    r->created_at = sqlite3_column_int64(st, 13);
    r->updated_at = sqlite3_column_int64(st, 14);
    r->instance = wh__col_dup(st, 2);
    r->contact_key = wh__col_dup(st, 3);
    r->target = wh__col_dup(st, 4);
    r->kind = wh__col_dup(st, 5);
    r->payload = wh__col_dup(st, 6);
    r->status = wh__col_dup(st, 7);
    r->progress = wh__col_dup(st, 10);
    r->last_error = wh__col_dup(st, 11);
    r->response = wh__col_dup(st, 12);
    if (r->instance == NULL || r->contact_key == NULL || r->target == NULL || r->kind == NULL ||
        r->payload == NULL || r->status == NULL ||
        (r->progress == NULL && sqlite3_column_type(st, 10) != SQLITE_NULL) ||
        (r->last_error == NULL && sqlite3_column_type(st, 11) != SQLITE_NULL) ||
        (r->response == NULL && sqlite3_column_type(st, 12) != SQLITE_NULL)) {
        wh_outbox_row_clear(r);
        return WH_ENOMEM;
    }
    return WH_OK;
}

/* text as a JSON string; bytes that are not UTF-8 (a cut answer, a script's message) become
 * '?' rather than losing the whole value. NULL stays null. */
static json_t *wh__safe_string(const char *text)
{
    if (text == NULL)
        return json_null();
    json_t *j = json_string(text);
    if (j != NULL)
        return j;
    char *copy = strdup(text);
    if (copy == NULL)
        return NULL;
    for (unsigned char *p = (unsigned char *)copy; *p; p++)
        if (*p >= 0x80)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

/* Decoded JSON for text that holds it, else the text as a string; NULL stays null. */
static json_t *wh__json_or_string(const char *text)
{
    if (text == NULL)
        return json_null();
    json_t *j = json_loads(text, JSON_DECODE_ANY, NULL);
    return j != NULL ? j : wh__safe_string(text);
}

json_t *wh_outbox_row_json(const wh_outbox_row_t *r)
{
    return json_pack("{s:I,s:o,s:s,s:s,s:s,s:s,s:o,s:s,s:i,s:I,s:o,s:o,s:o,s:I,s:I}", "id",
                     (json_int_t)r->id, "event_id",
                     r->event_id > 0 ? json_integer(r->event_id) : json_null(), "instance",
                     r->instance, "contact_key", r->contact_key, "target", r->target, "kind",
                     r->kind, "payload", wh__json_or_string(r->payload), "status", r->status,
                     "attempts", r->attempts, "next_attempt_at", (json_int_t)r->next_attempt_at,
                     "progress", wh__json_or_string(r->progress), "last_error",
                     wh__safe_string(r->last_error),
                     "response", wh__json_or_string(r->response), "created_at",
                     (json_int_t)r->created_at, "updated_at", (json_int_t)r->updated_at);
}

int wh_outbox_target_ordered(const char *target)
{
    return target != NULL && (strcmp(target, "evolution") == 0 || strcmp(target, "crm") == 0);
}

void wh_store_set_outbox_hook(wh_store_t *s, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&s->mu);
    s->outbox_hook_fn = fn;
    s->outbox_hook_arg = arg;
    pthread_mutex_unlock(&s->mu);
}

static int wh__task_noop(wh_store_t *s, wh__task_t *t, int64_t now, int *status, int *outbox)
{
    (void)s, (void)t, (void)now, (void)outbox;
    *status = WH_OK;
    return SQLITE_OK;
}

int wh_outbox_barrier(wh_store_t *s)
{
    if (s == NULL)
        return WH_EINVAL;
    wh__task_t t = {.op = WH__TASK_FN, .fn = wh__task_noop};
    return wh__store_sync(s, &t);
}

/* ---- the read side ------------------------------------------------------------------------- */

enum {
    WH__OR_NEXT_FIFO,
    WH__OR_NEXT_ANY,
    WH__OR_FOLLOW,
    WH__OR_DUE,
    WH__OR_ECHO,
    WH__OR_CONN,
    WH__OR_COUNTS,
    WH__OR_COUNT
};

static const char *const wh__or_sql[WH__OR_COUNT] = {
    /* The FIFO check uses outbox_pending (migration 3); rows in flight here stay 'pending' in
     * the database, so they hold back their followers too. */
    [WH__OR_NEXT_FIFO] =
        "SELECT " WH__ROW_COLS " FROM outbox AS o WHERE o.status = 'pending' AND o.target = ?1"
        " AND o.next_attempt_at <= ?2 AND wh_ob_part(o.instance, o.contact_key, ?3) = ?4"
        " AND o.id NOT IN (SELECT value FROM json_each(?5))"
        " AND o.instance NOT IN (SELECT value FROM json_each(?6))"
        " AND NOT EXISTS (SELECT 1 FROM outbox AS p WHERE p.target = o.target"
        "  AND p.instance = o.instance AND p.contact_key = o.contact_key"
        "  AND p.status IN ('pending', 'inflight') AND p.id < o.id)"
        " ORDER BY o.id LIMIT ?7",
    [WH__OR_NEXT_ANY] =
        "SELECT " WH__ROW_COLS " FROM outbox AS o WHERE o.status = 'pending' AND o.target = ?1"
        " AND o.next_attempt_at <= ?2 AND wh_ob_part(o.instance, o.contact_key, ?3) = ?4"
        " AND o.id NOT IN (SELECT value FROM json_each(?5))"
        " AND o.instance NOT IN (SELECT value FROM json_each(?6))"
        " ORDER BY o.id LIMIT ?7",
    [WH__OR_FOLLOW] = "SELECT " WH__ROW_COLS " FROM outbox WHERE target = ?1 AND instance = ?2"
                      " AND contact_key = ?3 AND status = 'pending' AND id > ?4"
                      " ORDER BY id LIMIT ?5",
    [WH__OR_DUE] = "SELECT min(next_attempt_at) FROM outbox WHERE status = 'pending'"
                   " AND next_attempt_at > ?1 AND target = ?2"
                   " AND wh_ob_part(instance, contact_key, ?3) = ?4",
    [WH__OR_ECHO] = "SELECT wa_id FROM messages WHERE instance = ?1"
                    " AND contact_key IN (?2, ?3) AND direction = 'out' AND text = ?4"
                    " AND created_at >= ?5 AND coalesce(origin, '') <> 'wahook'"
                    " ORDER BY created_at LIMIT 1",
    [WH__OR_CONN] = "SELECT state FROM connection_history WHERE instance = ?1"
                    " ORDER BY id DESC LIMIT 1",
    [WH__OR_COUNTS] = "SELECT target, status, count(*) FROM outbox"
                      " WHERE status IN ('pending', 'dead') GROUP BY target, status",
};

struct wh_outbox_reader {
    sqlite3 *db;
    sqlite3_stmt *st[WH__OR_COUNT];
};

/* wh_ob_part(instance, contact_key, n): the deliverer partition; '' means instance-level. */
static void wh__sql_part(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    const char *instance = (const char *)sqlite3_value_text(argv[0]);
    const char *key = (const char *)sqlite3_value_text(argv[1]);
    if (key != NULL && key[0] == '\0')
        key = NULL;
    sqlite3_int64 n = sqlite3_value_int64(argv[2]);
    unsigned nparts = n > 0 && n <= (sqlite3_int64)0xffffffffu ? (unsigned)n : 1;
    sqlite3_result_int64(ctx, (sqlite3_int64)wh_store_partition(instance != NULL ? instance : "",
                                                                key, nparts));
}

void wh_outbox_reader_close(wh_outbox_reader_t *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < WH__OR_COUNT; i++)
        sqlite3_finalize(r->st[i]);
    sqlite3_close(r->db);
    free(r);
}

int wh_outbox_reader_open(wh_outbox_reader_t **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    wh_outbox_reader_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        wh__store_set_err(err, errlen, "out of memory");
        return WH_ENOMEM;
    }
    int ret = wh__store_open_ro(path, &r->db, err, errlen);
    if (ret != WH_OK) {
        free(r);
        return ret;
    }
    sqlite3_extended_result_codes(r->db, 1);
    if (sqlite3_create_function_v2(r->db, "wh_ob_part", 3,
                                   SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, NULL,
                                   wh__sql_part, NULL, NULL, NULL) != SQLITE_OK) {
        wh__store_set_err(err, errlen, "cannot register wh_ob_part: %s", sqlite3_errmsg(r->db));
        wh_outbox_reader_close(r);
        return WH_EIO;
    }
    for (size_t i = 0; i < WH__OR_COUNT; i++) {
        if (sqlite3_prepare_v3(r->db, wh__or_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &r->st[i],
                               NULL) != SQLITE_OK) {
            wh__store_set_err(err, errlen, "cannot prepare outbox statement: %s",
                              sqlite3_errmsg(r->db));
            wh_outbox_reader_close(r);
            return WH_EIO;
        }
    }
    *out = r;
    return WH_OK;
}

/* A JSON array text of ids, or of strings. Returns a malloc'd string or NULL on ENOMEM. */
static char *wh__ids_json(const int64_t *ids, size_t n)
{
    size_t cap = 3 + n * 21, len = 0;
    char *buf = malloc(cap);
    if (buf == NULL)
        return NULL;
    buf[len++] = '[';
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i > 0 ? "," : "",
                                (long long)ids[i]);
    buf[len++] = ']';
    buf[len] = '\0';
    return buf;
}

static char *wh__strs_json(const char *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < n; i++)
        if (v[i] != NULL && json_array_append_new(a, json_string(v[i])) != 0) {
            json_decref(a);
            a = NULL;
        }
    char *text = a != NULL ? json_dumps(a, JSON_COMPACT) : NULL;
    json_decref(a);
    return text;
}

int wh_outbox_next(wh_outbox_reader_t *r, const wh_outbox_query_t *q, wh_outbox_row_t *out,
                   size_t max, size_t *n)
{
    *n = 0;
    if (max == 0)
        return WH_OK;
    char *skip = wh__ids_json(q->skip, q->nskip);
    char *paused = wh__strs_json(q->paused, q->npaused);
    if (skip == NULL || paused == NULL) {
        free(skip);
        free(paused);
        return WH_ENOMEM;
    }
    sqlite3_stmt *st = r->st[wh_outbox_target_ordered(q->target) ? WH__OR_NEXT_FIFO
                                                                  : WH__OR_NEXT_ANY];
    sqlite3_bind_text(st, 1, q->target, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, q->now);
    sqlite3_bind_int64(st, 3, q->nparts > 0 ? q->nparts : 1);
    sqlite3_bind_int64(st, 4, q->nparts > 0 ? q->part : 0);
    sqlite3_bind_text(st, 5, skip, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, paused, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)max);
    int rc, ret = WH_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((ret = wh__row_read(st, &out[*n])) != WH_OK)
            break;
        if (++*n == max)
            break;
    }
    if (ret == WH_OK && rc != SQLITE_ROW && rc != SQLITE_DONE) {
        wh_log(WH_LOG_ERROR, "outbox read failed", "{s:s}", "error", sqlite3_errmsg(r->db));
        ret = WH_EIO;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    free(skip);
    free(paused);
    if (ret != WH_OK) {
        for (size_t i = 0; i < *n; i++)
            wh_outbox_row_clear(&out[i]);
        *n = 0;
    }
    return ret;
}

int wh_outbox_followers(wh_outbox_reader_t *r, const wh_outbox_row_t *head, wh_outbox_row_t *out,
                        size_t max, size_t *n)
{
    *n = 0;
    if (max == 0)
        return WH_OK;
    sqlite3_stmt *st = r->st[WH__OR_FOLLOW];
    sqlite3_bind_text(st, 1, head->target, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, head->instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, head->contact_key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, head->id);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)max);
    int rc, ret = WH_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((ret = wh__row_read(st, &out[*n])) != WH_OK)
            break;
        if (++*n == max)
            break;
    }
    if (ret == WH_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
        ret = WH_EIO;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (ret != WH_OK) {
        for (size_t i = 0; i < *n; i++)
            wh_outbox_row_clear(&out[i]);
        *n = 0;
    }
    return ret;
}

int64_t wh_outbox_next_due(wh_outbox_reader_t *r, const char *target, unsigned part,
                           unsigned nparts, int64_t now)
{
    sqlite3_stmt *st = r->st[WH__OR_DUE];
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_text(st, 2, target, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, nparts > 0 ? nparts : 1);
    sqlite3_bind_int64(st, 4, nparts > 0 ? part : 0);
    int64_t due = INT64_MAX;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        due = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return due;
}

/* Copies the first text column of the next row of st into out. */
static int wh__step_text(sqlite3_stmt *st, char *out, size_t outlen)
{
    int rc = sqlite3_step(st), ret;
    if (rc == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        size_t len = t != NULL ? strlen(t) : 0;
        if (len >= outlen) {
            ret = WH_EINVAL;
        } else {
            memcpy(out, t != NULL ? t : "", len + 1);
            ret = WH_OK;
        }
    } else {
        ret = rc == SQLITE_DONE ? WH_ENOTFOUND : WH_EIO;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

int wh_outbox_find_echo(wh_outbox_reader_t *r, const char *instance, const char *contact_a,
                        const char *contact_b, const char *text, int64_t after, char *wa_id,
                        size_t wa_len)
{
    if (instance == NULL || text == NULL || (contact_a == NULL && contact_b == NULL))
        return WH_EINVAL;
    sqlite3_stmt *st = r->st[WH__OR_ECHO];
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, contact_a != NULL ? contact_a : contact_b, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, contact_b != NULL ? contact_b : contact_a, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, text, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, after);
    return wh__step_text(st, wa_id, wa_len);
}

int wh_outbox_connection_state(wh_outbox_reader_t *r, const char *instance, char *out,
                               size_t outlen)
{
    sqlite3_stmt *st = r->st[WH__OR_CONN];
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
    return wh__step_text(st, out, outlen);
}

json_t *wh_outbox_counts(wh_outbox_reader_t *r)
{
    sqlite3_stmt *st = r->st[WH__OR_COUNTS];
    json_t *obj = json_object();
    int rc;
    while (obj != NULL && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *target = (const char *)sqlite3_column_text(st, 0);
        const char *status = (const char *)sqlite3_column_text(st, 1);
        if (target == NULL || status == NULL)
            continue;
        json_t *t = json_object_get(obj, target);
        if (t == NULL) {
            t = json_pack("{s:I,s:I}", "pending", (json_int_t)0, "dead", (json_int_t)0);
            if (t == NULL || json_object_set_new(obj, target, t) != 0) {
                json_decref(obj);
                obj = NULL;
                break;
            }
        }
        json_object_set_new(t, status, json_integer(sqlite3_column_int64(st, 2)));
    }
    if (obj != NULL && rc != SQLITE_DONE) {
        json_decref(obj);
        obj = NULL;
    }
    sqlite3_reset(st);
    return obj;
}

/* ---- writer tasks ---------------------------------------------------------------------------- */

/* Statements of one writer task, prepared per task: the writer's own statement table belongs to
 * processing, and deliverer tasks are batched, so the preparation cost is shared by many ops. */
enum {
    WH__OW_UPDATE,
    WH__OW_ECHO,
    WH__OW_NOT_ON_WA,
    WH__OW_INC_GET,
    WH__OW_INC_OPEN,
    WH__OW_INC_CLEAR,
    WH__OW_RATE_GET,
    WH__OW_RATE_PUT,
    WH__OW_ALERT_PUT,
    WH__OW_COUNT
};

static const char *const wh__ow_sql[WH__OW_COUNT] = {
    /* ?2: the op kind (wh_outbox_op_kind_t). DONE clears the error; DEAD keeps its own. */
    [WH__OW_UPDATE] =
        "UPDATE outbox SET"
        " status = CASE ?2 WHEN 1 THEN 'done' WHEN 3 THEN 'dead' ELSE 'pending' END,"
        " attempts = attempts + (CASE WHEN ?2 IN (2, 3) THEN 1 ELSE 0 END),"
        " next_attempt_at = CASE WHEN ?2 IN (2, 4) THEN ?3 WHEN ?2 IN (1, 3) THEN 0"
        "  ELSE next_attempt_at END,"
        " last_error = CASE WHEN ?2 = 1 THEN NULL ELSE coalesce(?4, last_error) END,"
        " response = coalesce(?5, response),"
        " progress = coalesce(?6, progress),"
        " updated_at = ?7"
        " WHERE id = ?1 AND status IN ('pending', 'inflight')",
    [WH__OW_ECHO] = "UPDATE messages SET origin = 'wahook', updated_at = ?3"
                    " WHERE instance = ?1 AND wa_id = ?2",
    [WH__OW_NOT_ON_WA] =
        "INSERT INTO contacts(instance, contact_key, phone, on_whatsapp) VALUES(?1, ?2, ?3, 0)"
        " ON CONFLICT(instance, contact_key) DO UPDATE SET on_whatsapp = 0",
    [WH__OW_INC_GET] = "SELECT cleared_at IS NULL FROM incidents WHERE key = ?1",
    [WH__OW_INC_OPEN] = "INSERT INTO incidents(key, opened_at, cleared_at, last_alert_at)"
                        " VALUES(?1, ?2, NULL, ?2) ON CONFLICT(key) DO UPDATE SET"
                        " opened_at = ?2, cleared_at = NULL, last_alert_at = ?2",
    [WH__OW_INC_CLEAR] = "UPDATE incidents SET cleared_at = ?2, last_alert_at = ?2"
                         " WHERE key = ?1",
    [WH__OW_RATE_GET] = "SELECT last_at FROM target_alerts WHERE target = ?1 AND kind = ?2",
    [WH__OW_RATE_PUT] = "INSERT INTO target_alerts(target, kind, last_at) VALUES(?1, ?2, ?3)"
                        " ON CONFLICT(target, kind) DO UPDATE SET last_at = ?3",
    [WH__OW_ALERT_PUT] = "INSERT INTO outbox(event_id, instance, contact_key, target, kind,"
                         " payload, created_at, updated_at)"
                         " VALUES(NULL, ?1, '', 'alert', 'alert', ?2, ?3, ?3)",
};

typedef struct wh__ow {
    sqlite3_stmt *st[WH__OW_COUNT];
} wh__ow_t;

static int wh__ow_get(wh_store_t *s, wh__ow_t *w, int i, sqlite3_stmt **out)
{
    if (w->st[i] == NULL) {
        int rc = sqlite3_prepare_v2(s->db, wh__ow_sql[i], -1, &w->st[i], NULL);
        if (rc != SQLITE_OK)
            return rc;
    }
    *out = w->st[i];
    return SQLITE_OK;
}

static void wh__ow_free(wh__ow_t *w)
{
    for (size_t i = 0; i < WH__OW_COUNT; i++)
        sqlite3_finalize(w->st[i]);
}

static int wh__bind_opt(sqlite3_stmt *st, int i, const char *v)
{
    return v != NULL ? sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
}

/* Runs a statement without rows, then clears its bindings. */
static int wh__run(sqlite3_stmt *st)
{
    int rc = wh__store_run(st);
    sqlite3_clear_bindings(st);
    return rc;
}

/* Length of s cut to at most max bytes without splitting a UTF-8 sequence. */
static size_t wh__utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

static int wh__alert_kind_ok(const char *k)
{
    if (k == NULL || k[0] == '\0' || strlen(k) > 64)
        return 0;
    for (const char *p = k; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.' || *p == '-'))
            return 0;
    return 1;
}

/* Inserts alert a unless a gate suppresses it. *inserted tells which. Returns SQLITE_OK with
 * *status set, or the SQLite error. */
static int wh__alert_put(wh_store_t *s, wh__ow_t *w, const wh_outbox_alert_t *a, int64_t now,
                         int *inserted, int *status)
{
    sqlite3_stmt *st;
    int rc;
    *inserted = 0;
    if (!wh__alert_kind_ok(a->kind) || a->text == NULL ||
        (a->fields != NULL && !json_is_object(a->fields)) ||
        (a->rate_target != NULL && a->rate_kind == NULL)) {
        *status = WH_EINVAL;
        return SQLITE_OK;
    }
    /* Check every gate before updating any, so a suppressed alert changes nothing. */
    int open = 0;
    if (a->incident != NULL) {
        if ((rc = wh__ow_get(s, w, WH__OW_INC_GET, &st)) != SQLITE_OK)
            return rc;
        sqlite3_bind_text(st, 1, a->incident, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            open = sqlite3_column_int(st, 0);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return rc;
        if (a->incident_clear ? !open : open)
            return SQLITE_OK;
    }
    if (a->rate_target != NULL && a->rate_interval_ms > 0) {
        if ((rc = wh__ow_get(s, w, WH__OW_RATE_GET, &st)) != SQLITE_OK)
            return rc;
        sqlite3_bind_text(st, 1, a->rate_target, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, a->rate_kind, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        int64_t last = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : INT64_MIN;
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return rc;
        if (last != INT64_MIN && now - last < a->rate_interval_ms && now >= last)
            return SQLITE_OK;
    }

    json_t *fields = a->fields != NULL ? json_deep_copy(a->fields) : json_object();
    if (fields != NULL && a->incident != NULL)
        json_object_set_new(fields, "incident", json_string(a->incident));
    json_t *payload = fields != NULL ? json_pack("{s:s,s:s,s:s,s:o}", "type", "alert", "kind",
                                                 a->kind, "text", a->text, "fields", fields)
                                     : NULL;
    if (payload != NULL && a->incident != NULL)
        json_object_set_new(payload, "gated", json_true());
    char *text = payload != NULL ? json_dumps(payload, JSON_COMPACT) : NULL;
    json_decref(payload);
    if (text == NULL) {
        *status = WH_ENOMEM;
        return SQLITE_OK;
    }
    if (a->incident != NULL) {
        rc = wh__ow_get(s, w, a->incident_clear ? WH__OW_INC_CLEAR : WH__OW_INC_OPEN, &st);
        if (rc == SQLITE_OK) {
            sqlite3_bind_text(st, 1, a->incident, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, now);
            rc = wh__run(st);
        }
        if (rc != SQLITE_OK)
            goto out;
    }
    if (a->rate_target != NULL && a->rate_interval_ms > 0) {
        if ((rc = wh__ow_get(s, w, WH__OW_RATE_PUT, &st)) != SQLITE_OK)
            goto out;
        sqlite3_bind_text(st, 1, a->rate_target, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, a->rate_kind, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, now);
        if ((rc = wh__run(st)) != SQLITE_OK)
            goto out;
    }
    if ((rc = wh__ow_get(s, w, WH__OW_ALERT_PUT, &st)) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, a->instance != NULL ? a->instance : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, text, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now);
    if ((rc = wh__run(st)) == SQLITE_OK)
        *inserted = 1;
out:
    free(text);
    return rc;
}

/* Records a sent message through processing's own upsert, so the echo and the receipts merge
 * into the same row whichever arrives first. */
static int wh__sent_put(wh_store_t *s, const wh_outbox_sent_t *m, int64_t now)
{
    sqlite3_stmt *st = s->ws[WH__WS_MSG_PUT];
    wh__bind_opt(st, 1, m->instance);
    wh__bind_opt(st, 2, m->wa_id);
    wh__bind_opt(st, 3, m->contact_key);
    wh__bind_opt(st, 4, m->chat_jid);
    sqlite3_bind_text(st, 5, "out", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, "wahook", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, "conversation", -1, SQLITE_STATIC);
    wh__bind_opt(st, 8, m->text);
    if (m->ts > 0)
        sqlite3_bind_int64(st, 9, m->ts);
    else
        sqlite3_bind_null(st, 9);
    sqlite3_bind_text(st, 10, "PENDING", -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 11, 1); /* PENDING's rank in store_work.c */
    sqlite3_bind_null(st, 12);
    sqlite3_bind_int64(st, 13, now);
    int rc = wh__run(st);
    if (rc != SQLITE_OK)
        return rc;
    st = s->ws[WH__WS_MSG_APPLY_PENDING];
    wh__bind_opt(st, 1, m->instance);
    wh__bind_opt(st, 2, m->wa_id);
    sqlite3_bind_int64(st, 3, now);
    if ((rc = wh__run(st)) != SQLITE_OK)
        return rc;
    st = s->ws[WH__WS_PENDING_DEL];
    wh__bind_opt(st, 1, m->instance);
    wh__bind_opt(st, 2, m->wa_id);
    return wh__run(st);
}

static int wh__all_digits(const char *s)
{
    if (s == NULL || *s == '\0')
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* Applies one op. Returns SQLITE_OK with op->status set, or the SQLite error. */
static int wh__op_apply(wh_store_t *s, wh__ow_t *w, wh_outbox_op_t *op, int64_t now, int *outbox)
{
    sqlite3_stmt *st;
    int rc;
    op->status = WH_OK;
    op->alerted = 0;
    if (op->op < WH_OUTBOX_DONE || op->op > WH_OUTBOX_PROGRESS) {
        op->status = WH_EINVAL;
        return SQLITE_OK;
    }
    if ((rc = wh__ow_get(s, w, WH__OW_UPDATE, &st)) != SQLITE_OK)
        return rc;
    sqlite3_bind_int64(st, 1, op->id);
    sqlite3_bind_int(st, 2, (int)op->op);
    sqlite3_bind_int64(st, 3, op->next_attempt_at);
    wh__bind_opt(st, 4, op->error);
    if (op->response != NULL) {
        size_t len = wh__utf8_cut(op->response, strlen(op->response), WH_OUTBOX_RESPONSE_MAX);
        sqlite3_bind_text(st, 5, op->response, (int)len, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_null(st, 5);
    }
    wh__bind_opt(st, 6, op->progress);
    sqlite3_bind_int64(st, 7, now);
    if ((rc = wh__run(st)) != SQLITE_OK)
        return rc;
    if (sqlite3_changes(s->db) == 0) {
        op->status = WH_ENOTFOUND; /* dropped, retried or unknown: nothing else is written */
        return SQLITE_OK;
    }
    /* A DEAD or DONE row frees its contact's later rows. */
    if (op->op == WH_OUTBOX_DONE || op->op == WH_OUTBOX_DEAD)
        *outbox = 1;

    if (op->sent != NULL && op->sent->instance != NULL && op->sent->wa_id != NULL &&
        (rc = wh__sent_put(s, op->sent, now)) != SQLITE_OK)
        return rc;
    if (op->echo_wa_id != NULL && op->instance != NULL) {
        if ((rc = wh__ow_get(s, w, WH__OW_ECHO, &st)) != SQLITE_OK)
            return rc;
        sqlite3_bind_text(st, 1, op->instance, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, op->echo_wa_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, now);
        if ((rc = wh__run(st)) != SQLITE_OK)
            return rc;
    }
    if (op->not_on_whatsapp != NULL && op->not_on_whatsapp[0] != '\0' && op->instance != NULL) {
        if ((rc = wh__ow_get(s, w, WH__OW_NOT_ON_WA, &st)) != SQLITE_OK)
            return rc;
        sqlite3_bind_text(st, 1, op->instance, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, op->not_on_whatsapp, -1, SQLITE_STATIC);
        wh__bind_opt(st, 3, wh__all_digits(op->not_on_whatsapp) ? op->not_on_whatsapp : NULL);
        if ((rc = wh__run(st)) != SQLITE_OK)
            return rc;
    }
    if (op->alert != NULL) {
        int inserted = 0, st_alert = WH_OK;
        if ((rc = wh__alert_put(s, w, op->alert, now, &inserted, &st_alert)) != SQLITE_OK)
            return rc;
        /* A malformed alert must not undo the delivery decision: it is logged and skipped. */
        if (st_alert != WH_OK)
            wh_log(WH_LOG_WARN, "outbox alert not recorded", "{s:s}", "error",
                   wh_strerror(st_alert));
        op->alerted = inserted;
        if (inserted)
            *outbox = 1;
    }
    return SQLITE_OK;
}

/* ---- tasks ----------------------------------------------------------------------------------- */

typedef struct wh__apply_arg {
    wh_outbox_op_t *ops;
    size_t n;
} wh__apply_arg_t;

static int wh__task_ops(wh_store_t *s, wh__task_t *t, int64_t now, int *status, int *outbox)
{
    wh__apply_arg_t *a = t->arg;
    wh__ow_t w = {{0}};
    int rc = SQLITE_OK;
    *status = WH_OK;
    for (size_t i = 0; i < a->n && rc == SQLITE_OK; i++)
        rc = wh__op_apply(s, &w, &a->ops[i], now, outbox);
    wh__ow_free(&w);
    if (rc != SQLITE_OK && wh__store_is_item_error(s->db, rc)) {
        *status = WH_EINVAL;
        rc = SQLITE_OK;
    }
    return rc;
}

int wh_outbox_apply(wh_store_t *s, wh_outbox_op_t *ops, size_t n)
{
    if (s == NULL || (ops == NULL && n > 0))
        return WH_EINVAL;
    if (n == 0)
        return WH_OK;
    wh__apply_arg_t a = {.ops = ops, .n = n};
    wh__task_t t = {.op = WH__TASK_FN, .fn = wh__task_ops, .arg = &a};
    return wh__store_sync(s, &t);
}

typedef struct wh__alert_arg {
    const wh_outbox_alert_t *alert;
    int inserted;
} wh__alert_arg_t;

static int wh__task_alert(wh_store_t *s, wh__task_t *t, int64_t now, int *status, int *outbox)
{
    wh__alert_arg_t *a = t->arg;
    wh__ow_t w = {{0}};
    *status = WH_OK;
    int rc = wh__alert_put(s, &w, a->alert, now, &a->inserted, status);
    wh__ow_free(&w);
    if (rc != SQLITE_OK && wh__store_is_item_error(s->db, rc)) {
        *status = WH_EINVAL;
        rc = SQLITE_OK;
    }
    if (rc == SQLITE_OK && *status == WH_OK && a->inserted)
        *outbox = 1;
    return rc;
}

int wh_outbox_alert(wh_store_t *s, const wh_outbox_alert_t *alert)
{
    if (s == NULL || alert == NULL)
        return WH_EINVAL;
    wh__alert_arg_t a = {.alert = alert};
    wh__task_t t = {.op = WH__TASK_FN, .fn = wh__task_alert, .arg = &a};
    int rc = wh__store_sync(s, &t);
    return rc != WH_OK ? rc : a.inserted;
}

/* Operator and start-up tasks on one row or on all of them. */
enum { WH__ROW_RESET = 1, WH__ROW_RETRY = 2, WH__ROW_DROP = 3 };

typedef struct wh__row_arg {
    int what;
    int64_t id;
    int64_t changed;
} wh__row_arg_t;

static int wh__task_row(wh_store_t *s, wh__task_t *t, int64_t now, int *status, int *outbox)
{
    wh__row_arg_t *a = t->arg;
    sqlite3_stmt *st = NULL;
    int rc;
    *status = WH_OK;
    if (a->what == WH__ROW_RESET) {
        rc = sqlite3_prepare_v2(s->db,
                                "UPDATE outbox SET status = 'pending', updated_at = ?1"
                                " WHERE status = 'inflight'",
                                -1, &st, NULL);
        if (rc == SQLITE_OK) {
            sqlite3_bind_int64(st, 1, now);
            rc = wh__store_run(st);
            a->changed = sqlite3_changes(s->db);
        }
        sqlite3_finalize(st);
        if (rc == SQLITE_OK && a->changed > 0)
            *outbox = 1;
        return rc;
    }
    rc = sqlite3_prepare_v2(s->db, "SELECT status FROM outbox WHERE id = ?1", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_int64(st, 1, a->id);
    rc = sqlite3_step(st);
    char status_now[16] = "";
    if (rc == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        snprintf(status_now, sizeof(status_now), "%s", v != NULL ? v : "");
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc == SQLITE_DONE) {
        *status = WH_ENOTFOUND;
        return SQLITE_OK;
    }
    if (rc != SQLITE_ROW)
        return rc;
    int live = strcmp(status_now, "pending") == 0 || strcmp(status_now, "inflight") == 0 ||
               strcmp(status_now, "dead") == 0;
    if (!live) {
        *status = WH_EINVAL; /* done or dropped: nothing to retry or drop */
        return SQLITE_OK;
    }
    const char *sql = a->what == WH__ROW_RETRY
                          ? "UPDATE outbox SET status = 'pending', attempts = 0,"
                            " next_attempt_at = 0, updated_at = ?2 WHERE id = ?1"
                          : "UPDATE outbox SET status = 'dropped', next_attempt_at = 0,"
                            " updated_at = ?2 WHERE id = ?1";
    if ((rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL)) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, a->id);
        sqlite3_bind_int64(st, 2, now);
        rc = wh__store_run(st);
        a->changed = sqlite3_changes(s->db);
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_OK)
        *outbox = 1; /* a retried row is due; a dropped one frees its contact's later rows */
    return rc;
}

typedef struct wh__gate_arg {
    int64_t id;
    const char *incident;
    int clear;
    const char *progress;
    int pass;
} wh__gate_arg_t;

static int wh__task_gate(wh_store_t *s, wh__task_t *t, int64_t now, int *status, int *outbox)
{
    wh__gate_arg_t *a = t->arg;
    wh__ow_t w = {{0}};
    sqlite3_stmt *st;
    int rc, open = 0;
    *status = WH_OK;
    if ((rc = wh__ow_get(s, &w, WH__OW_INC_GET, &st)) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, a->incident, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        open = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        goto out;
    a->pass = a->clear ? open : !open;
    wh_outbox_op_t op = {.id = a->id};
    if (a->pass) {
        op.op = WH_OUTBOX_PROGRESS;
        op.progress = a->progress;
    } else {
        op.op = WH_OUTBOX_DONE;
        op.response = a->clear ? "{\"suppressed\":\"the incident is not open\"}"
                               : "{\"suppressed\":\"the incident is already open\"}";
    }
    if ((rc = wh__op_apply(s, &w, &op, now, outbox)) != SQLITE_OK)
        goto out;
    if (op.status != WH_OK) {
        *status = op.status;
        goto out;
    }
    if (a->pass) {
        rc = wh__ow_get(s, &w, a->clear ? WH__OW_INC_CLEAR : WH__OW_INC_OPEN, &st);
        if (rc == SQLITE_OK) {
            sqlite3_bind_text(st, 1, a->incident, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, now);
            rc = wh__run(st);
        }
    }
out:
    wh__ow_free(&w);
    if (rc != SQLITE_OK && wh__store_is_item_error(s->db, rc)) {
        *status = WH_EINVAL;
        rc = SQLITE_OK;
    }
    return rc;
}

int wh_outbox_gate_alert(wh_store_t *s, int64_t id, const char *incident, int clear,
                         const char *progress)
{
    if (s == NULL || incident == NULL || progress == NULL)
        return WH_EINVAL;
    wh__gate_arg_t a = {.id = id, .incident = incident, .clear = clear, .progress = progress};
    wh__task_t t = {.op = WH__TASK_FN, .fn = wh__task_gate, .arg = &a};
    int rc = wh__store_sync(s, &t);
    return rc != WH_OK ? rc : a.pass;
}

static int wh__row_task(wh_store_t *s, wh__row_arg_t *a)
{
    if (s == NULL)
        return WH_EINVAL;
    wh__task_t t = {.op = WH__TASK_FN, .fn = wh__task_row, .arg = a};
    return wh__store_sync(s, &t);
}

int wh_outbox_reset_inflight(wh_store_t *s)
{
    wh__row_arg_t a = {.what = WH__ROW_RESET};
    int rc = wh__row_task(s, &a);
    return rc != WH_OK ? rc : (int)(a.changed > INT32_MAX ? INT32_MAX : a.changed);
}

int wh_outbox_retry(wh_store_t *s, int64_t id)
{
    wh__row_arg_t a = {.what = WH__ROW_RETRY, .id = id};
    return wh__row_task(s, &a);
}

int wh_outbox_drop(wh_store_t *s, int64_t id)
{
    wh__row_arg_t a = {.what = WH__ROW_DROP, .id = id};
    return wh__row_task(s, &a);
}

/* ---- operators' reads ------------------------------------------------------------------------ */

int wh_outbox_list(const char *path, const char *status, const char *target, int limit,
                   wh_outbox_row_cb cb, void *ctx, char *err, size_t errlen)
{
    if (limit <= 0 || cb == NULL) {
        wh__store_set_err(err, errlen, "limit must be positive");
        return WH_EINVAL;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int ret = wh__store_open_ro(path, &db, err, errlen);
    if (ret != WH_OK)
        return ret;
    ret = WH_EIO;
    if (sqlite3_prepare_v2(db,
                           "SELECT " WH__ROW_COLS " FROM outbox WHERE (?1 IS NULL OR status = ?1)"
                           " AND (?2 IS NULL OR target = ?2) ORDER BY id DESC LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK)
        goto done;
    wh__bind_opt(st, 1, status);
    wh__bind_opt(st, 2, target);
    sqlite3_bind_int(st, 3, limit);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        wh_outbox_row_t row;
        if (wh__row_read(st, &row) != WH_OK) {
            ret = WH_ENOMEM;
            goto done;
        }
        int stop = cb(&row, ctx);
        wh_outbox_row_clear(&row);
        if (stop != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    if (rc == SQLITE_DONE)
        ret = WH_OK;
done:
    if (ret == WH_EIO)
        wh__store_set_err(err, errlen, "cannot list the outbox: %s", sqlite3_errmsg(db));
    else if (ret == WH_ENOMEM)
        wh__store_set_err(err, errlen, "out of memory");
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}

int wh_outbox_show(const char *path, int64_t id, wh_outbox_row_cb cb, void *ctx, char *err,
                   size_t errlen)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int ret = wh__store_open_ro(path, &db, err, errlen);
    if (ret != WH_OK)
        return ret;
    ret = WH_EIO;
    if (sqlite3_prepare_v2(db, "SELECT " WH__ROW_COLS " FROM outbox WHERE id = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        goto done;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        wh_outbox_row_t row;
        if (wh__row_read(st, &row) != WH_OK) {
            ret = WH_ENOMEM;
            goto done;
        }
        cb(&row, ctx);
        wh_outbox_row_clear(&row);
        ret = WH_OK;
    } else if (rc == SQLITE_DONE) {
        ret = WH_ENOTFOUND;
        wh__store_set_err(err, errlen, "no such outbox row");
    }
done:
    if (ret == WH_EIO)
        wh__store_set_err(err, errlen, "cannot read the outbox: %s", sqlite3_errmsg(db));
    else if (ret == WH_ENOMEM)
        wh__store_set_err(err, errlen, "out of memory");
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}
