/* Processing on the store: work commits applied by the writer (event status, state, timers,
 * outbox, facts, metrics and the native records, all in one transaction), processors' read side
 * (partitions, strict per-contact FIFO work, wake-up times), LID contact merges and operator
 * actions on events. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "wahook/common.h"
#include "wahook/log.h"
#include "wahook/store.h"
#include "store_internal.h"

/* Events scanned per next_work call at most: generous, so that a contact stuck in retry with a
 * long backlog does not hide the rest of the partition. */
#define WH__SCAN_EXTRA 10000
/* The serialisation buffer is kept between items unless one outsized payload grew it past this. */
#define WH__DUMP_KEEP (1u << 20)

/* ---- writer statements ---------------------------------------------------------------------- */

static const char *const wh__ws_sql[WH__WS_COUNT] = {
    [WH__WS_EV_DONE] = "UPDATE events SET status = 'done', attempts = attempts + 1,"
                       " processed_at = ?2, script_version = ?3, last_error = NULL,"
                       " next_attempt_at = 0 WHERE id = ?1 AND status = 'pending'",
    [WH__WS_EV_RETRY] = "UPDATE events SET attempts = attempts + 1, last_error = ?2,"
                        " next_attempt_at = ?3, script_version = coalesce(?4, script_version)"
                        " WHERE id = ?1 AND status = 'pending'",
    [WH__WS_EV_DEAD] = "UPDATE events SET status = 'dead', attempts = attempts + 1,"
                       " last_error = ?2, next_attempt_at = 0, processed_at = ?3,"
                       " script_version = coalesce(?4, script_version)"
                       " WHERE id = ?1 AND status = 'pending'",
    [WH__WS_EV_REQUEUE] = "UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = 0,"
                          " processed_at = NULL WHERE id = ?1"
                          " AND (status = 'dead' OR (status = 'pending' AND attempts > 0))",
    [WH__WS_EV_EXISTS] = "SELECT status FROM events WHERE id = ?1",
    [WH__WS_STATE_PUT] = "INSERT INTO contact_state(instance, contact_key, state, updated_at)"
                         " VALUES(?1, ?2, ?3, ?4) ON CONFLICT(instance, contact_key) DO UPDATE"
                         " SET state = excluded.state, updated_at = excluded.updated_at",
    [WH__WS_STATE_DEL] = "DELETE FROM contact_state WHERE instance = ?1 AND contact_key = ?2",
    [WH__WS_STATE_GET] = "SELECT state FROM contact_state WHERE instance = ?1 AND contact_key = ?2",
    [WH__WS_TIMER_DEL_NAME] = "DELETE FROM timers WHERE instance = ?1 AND contact_key = ?2"
                              " AND name = ?3",
    /* Always a new row (after DEL_NAME): a replaced timer gets a new id, so a run of the old
     * one can tell it was replaced. */
    [WH__WS_TIMER_PUT] = "INSERT INTO timers(instance, contact_key, name, due_at, payload,"
                         " attempts, created_at) VALUES(?1, ?2, ?3, ?4, ?5, 0, ?6)",
    [WH__WS_TIMER_DEL_ITEM] = "DELETE FROM timers WHERE id = ?1 AND due_at = ?2",
    [WH__WS_TIMER_RETRY] = "UPDATE timers SET attempts = attempts + 1, due_at = ?3,"
                           " last_error = ?4 WHERE id = ?1 AND due_at = ?2",
    [WH__WS_OUTBOX_PUT] = "INSERT INTO outbox(event_id, instance, contact_key, target, kind,"
                          " payload, created_at, updated_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
    [WH__WS_FACT_PUT] = "INSERT INTO facts(event_id, instance, contact_key, kind, fields,"
                        " created_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    [WH__WS_METRIC_ADD] = "INSERT INTO metrics_counts(name, labels, value) VALUES(?1, ?2, ?3)"
                          " ON CONFLICT(name, labels) DO UPDATE SET value = value + excluded.value",
    /* Whichever of the send response, the echo and the upsert arrives first creates the row;
     * later ones fill gaps. The status only moves forward; 'wahook' as origin is never lost. */
    [WH__WS_MSG_PUT] =
        "INSERT INTO messages(instance, wa_id, contact_key, chat_jid, direction, origin, type,"
        " text, ts, status, status_rank, event_id, created_at, updated_at)"
        " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)"
        " ON CONFLICT(instance, wa_id) DO UPDATE SET"
        " contact_key = coalesce(excluded.contact_key, messages.contact_key),"
        " chat_jid = coalesce(excluded.chat_jid, messages.chat_jid),"
        " direction = coalesce(excluded.direction, messages.direction),"
        " origin = CASE WHEN messages.origin = 'wahook' THEN 'wahook'"
        "  ELSE coalesce(excluded.origin, messages.origin) END,"
        " type = coalesce(excluded.type, messages.type),"
        " text = coalesce(excluded.text, messages.text),"
        " ts = coalesce(messages.ts, excluded.ts),"
        " status = CASE WHEN excluded.status IS NOT NULL AND (messages.status IS NULL"
        "  OR excluded.status_rank > messages.status_rank) THEN excluded.status"
        "  ELSE messages.status END,"
        " status_rank = max(messages.status_rank, excluded.status_rank),"
        " event_id = coalesce(messages.event_id, excluded.event_id),"
        " updated_at = excluded.updated_at",
    [WH__WS_MSG_APPLY_PENDING] =
        "UPDATE messages SET status = p.status, status_rank = p.status_rank, updated_at = ?3"
        " FROM pending_receipts AS p WHERE messages.instance = ?1 AND messages.wa_id = ?2"
        " AND p.instance = ?1 AND p.wa_id = ?2"
        " AND (messages.status IS NULL OR p.status_rank > messages.status_rank)",
    [WH__WS_PENDING_DEL] = "DELETE FROM pending_receipts WHERE instance = ?1 AND wa_id = ?2",
    [WH__WS_MSG_RANK] = "SELECT status_rank FROM messages WHERE instance = ?1 AND wa_id = ?2",
    [WH__WS_MSG_RAISE] = "UPDATE messages SET status = ?3, status_rank = ?4, updated_at = ?5"
                         " WHERE instance = ?1 AND wa_id = ?2"
                         " AND (status IS NULL OR status_rank < ?4)",
    [WH__WS_PENDING_PUT] = "INSERT INTO pending_receipts(instance, wa_id, status, status_rank, at)"
                           " VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(instance, wa_id) DO UPDATE"
                           " SET status = excluded.status, status_rank = excluded.status_rank,"
                           " at = excluded.at"
                           " WHERE excluded.status_rank > pending_receipts.status_rank",
    [WH__WS_CONTACT_PUT] =
        "INSERT INTO contacts(instance, contact_key, phone, lid, push_name, first_seen,"
        " last_seen, presence, presence_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)"
        " ON CONFLICT(instance, contact_key) DO UPDATE SET"
        " phone = coalesce(excluded.phone, contacts.phone),"
        " lid = coalesce(excluded.lid, contacts.lid),"
        " push_name = coalesce(excluded.push_name, contacts.push_name),"
        " first_seen = min(coalesce(contacts.first_seen, excluded.first_seen),"
        "  coalesce(excluded.first_seen, contacts.first_seen)),"
        " last_seen = max(coalesce(contacts.last_seen, excluded.last_seen),"
        "  coalesce(excluded.last_seen, contacts.last_seen)),"
        " presence = coalesce(excluded.presence, contacts.presence),"
        " presence_at = CASE WHEN excluded.presence IS NOT NULL THEN excluded.presence_at"
        "  ELSE contacts.presence_at END",
    [WH__WS_CONN_PUT] = "INSERT INTO connection_history(instance, state, status_reason, at,"
                        " event_id) VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(event_id) DO NOTHING",
    [WH__WS_QR_PUT] = "INSERT INTO qr_latest(instance, qr_base64, code, pairing_code,"
                      " limit_reached, at, event_id) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                      " ON CONFLICT(instance) DO UPDATE SET qr_base64 = excluded.qr_base64,"
                      " code = excluded.code, pairing_code = excluded.pairing_code,"
                      " limit_reached = excluded.limit_reached, at = excluded.at,"
                      " event_id = excluded.event_id",
    [WH__WS_MERGE_NOTE] =
        "INSERT INTO contact_merges(instance, from_key, to_key, learned_at)"
        " SELECT ?1, ?2, ?3, ?4 WHERE"
        " EXISTS(SELECT 1 FROM contact_state WHERE instance = ?1 AND contact_key = ?2)"
        " OR EXISTS(SELECT 1 FROM timers WHERE instance = ?1 AND contact_key = ?2)"
        " OR EXISTS(SELECT 1 FROM contacts WHERE instance = ?1 AND contact_key = ?2)"
        " OR EXISTS(SELECT 1 FROM facts WHERE contact_key = ?2 AND instance = ?1)"
        " OR EXISTS(SELECT 1 FROM messages WHERE contact_key = ?2 AND instance = ?1)"
        " OR EXISTS(SELECT 1 FROM events WHERE status = 'pending' AND instance = ?1"
        "  AND contact_key = ?2)"
        " ON CONFLICT(instance, from_key) DO UPDATE SET to_key = excluded.to_key,"
        " learned_at = excluded.learned_at",
    [WH__WS_MG_STATE_MOVE] = "UPDATE contact_state SET contact_key = ?3, updated_at = ?4"
                             " WHERE instance = ?1 AND contact_key = ?2",
    [WH__WS_MG_TIMER_CLASH] = "DELETE FROM timers WHERE instance = ?1 AND contact_key = ?2"
                              " AND name IN (SELECT name FROM timers WHERE instance = ?1"
                              " AND contact_key = ?3)",
    [WH__WS_MG_TIMER_MOVE] = "UPDATE timers SET contact_key = ?3 WHERE instance = ?1"
                             " AND contact_key = ?2",
    [WH__WS_MG_FACTS] = "UPDATE facts SET contact_key = ?3 WHERE contact_key = ?2 AND instance = ?1",
    [WH__WS_MG_OUTBOX] = "UPDATE outbox SET contact_key = ?3, updated_at = ?4"
                         " WHERE status = 'pending' AND instance = ?1 AND contact_key = ?2",
    [WH__WS_MG_MESSAGES] = "UPDATE messages SET contact_key = ?3 WHERE contact_key = ?2"
                           " AND instance = ?1",
    [WH__WS_MG_CONTACT_MERGE] =
        "UPDATE contacts SET phone = coalesce(contacts.phone, f.phone),"
        " lid = coalesce(contacts.lid, f.lid, ?2),"
        " push_name = coalesce(contacts.push_name, f.push_name),"
        " first_seen = min(coalesce(contacts.first_seen, f.first_seen),"
        "  coalesce(f.first_seen, contacts.first_seen)),"
        " last_seen = max(coalesce(contacts.last_seen, f.last_seen),"
        "  coalesce(f.last_seen, contacts.last_seen)),"
        " presence = CASE WHEN f.presence_at > coalesce(contacts.presence_at, -1)"
        "  THEN f.presence ELSE contacts.presence END,"
        " presence_at = max(coalesce(contacts.presence_at, f.presence_at),"
        "  coalesce(f.presence_at, contacts.presence_at))"
        " FROM (SELECT * FROM contacts WHERE instance = ?1 AND contact_key = ?2) AS f"
        " WHERE contacts.instance = ?1 AND contacts.contact_key = ?3",
    [WH__WS_MG_CONTACT_DROP] = "DELETE FROM contacts WHERE instance = ?1 AND contact_key = ?2"
                               " AND EXISTS(SELECT 1 FROM contacts WHERE instance = ?1"
                               " AND contact_key = ?3)",
    [WH__WS_MG_CONTACT_MOVE] = "UPDATE contacts SET contact_key = ?3, phone = coalesce(phone, ?3),"
                               " lid = coalesce(lid, ?2) WHERE instance = ?1 AND contact_key = ?2",
    [WH__WS_MG_DONE] = "DELETE FROM contact_merges WHERE instance = ?1 AND from_key = ?2"
                       " AND to_key = ?3",
};

int wh__work_prepare(wh_store_t *s, char *err, size_t errlen)
{
    for (size_t i = 0; i < WH__WS_COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, wh__ws_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->ws[i],
                               NULL) != SQLITE_OK) {
            wh__store_set_err(err, errlen, "cannot prepare store statement: %s",
                              sqlite3_errmsg(s->db));
            return WH_EIO;
        }
    }
    return WH_OK;
}

void wh__work_finalize(wh_store_t *s)
{
    for (size_t i = 0; i < WH__WS_COUNT; i++) {
        sqlite3_finalize(s->ws[i]);
        s->ws[i] = NULL;
    }
}

/* ---- small helpers -------------------------------------------------------------------------- */

static const char *wh__nonempty(const char *s)
{
    return s != NULL && s[0] != '\0' ? s : NULL;
}

/* A non-empty string member of o, or NULL. */
static const char *wh__jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return wh__nonempty(v);
}

/* An integral member of o (integers, or reals that hold an integer), else 0 with *ok = 0. */
static int64_t wh__jint(const json_t *o, const char *k, int *ok)
{
    const json_t *v = json_object_get(o, k);
    *ok = 1;
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (isfinite(d) && d >= -9.2e18 && d <= 9.2e18 && d == (double)(int64_t)d)
            return (int64_t)d;
    }
    *ok = 0;
    return 0;
}

static int wh__bind_text(sqlite3_stmt *st, int i, const char *v)
{
    return v != NULL ? sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

static int wh__bind_id(sqlite3_stmt *st, int i, int has, int64_t v)
{
    return has ? sqlite3_bind_int64(st, i, v) : sqlite3_bind_null(st, i);
}

/* Runs st and clears its bindings, so no pointer into freed memory stays bound. */
static int wh__exec(sqlite3_stmt *st)
{
    int rc = wh__store_run(st);
    sqlite3_clear_bindings(st);
    return rc;
}

/* Serialises j into the store's reusable buffer. Returns WH_OK with *out and *len set, WH_EINVAL
 * when j cannot be serialised, WH_ENOMEM. The buffer stays valid until the next call. */
static int wh__dump(wh_store_t *s, const json_t *j, size_t flags, const char **out, size_t *len)
{
    for (int tries = 0; tries < 2; tries++) {
        size_t need = json_dumpb(j, s->dump, s->dump_cap, flags | JSON_COMPACT);
        if (need == 0)
            return WH_EINVAL;
        if (need <= s->dump_cap) {
            *out = s->dump;
            *len = need;
            return WH_OK;
        }
        char *nb = realloc(s->dump, need);
        if (nb == NULL)
            return WH_ENOMEM;
        s->dump = nb;
        s->dump_cap = need;
    }
    return WH_ENOMEM;
}

/* Receipt statuses in the order a message goes through them; ERROR and DELETED are terminal. */
static int wh__status_rank(const char *status)
{
    static const struct {
        const char *name;
        int rank;
    } ranks[] = {{"PENDING", 1}, {"SERVER_ACK", 2}, {"DELIVERY_ACK", 3}, {"READ", 4},
                 {"PLAYED", 5},  {"ERROR", 100},    {"DELETED", 100}};
    if (status == NULL)
        return 0;
    for (size_t i = 0; i < WH_ARRAY_SIZE(ranks); i++)
        if (strcmp(status, ranks[i].name) == 0)
            return ranks[i].rank;
    return 0;
}

/* The outbox target of an action type, or NULL for a type no deliverer handles. */
static const char *wh__action_target(const char *type)
{
    static const struct {
        const char *type, *target;
    } map[] = {{"send_text", "evolution"}, {"crm", "crm"}, {"mail", "mail"}, {"alert", "alert"}};
    for (size_t i = 0; i < WH_ARRAY_SIZE(map); i++)
        if (strcmp(type, map[i].type) == 0)
            return map[i].target;
    return NULL;
}

/* ---- native records ------------------------------------------------------------------------- */

static int wh__contact_put(wh_store_t *s, const char *instance, const char *key, const char *phone,
                           const char *lid, const char *push_name, int seen, int64_t seen_at,
                           const char *presence, int64_t presence_at)
{
    sqlite3_stmt *st = s->ws[WH__WS_CONTACT_PUT];
    wh__bind_text(st, 1, instance);
    wh__bind_text(st, 2, key);
    wh__bind_text(st, 3, phone);
    wh__bind_text(st, 4, lid);
    wh__bind_text(st, 5, push_name);
    wh__bind_id(st, 6, seen, seen_at);
    wh__bind_text(st, 7, presence);
    wh__bind_id(st, 8, presence != NULL, presence_at);
    return wh__exec(st);
}

static int wh__native_message(wh_store_t *s, const wh_work_commit_t *c, int64_t now)
{
    const wh_work_item_t *it = c->item;
    const json_t *m = c->msg;
    const char *wa_id = wh__jstr(m, "id");
    if (wa_id == NULL)
        return SQLITE_OK;
    int from_me = json_is_true(json_object_get(m, "from_me"));
    const char *origin = wh__nonempty(c->origin);
    if (origin == NULL)
        origin = wh__jstr(m, "origin");
    const char *status = wh__jstr(m, "status");
    const char *ck = wh__nonempty(it->contact_key);
    int has_ts;
    int64_t ts = wh__jint(m, "timestamp", &has_ts);

    sqlite3_stmt *st = s->ws[WH__WS_MSG_PUT];
    wh__bind_text(st, 1, it->instance);
    wh__bind_text(st, 2, wa_id);
    wh__bind_text(st, 3, ck);
    wh__bind_text(st, 4, wh__jstr(m, "chat_jid"));
    wh__bind_text(st, 5, from_me ? "out" : "in");
    wh__bind_text(st, 6, origin);
    wh__bind_text(st, 7, wh__jstr(m, "type"));
    wh__bind_text(st, 8, json_string_value(json_object_get(m, "text")));
    wh__bind_id(st, 9, has_ts, ts);
    wh__bind_text(st, 10, status);
    sqlite3_bind_int(st, 11, wh__status_rank(status));
    sqlite3_bind_int64(st, 12, it->id);
    sqlite3_bind_int64(st, 13, now);
    int rc = wh__exec(st);
    if (rc != SQLITE_OK)
        return rc;

    /* A receipt that arrived before its message. */
    st = s->ws[WH__WS_MSG_APPLY_PENDING];
    wh__bind_text(st, 1, it->instance);
    wh__bind_text(st, 2, wa_id);
    sqlite3_bind_int64(st, 3, now);
    if ((rc = wh__exec(st)) != SQLITE_OK)
        return rc;
    st = s->ws[WH__WS_PENDING_DEL];
    wh__bind_text(st, 1, it->instance);
    wh__bind_text(st, 2, wa_id);
    if ((rc = wh__exec(st)) != SQLITE_OK)
        return rc;

    if (from_me || ck == NULL || strcmp(it->event, "messages.upsert") != 0)
        return SQLITE_OK;
    return wh__contact_put(s, it->instance, ck, wh__jstr(m, "phone"), wh__jstr(m, "lid"),
                           wh__jstr(m, "push_name"), 1, it->received_at, NULL, 0);
}

/* Raises a known message's status (never backwards), or keeps the receipt until it appears. */
static int wh__receipt(wh_store_t *s, const char *instance, const char *wa_id, const char *status,
                       int64_t at, int64_t now)
{
    if (wa_id == NULL || status == NULL)
        return SQLITE_OK;
    int rank = wh__status_rank(status);
    sqlite3_stmt *st = s->ws[WH__WS_MSG_RANK];
    wh__bind_text(st, 1, instance);
    wh__bind_text(st, 2, wa_id);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc == SQLITE_ROW) {
        st = s->ws[WH__WS_MSG_RAISE];
        wh__bind_text(st, 1, instance);
        wh__bind_text(st, 2, wa_id);
        wh__bind_text(st, 3, status);
        sqlite3_bind_int(st, 4, rank);
        sqlite3_bind_int64(st, 5, now);
        return wh__exec(st);
    }
    if (rc != SQLITE_DONE)
        return rc;
    st = s->ws[WH__WS_PENDING_PUT];
    wh__bind_text(st, 1, instance);
    wh__bind_text(st, 2, wa_id);
    wh__bind_text(st, 3, status);
    sqlite3_bind_int(st, 4, rank);
    sqlite3_bind_int64(st, 5, at);
    return wh__exec(st);
}

static int wh__native_receipts(wh_store_t *s, const wh_work_commit_t *c, int64_t now)
{
    const wh_work_item_t *it = c->item;
    const json_t *list = json_object_get(c->msg, "receipts"); /* the old array form */
    if (json_is_array(list)) {
        size_t i;
        const json_t *r;
        json_array_foreach(list, i, r) {
            int rc = wh__receipt(s, it->instance, wh__jstr(r, "key_id"), wh__jstr(r, "status"),
                                 it->received_at, now);
            if (rc != SQLITE_OK)
                return rc;
        }
        return SQLITE_OK;
    }
    return wh__receipt(s, it->instance, wh__jstr(c->msg, "key_id"), wh__jstr(c->msg, "status"),
                       it->received_at, now);
}

/* The contact key of a contacts-list entry: its phone, else the phone known for its LID, else the
 * LID (the same rule as ingest). Copies into out; returns 0 when the entry names nobody. */
static int wh__entry_key(wh_store_t *s, const char *instance, const char *phone, const char *lid,
                         char *out, size_t outlen, int *rc)
{
    *rc = SQLITE_OK;
    if (phone != NULL) {
        snprintf(out, outlen, "%s", phone);
        return 1;
    }
    if (lid == NULL)
        return 0;
    snprintf(out, outlen, "%s", lid);
    sqlite3_stmt *st = s->st_alias_get;
    wh__bind_text(st, 1, instance);
    wh__bind_text(st, 2, lid);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        const char *p = (const char *)sqlite3_column_text(st, 0);
        if (wh__nonempty(p) != NULL)
            snprintf(out, outlen, "%s", p);
    } else if (r != SQLITE_DONE) {
        *rc = r;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return *rc == SQLITE_OK;
}

static int wh__native_contacts(wh_store_t *s, const wh_work_commit_t *c)
{
    const wh_work_item_t *it = c->item;
    const json_t *m = c->msg;
    const char *ck = wh__nonempty(it->contact_key);
    if (ck != NULL) /* the single-object form: ingest already named the contact */
        return wh__contact_put(s, it->instance, ck, wh__jstr(m, "phone"), wh__jstr(m, "lid"),
                               wh__jstr(m, "push_name"), 0, 0, NULL, 0);
    const json_t *list = json_object_get(m, "contacts");
    size_t i;
    const json_t *e;
    json_array_foreach(list, i, e) {
        const char *phone = wh__jstr(e, "phone"), *lid = wh__jstr(e, "lid");
        char key[256];
        int rc;
        if (phone != NULL && strlen(phone) >= sizeof(key))
            continue;
        if (lid != NULL && strlen(lid) >= sizeof(key))
            continue;
        if (!wh__entry_key(s, it->instance, phone, lid, key, sizeof(key), &rc)) {
            if (rc != SQLITE_OK)
                return rc;
            continue;
        }
        rc = wh__contact_put(s, it->instance, key, phone, lid, wh__jstr(e, "push_name"), 0, 0,
                             NULL, 0);
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

static int wh__native_connection(wh_store_t *s, const wh_work_commit_t *c)
{
    const wh_work_item_t *it = c->item;
    const char *state = wh__jstr(c->msg, "state");
    if (state == NULL)
        return SQLITE_OK;
    int has_reason;
    int64_t reason = wh__jint(c->msg, "status_reason", &has_reason);
    sqlite3_stmt *st = s->ws[WH__WS_CONN_PUT];
    wh__bind_text(st, 1, it->instance);
    wh__bind_text(st, 2, state);
    wh__bind_id(st, 3, has_reason, reason);
    sqlite3_bind_int64(st, 4, it->received_at);
    sqlite3_bind_int64(st, 5, it->id);
    return wh__exec(st);
}

static int wh__native_qr(wh_store_t *s, const wh_work_commit_t *c)
{
    const wh_work_item_t *it = c->item;
    const json_t *m = c->msg;
    const char *qr = wh__jstr(m, "qr"), *code = wh__jstr(m, "code");
    int limit = json_is_true(json_object_get(m, "limit_reached"));
    if (qr == NULL && code == NULL && !limit)
        return SQLITE_OK;
    sqlite3_stmt *st = s->ws[WH__WS_QR_PUT];
    wh__bind_text(st, 1, it->instance);
    wh__bind_text(st, 2, qr);
    wh__bind_text(st, 3, code);
    wh__bind_text(st, 4, wh__jstr(m, "pairing_code"));
    sqlite3_bind_int(st, 5, limit);
    sqlite3_bind_int64(st, 6, it->received_at);
    sqlite3_bind_int64(st, 7, it->id);
    return wh__exec(st);
}

static int wh__native_presence(wh_store_t *s, const wh_work_commit_t *c)
{
    const wh_work_item_t *it = c->item;
    const char *ck = wh__nonempty(it->contact_key);
    const char *presence = wh__jstr(c->msg, "presence");
    if (ck == NULL || presence == NULL)
        return SQLITE_OK;
    return wh__contact_put(s, it->instance, ck, wh__jstr(c->msg, "phone"), wh__jstr(c->msg, "lid"),
                           NULL, 0, 0, presence, it->received_at);
}

/* The facts the runtime records itself from the normalised view, whatever the run's status. */
static int wh__native(wh_store_t *s, const wh_work_commit_t *c, int64_t now)
{
    const char *ev = c->item->event;
    if (!json_is_object(c->msg) || ev == NULL)
        return SQLITE_OK;
    if (strcmp(ev, "messages.upsert") == 0 || strcmp(ev, "send.message") == 0)
        return wh__native_message(s, c, now);
    if (strcmp(ev, "messages.update") == 0)
        return wh__native_receipts(s, c, now);
    if (strcmp(ev, "contacts.upsert") == 0 || strcmp(ev, "contacts.update") == 0)
        return wh__native_contacts(s, c);
    if (strcmp(ev, "connection.update") == 0)
        return wh__native_connection(s, c);
    if (strcmp(ev, "qrcode.updated") == 0)
        return wh__native_qr(s, c);
    if (strcmp(ev, "presence.update") == 0)
        return wh__native_presence(s, c);
    return SQLITE_OK;
}

/* ---- outcomes ------------------------------------------------------------------------------- */

/* Inserts one facts row. fields is serialised here. */
static int wh__fact_put(wh_store_t *s, const wh_work_item_t *it, const char *kind,
                        const json_t *fields, int64_t now, int *status)
{
    const char *txt;
    size_t len;
    if ((*status = wh__dump(s, fields, 0, &txt, &len)) != WH_OK)
        return SQLITE_OK;
    sqlite3_stmt *st = s->ws[WH__WS_FACT_PUT];
    wh__bind_id(st, 1, !it->is_timer, it->id);
    wh__bind_text(st, 2, it->instance);
    wh__bind_text(st, 3, wh__nonempty(it->contact_key));
    wh__bind_text(st, 4, kind);
    sqlite3_bind_text64(st, 5, txt, len, SQLITE_STATIC, SQLITE_UTF8);
    sqlite3_bind_int64(st, 6, now);
    return wh__exec(st);
}

static int wh__apply_timers(wh_store_t *s, const wh_work_item_t *it, const char *ck,
                            const wh_outcome_t *o, int64_t now, int *status, int *wake)
{
    size_t i;
    json_t *t;
    int rc;
    json_array_foreach(wh_outcome_cancelled(o), i, t) {
        const char *name = wh__nonempty(json_string_value(t));
        if (name == NULL) {
            *status = WH_EINVAL;
            return SQLITE_OK;
        }
        sqlite3_stmt *st = s->ws[WH__WS_TIMER_DEL_NAME];
        wh__bind_text(st, 1, it->instance);
        wh__bind_text(st, 2, ck);
        wh__bind_text(st, 3, name);
        if ((rc = wh__exec(st)) != SQLITE_OK)
            return rc;
    }
    json_array_foreach(wh_outcome_timers(o), i, t) {
        const char *name = wh__jstr(t, "name");
        int ok;
        int64_t due = wh__jint(t, "due_at", &ok);
        const json_t *payload = json_object_get(t, "payload");
        if (name == NULL || !ok || (payload != NULL && !json_is_object(payload) &&
                                    !json_is_null(payload))) {
            *status = WH_EINVAL;
            return SQLITE_OK;
        }
        sqlite3_stmt *st = s->ws[WH__WS_TIMER_DEL_NAME];
        wh__bind_text(st, 1, it->instance);
        wh__bind_text(st, 2, ck);
        wh__bind_text(st, 3, name);
        if ((rc = wh__exec(st)) != SQLITE_OK)
            return rc;
        st = s->ws[WH__WS_TIMER_PUT];
        if (json_is_object(payload)) {
            const char *txt;
            size_t len;
            if ((*status = wh__dump(s, payload, 0, &txt, &len)) != WH_OK)
                return SQLITE_OK;
            sqlite3_bind_text64(st, 5, txt, len, SQLITE_STATIC, SQLITE_UTF8);
        } else {
            sqlite3_bind_null(st, 5);
        }
        wh__bind_text(st, 1, it->instance);
        wh__bind_text(st, 2, ck);
        wh__bind_text(st, 3, name);
        sqlite3_bind_int64(st, 4, due);
        sqlite3_bind_int64(st, 6, now);
        if ((rc = wh__exec(st)) != SQLITE_OK)
            return rc;
        *wake = 1;
    }
    return SQLITE_OK;
}

/* Applies a DONE run's outcome: state, timers, outbox, facts, metrics. */
static int wh__apply_outcome(wh_store_t *s, const wh_work_item_t *it, const wh_outcome_t *o,
                             int64_t now, int *status, int *wake)
{
    const char *ck = it->contact_key != NULL ? it->contact_key : ""; /* '' = instance-level */
    const char *txt;
    size_t len, i;
    json_t *v;
    int rc;

    if (o->actions == NULL || o->timers == NULL || o->cancelled == NULL || o->facts == NULL ||
        o->metrics == NULL) {
        *status = WH_EINVAL; /* not initialised with wh_outcome_init */
        return SQLITE_OK;
    }
    int change = wh_outcome_state_change(o);
    if (change == WH_STATE_SET) {
        if (!json_is_object(o->state)) {
            *status = WH_EINVAL;
            return SQLITE_OK;
        }
        if ((*status = wh__dump(s, o->state, 0, &txt, &len)) != WH_OK)
            return SQLITE_OK;
        sqlite3_stmt *st = s->ws[WH__WS_STATE_PUT];
        wh__bind_text(st, 1, it->instance);
        wh__bind_text(st, 2, ck);
        sqlite3_bind_text64(st, 3, txt, len, SQLITE_STATIC, SQLITE_UTF8);
        sqlite3_bind_int64(st, 4, now);
        if ((rc = wh__exec(st)) != SQLITE_OK)
            return rc;
    } else if (change == WH_STATE_CLEARED) {
        sqlite3_stmt *st = s->ws[WH__WS_STATE_DEL];
        wh__bind_text(st, 1, it->instance);
        wh__bind_text(st, 2, ck);
        if ((rc = wh__exec(st)) != SQLITE_OK)
            return rc;
    }

    if ((rc = wh__apply_timers(s, it, ck, o, now, status, wake)) != SQLITE_OK || *status != WH_OK)
        return rc;

    json_array_foreach(wh_outcome_actions(o), i, v) {
        const char *type = wh__jstr(v, "type");
        const char *target = type != NULL ? wh__action_target(type) : NULL;
        if (target == NULL) {
            *status = WH_EINVAL;
            return SQLITE_OK;
        }
        if ((*status = wh__dump(s, v, 0, &txt, &len)) != WH_OK)
            return SQLITE_OK;
        sqlite3_stmt *st = s->ws[WH__WS_OUTBOX_PUT];
        wh__bind_id(st, 1, !it->is_timer, it->id);
        wh__bind_text(st, 2, it->instance);
        wh__bind_text(st, 3, ck);
        wh__bind_text(st, 4, target);
        wh__bind_text(st, 5, type);
        sqlite3_bind_text64(st, 6, txt, len, SQLITE_STATIC, SQLITE_UTF8);
        sqlite3_bind_int64(st, 7, now);
        if ((rc = wh__exec(st)) != SQLITE_OK)
            return rc;
    }

    json_array_foreach(wh_outcome_facts(o), i, v) {
        const char *kind = wh__jstr(v, "kind");
        const json_t *fields = json_object_get(v, "fields");
        if (kind == NULL || (fields != NULL && !json_is_object(fields))) {
            *status = WH_EINVAL;
            return SQLITE_OK;
        }
        json_t *empty = fields == NULL ? json_object() : NULL;
        rc = wh__fact_put(s, it, kind, fields != NULL ? fields : empty, now, status);
        json_decref(empty);
        if (rc != SQLITE_OK || *status != WH_OK)
            return rc;
    }

    json_array_foreach(wh_outcome_metrics(o), i, v) {
        const char *name = wh__jstr(v, "name");
        const json_t *labels = json_object_get(v, "labels");
        int ok;
        int64_t n = wh__jint(v, "value", &ok);
        if (!ok && json_object_get(v, "value") == NULL) {
            n = 1;
            ok = 1;
        }
        if (name == NULL || !ok || (labels != NULL && !json_is_object(labels) &&
                                    !json_is_null(labels))) {
            *status = WH_EINVAL;
            return SQLITE_OK;
        }
        /* Sorted keys: the same labels always make the same row. */
        if (json_is_object(labels)) {
            if ((*status = wh__dump(s, labels, JSON_SORT_KEYS, &txt, &len)) != WH_OK)
                return SQLITE_OK;
        } else {
            txt = "{}";
            len = 2;
        }
        sqlite3_stmt *st = s->ws[WH__WS_METRIC_ADD];
        wh__bind_text(st, 1, name);
        sqlite3_bind_text64(st, 2, txt, len, SQLITE_STATIC, SQLITE_UTF8);
        sqlite3_bind_int64(st, 3, n);
        if ((rc = wh__exec(st)) != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

static int wh__apply_event(wh_store_t *s, const wh_work_commit_t *c, int64_t now, int *status,
                           int *wake)
{
    const wh_work_item_t *it = c->item;
    sqlite3_stmt *st;
    switch (c->status) {
    case WH_WORK_DONE:
        st = s->ws[WH__WS_EV_DONE];
        sqlite3_bind_int64(st, 2, now);
        wh__bind_text(st, 3, c->script_version);
        break;
    case WH_WORK_RETRY:
        st = s->ws[WH__WS_EV_RETRY];
        wh__bind_text(st, 2, c->error);
        sqlite3_bind_int64(st, 3, c->next_attempt_at > 0 ? c->next_attempt_at : now);
        wh__bind_text(st, 4, c->script_version);
        break;
    case WH_WORK_DEAD:
        st = s->ws[WH__WS_EV_DEAD];
        wh__bind_text(st, 2, c->error);
        sqlite3_bind_int64(st, 3, now);
        wh__bind_text(st, 4, c->script_version);
        break;
    default:
        *status = WH_EINVAL;
        return SQLITE_OK;
    }
    sqlite3_bind_int64(st, 1, it->id);
    int rc = wh__exec(st);
    if (rc != SQLITE_OK)
        return rc;
    if (sqlite3_changes(s->db) == 0) {
        *status = WH_ENOTFOUND; /* unknown, or already decided: exactly one decision per event */
        return SQLITE_OK;
    }
    if (c->status == WH_WORK_RETRY)
        *wake = 1;
    if (c->status == WH_WORK_DONE && c->outcome != NULL)
        return wh__apply_outcome(s, it, c->outcome, now, status, wake);
    return SQLITE_OK;
}

static int wh__apply_timer(wh_store_t *s, const wh_work_commit_t *c, int64_t now, int *status,
                           int *wake)
{
    const wh_work_item_t *it = c->item;
    sqlite3_stmt *st;
    int rc;
    if (c->status == WH_WORK_RETRY) {
        st = s->ws[WH__WS_TIMER_RETRY];
        sqlite3_bind_int64(st, 1, it->id);
        sqlite3_bind_int64(st, 2, it->received_at);
        sqlite3_bind_int64(st, 3, c->next_attempt_at > 0 ? c->next_attempt_at : now);
        wh__bind_text(st, 4, c->error);
        *wake = 1;
        return wh__exec(st); /* a timer replaced meanwhile is left alone */
    }
    if (c->status != WH_WORK_DONE && c->status != WH_WORK_DEAD) {
        *status = WH_EINVAL;
        return SQLITE_OK;
    }
    /* Only this very timer: one replaced meanwhile has another id and due time. */
    st = s->ws[WH__WS_TIMER_DEL_ITEM];
    sqlite3_bind_int64(st, 1, it->id);
    sqlite3_bind_int64(st, 2, it->received_at);
    if ((rc = wh__exec(st)) != SQLITE_OK)
        return rc;
    if (c->status == WH_WORK_DONE)
        return c->outcome != NULL ? wh__apply_outcome(s, it, c->outcome, now, status, wake)
                                  : SQLITE_OK;
    json_t *f = json_pack("{s:s,s:s?}", "name", it->timer_name != NULL ? it->timer_name : "",
                          "error", c->error);
    if (f == NULL) {
        *status = WH_ENOMEM;
        return SQLITE_OK;
    }
    rc = wh__fact_put(s, it, "timer_dead", f, now, status);
    json_decref(f);
    return rc;
}

int wh__work_apply(wh_store_t *s, wh_work_commit_t *c, int64_t now, int *status, int *wake)
{
    const wh_work_item_t *it = c->item;
    int rc = SQLITE_OK;
    *status = WH_OK;
    if (it->instance == NULL || (!it->is_timer && it->event == NULL)) {
        *status = WH_EINVAL;
        return SQLITE_OK;
    }
    if (!it->is_timer && c->msg != NULL)
        rc = wh__native(s, c, now);
    if (rc == SQLITE_OK)
        rc = it->is_timer ? wh__apply_timer(s, c, now, status, wake)
                          : wh__apply_event(s, c, now, status, wake);
    if (rc != SQLITE_OK && wh__store_is_item_error(s->db, rc)) {
        *status = WH_EINVAL;
        rc = SQLITE_OK;
    }
    if (s->dump_cap > WH__DUMP_KEEP) {
        free(s->dump);
        s->dump = NULL;
        s->dump_cap = 0;
    }
    return rc;
}

/* ---- merges and operator tasks -------------------------------------------------------------- */

int wh__merge_note(wh_store_t *s, const char *instance, const char *lid, const char *phone,
                   int64_t now)
{
    sqlite3_stmt *st = s->ws[WH__WS_MERGE_NOTE];
    wh__bind_text(st, 1, instance);
    wh__bind_text(st, 2, lid);
    wh__bind_text(st, 3, phone);
    sqlite3_bind_int64(st, 4, now);
    return wh__exec(st);
}

/* Reads a state row into a new string (*out NULL when there is none). */
static int wh__state_text(wh_store_t *s, const char *instance, const char *key, char **out)
{
    sqlite3_stmt *st = s->ws[WH__WS_STATE_GET];
    *out = NULL;
    wh__bind_text(st, 1, instance);
    wh__bind_text(st, 2, key);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        *out = strdup(t != NULL ? t : "");
        rc = *out != NULL ? SQLITE_OK : SQLITE_NOMEM;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

/* The phone contact keeps its state; top-level keys only the LID contact had are added. */
static int wh__merge_state(wh_store_t *s, const char *instance, const char *from, const char *to,
                           int64_t now, int *status)
{
    char *from_txt = NULL, *to_txt = NULL;
    json_t *fj = NULL, *tj = NULL;
    sqlite3_stmt *st;
    int rc = wh__state_text(s, instance, from, &from_txt);
    if (rc != SQLITE_OK || from_txt == NULL)
        goto out;
    if ((rc = wh__state_text(s, instance, to, &to_txt)) != SQLITE_OK)
        goto out;
    if (to_txt == NULL) {
        st = s->ws[WH__WS_MG_STATE_MOVE];
        wh__bind_text(st, 1, instance);
        wh__bind_text(st, 2, from);
        wh__bind_text(st, 3, to);
        sqlite3_bind_int64(st, 4, now);
        rc = wh__exec(st);
        goto out;
    }
    fj = json_loads(from_txt, 0, NULL);
    tj = json_loads(to_txt, 0, NULL);
    if (json_is_object(fj) && json_is_object(tj)) {
        const char *txt;
        size_t len;
        if (json_object_update_missing(tj, fj) != 0) {
            *status = WH_ENOMEM;
            goto out;
        }
        if ((*status = wh__dump(s, tj, 0, &txt, &len)) != WH_OK)
            goto out;
        st = s->ws[WH__WS_STATE_PUT];
        wh__bind_text(st, 1, instance);
        wh__bind_text(st, 2, to);
        sqlite3_bind_text64(st, 3, txt, len, SQLITE_STATIC, SQLITE_UTF8);
        sqlite3_bind_int64(st, 4, now);
        if ((rc = wh__exec(st)) != SQLITE_OK)
            goto out;
    } else {
        wh_log(WH_LOG_WARN, "contact merge: unreadable state, keeping the phone contact's",
               "{s:s,s:s,s:s}", "instance", instance, "from", from, "to", to);
    }
    st = s->ws[WH__WS_STATE_DEL];
    wh__bind_text(st, 1, instance);
    wh__bind_text(st, 2, from);
    rc = wh__exec(st);
out:
    json_decref(fj);
    json_decref(tj);
    free(from_txt);
    free(to_txt);
    return rc;
}

static int wh__merge_apply(wh_store_t *s, const wh__task_t *t, int64_t now, int *status, int *wake)
{
    int rc = wh__merge_state(s, t->instance, t->from_key, t->to_key, now, status);
    if (rc != SQLITE_OK || *status != WH_OK)
        return rc;
    /* In order: clashing timers go before the move, the contact merge before the drop. */
    static const int steps[] = {WH__WS_MG_TIMER_CLASH,   WH__WS_MG_TIMER_MOVE,
                                WH__WS_MG_FACTS,         WH__WS_MG_OUTBOX,
                                WH__WS_MG_MESSAGES,      WH__WS_MG_CONTACT_MERGE,
                                WH__WS_MG_CONTACT_DROP,  WH__WS_MG_CONTACT_MOVE,
                                WH__WS_MG_DONE};
    for (size_t i = 0; i < WH_ARRAY_SIZE(steps); i++) {
        sqlite3_stmt *st = s->ws[steps[i]];
        wh__bind_text(st, 1, t->instance);
        wh__bind_text(st, 2, t->from_key);
        wh__bind_text(st, 3, t->to_key);
        if (sqlite3_bind_parameter_count(st) >= 4)
            sqlite3_bind_int64(st, 4, now);
        if ((rc = wh__exec(st)) != SQLITE_OK)
            return rc;
    }
    *wake = 1; /* timers moved partitions, and the phone contact's events are free to run */
    return SQLITE_OK;
}

static int wh__retry_apply(wh_store_t *s, const wh__task_t *t, int *status, int *wake)
{
    sqlite3_stmt *st = s->ws[WH__WS_EV_REQUEUE];
    sqlite3_bind_int64(st, 1, t->id);
    int rc = wh__exec(st);
    if (rc != SQLITE_OK)
        return rc;
    if (sqlite3_changes(s->db) > 0) {
        *wake = 1;
        return SQLITE_OK;
    }
    st = s->ws[WH__WS_EV_EXISTS];
    sqlite3_bind_int64(st, 1, t->id);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        *status = WH_EINVAL; /* done, or pending without a failure */
    else if (rc == SQLITE_DONE)
        *status = WH_ENOTFOUND;
    else
        return rc;
    return SQLITE_OK;
}

int wh__task_apply(wh_store_t *s, wh__task_t *t, int64_t now, int *status, int *wake)
{
    *status = WH_OK;
    int rc;
    switch (t->op) {
    case WH__TASK_RETRY:
        rc = wh__retry_apply(s, t, status, wake);
        break;
    case WH__TASK_MERGE:
        rc = wh__merge_apply(s, t, now, status, wake);
        break;
    default:
        *status = WH_EINVAL;
        return SQLITE_OK;
    }
    if (rc != SQLITE_OK && wh__store_is_item_error(s->db, rc)) {
        *status = WH_EINVAL;
        rc = SQLITE_OK;
    }
    return rc;
}

int wh_store_merge_contact(wh_store_t *s, const char *instance, const char *from_key,
                           const char *to_key)
{
    if (s == NULL || instance == NULL || wh__nonempty(from_key) == NULL ||
        wh__nonempty(to_key) == NULL || strcmp(from_key, to_key) == 0)
        return WH_EINVAL;
    wh__task_t t = {.op = WH__TASK_MERGE, .instance = instance, .from_key = from_key,
                    .to_key = to_key};
    return wh__store_sync(s, &t);
}

int wh_store_event_retry(wh_store_t *s, int64_t id)
{
    if (s == NULL)
        return WH_EINVAL;
    wh__task_t t = {.op = WH__TASK_RETRY, .id = id};
    return wh__store_sync(s, &t);
}

/* ---- partitions and the reader -------------------------------------------------------------- */

static uint32_t wh__fnv1a(uint32_t h, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h;
}

unsigned wh_store_partition(const char *instance, const char *contact_key, unsigned nparts)
{
    if (nparts <= 1)
        return 0;
    uint32_t h = 2166136261u;
    if (wh__nonempty(contact_key) != NULL) {
        h = wh__fnv1a(h, contact_key);
    } else {
        h = wh__fnv1a(h, "@");
        h = wh__fnv1a(h, instance != NULL ? instance : "");
    }
    return (unsigned)(h % nparts);
}

/* wh_part(instance, contact_key, nparts): wh_store_partition for SQL. */
static void wh__sql_part(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    const char *instance = (const char *)sqlite3_value_text(argv[0]);
    const char *key = sqlite3_value_type(argv[1]) == SQLITE_NULL
                          ? NULL
                          : (const char *)sqlite3_value_text(argv[1]);
    sqlite3_int64 n = sqlite3_value_int64(argv[2]);
    unsigned nparts = n > 0 && n <= (sqlite3_int64)0xffffffffu ? (unsigned)n : 1;
    sqlite3_result_int64(ctx, (sqlite3_int64)wh_store_partition(instance, key, nparts));
}

enum {
    WH__RS_BEGIN,
    WH__RS_END,
    WH__RS_EVENTS,
    WH__RS_TIMERS,
    WH__RS_MERGE_TO,
    WH__RS_DUE_EVENT,
    WH__RS_DUE_TIMER,
    WH__RS_STATE,
    WH__RS_ORIGIN,
    WH__RS_NEXT_MERGE,
    WH__RS_COUNT
};

static const char *const wh__rs_sql[WH__RS_COUNT] = {
    [WH__RS_BEGIN] = "BEGIN",
    [WH__RS_END] = "COMMIT",
    /* Id order through the (status, id) index; the partition test runs per row. */
    [WH__RS_EVENTS] = "SELECT id, received_at, instance, event, contact_key, body, attempts,"
                      " next_attempt_at FROM events INDEXED BY events_status"
                      " WHERE status = 'pending' AND wh_part(instance, contact_key, ?2) = ?1"
                      " ORDER BY id LIMIT ?3",
    [WH__RS_TIMERS] = "SELECT id, due_at, instance, contact_key, name, payload, attempts"
                      " FROM timers WHERE due_at <= ?3"
                      " AND wh_part(instance, contact_key, ?2) = ?1 ORDER BY due_at, id"
                      " LIMIT ?4",
    [WH__RS_MERGE_TO] = "SELECT 1 FROM contact_merges WHERE instance = ?1 AND to_key = ?2",
    /* Only a contact's oldest pending event can be what it waits for, and a contact that
     * waits for a merge is woken by the merge. */
    [WH__RS_DUE_EVENT] =
        "SELECT e.next_attempt_at FROM events AS e INDEXED BY events_retry"
        " WHERE e.status = 'pending' AND e.next_attempt_at > 0"
        " AND wh_part(e.instance, e.contact_key, ?2) = ?1"
        " AND NOT EXISTS(SELECT 1 FROM events AS p WHERE p.status = 'pending'"
        "  AND p.instance = e.instance AND p.contact_key IS e.contact_key AND p.id < e.id)"
        " AND NOT EXISTS(SELECT 1 FROM contact_merges AS m WHERE m.instance = e.instance"
        "  AND m.to_key = e.contact_key)"
        " ORDER BY e.next_attempt_at LIMIT 1",
    /* A timer of a contact with pending events runs after them: those events wake us. */
    [WH__RS_DUE_TIMER] =
        "SELECT t.due_at FROM timers AS t WHERE wh_part(t.instance, t.contact_key, ?2) = ?1"
        " AND NOT EXISTS(SELECT 1 FROM events AS p WHERE p.status = 'pending'"
        "  AND p.instance = t.instance AND p.contact_key IS nullif(t.contact_key, ''))"
        " AND NOT EXISTS(SELECT 1 FROM contact_merges AS m WHERE m.instance = t.instance"
        "  AND m.to_key = t.contact_key)"
        " ORDER BY t.due_at LIMIT 1",
    [WH__RS_STATE] = "SELECT state FROM contact_state WHERE instance = ?1 AND contact_key = ?2",
    [WH__RS_ORIGIN] = "SELECT origin FROM messages WHERE instance = ?1 AND wa_id = ?2"
                      " AND origin = 'wahook'",
    [WH__RS_NEXT_MERGE] =
        "SELECT m.instance, m.from_key, m.to_key FROM contact_merges AS m"
        " WHERE wh_part(m.instance, m.from_key, ?2) = ?1"
        " AND NOT EXISTS(SELECT 1 FROM events AS p WHERE p.status = 'pending'"
        "  AND p.instance = m.instance AND p.contact_key = m.from_key)"
        " ORDER BY m.learned_at, m.from_key LIMIT 1",
};

struct wh_store_reader {
    sqlite3 *db;
    sqlite3_stmt *st[WH__RS_COUNT];
};

void wh_store_reader_close(wh_store_reader_t *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < WH__RS_COUNT; i++)
        sqlite3_finalize(r->st[i]);
    sqlite3_close(r->db);
    free(r);
}

int wh_store_reader_open(wh_store_reader_t **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    wh_store_reader_t *r = calloc(1, sizeof(*r));
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
    if (sqlite3_create_function_v2(r->db, "wh_part", 3,
                                   SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, NULL,
                                   wh__sql_part, NULL, NULL, NULL) != SQLITE_OK) {
        wh__store_set_err(err, errlen, "cannot register wh_part: %s", sqlite3_errmsg(r->db));
        wh_store_reader_close(r);
        return WH_EIO;
    }
    for (size_t i = 0; i < WH__RS_COUNT; i++) {
        if (sqlite3_prepare_v3(r->db, wh__rs_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &r->st[i],
                               NULL) != SQLITE_OK) {
            wh__store_set_err(err, errlen, "cannot prepare reader statement: %s",
                              sqlite3_errmsg(r->db));
            wh_store_reader_close(r);
            return WH_EIO;
        }
    }
    *out = r;
    return WH_OK;
}

/* The contacts one next_work scan has met: instance + '\x1f' + contact key ("" for the
 * instance). PENDING: it has pending events in the scan; BLOCKED: nothing of it may run now. */
enum { WH__K_PENDING = 1, WH__K_BLOCKED = 2 };

typedef struct wh__kent {
    char *key;
    unsigned flags;
} wh__kent_t;

typedef struct wh__kset {
    wh__kent_t *v;
    size_t cap, n;
} wh__kset_t;

static void wh__kset_free(wh__kset_t *k)
{
    for (size_t i = 0; i < k->cap; i++)
        free(k->v[i].key);
    free(k->v);
}

static char *wh__kset_key(const char *instance, const char *ck)
{
    size_t a = strlen(instance), b = ck != NULL ? strlen(ck) : 0;
    char *key = malloc(a + 1 + b + 1);
    if (key == NULL)
        return NULL;
    memcpy(key, instance, a);
    key[a] = '\x1f';
    if (b > 0)
        memcpy(key + a + 1, ck, b);
    key[a + 1 + b] = '\0';
    return key;
}

/* Finds key (taking ownership of it) or adds it; *added says which. NULL when out of memory. */
static wh__kent_t *wh__kset_get(wh__kset_t *k, char *key, int *added)
{
    *added = 0;
    if ((k->n + 1) * 2 > k->cap) {
        size_t ncap = k->cap > 0 ? k->cap * 2 : 64;
        wh__kent_t *nv = calloc(ncap, sizeof(*nv));
        if (nv == NULL) {
            free(key);
            return NULL;
        }
        for (size_t i = 0; i < k->cap; i++) {
            if (k->v[i].key == NULL)
                continue;
            size_t j = wh__fnv1a(2166136261u, k->v[i].key) & (ncap - 1);
            while (nv[j].key != NULL)
                j = (j + 1) & (ncap - 1);
            nv[j] = k->v[i];
        }
        free(k->v);
        k->v = nv;
        k->cap = ncap;
    }
    size_t j = wh__fnv1a(2166136261u, key) & (k->cap - 1);
    while (k->v[j].key != NULL) {
        if (strcmp(k->v[j].key, key) == 0) {
            free(key);
            return &k->v[j];
        }
        j = (j + 1) & (k->cap - 1);
    }
    k->v[j].key = key;
    k->v[j].flags = 0;
    k->n++;
    *added = 1;
    return &k->v[j];
}

/* 1 when a merge into (instance, ck) waits: the phone contact's work holds until it is done. */
static int wh__merge_pending(wh_store_reader_t *r, const char *instance, const char *ck, int *rc)
{
    *rc = SQLITE_OK;
    if (ck == NULL)
        return 0;
    sqlite3_stmt *st = r->st[WH__RS_MERGE_TO];
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, ck, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (s == SQLITE_ROW)
        return 1;
    if (s != SQLITE_DONE)
        *rc = s;
    return 0;
}

/* The key-set entry of a contact, checking for a waiting merge when it is first met. */
static wh__kent_t *wh__contact_entry(wh_store_reader_t *r, wh__kset_t *ks, const char *instance,
                                     const char *ck, int *rc)
{
    int added;
    *rc = SQLITE_OK;
    char *key = wh__kset_key(instance, ck);
    wh__kent_t *e = key != NULL ? wh__kset_get(ks, key, &added) : NULL;
    if (e == NULL) {
        *rc = SQLITE_NOMEM;
        return NULL;
    }
    if (added && wh__merge_pending(r, instance, ck, rc))
        e->flags |= WH__K_BLOCKED;
    return *rc == SQLITE_OK ? e : NULL;
}

static char *wh__col_dup(sqlite3_stmt *st, int i, int *oom)
{
    const char *t = (const char *)sqlite3_column_text(st, i);
    if (t == NULL)
        return NULL;
    char *d = strdup(t);
    if (d == NULL)
        *oom = 1;
    return d;
}

static void wh__item_clear(wh_work_item_t *it)
{
    free(it->instance);
    free(it->event);
    free(it->contact_key);
    free(it->body);
    free(it->timer_name);
    memset(it, 0, sizeof(*it));
}

void wh_store_work_free(wh_work_item_t *items, size_t n)
{
    if (items == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        wh__item_clear(&items[i]);
}

int wh_store_next_work(wh_store_reader_t *r, unsigned part, unsigned nparts, int64_t now_ms,
                       wh_work_item_t *out, size_t max, size_t *n, char *err, size_t errlen)
{
    wh__kset_t ks = {0};
    int rc, oom = 0, ret = WH_EIO;
    size_t filled = 0, scanned = 0;
    size_t cap = max * 4 + WH__SCAN_EXTRA;
    if (nparts == 0)
        nparts = 1;
    *n = 0;
    if (max == 0)
        return WH_OK;

    /* One read transaction: events and timers from the same snapshot. */
    if ((rc = wh__store_run(r->st[WH__RS_BEGIN])) != SQLITE_OK)
        goto fail;
    sqlite3_stmt *st = r->st[WH__RS_EVENTS];
    sqlite3_bind_int64(st, 1, part);
    sqlite3_bind_int64(st, 2, nparts);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)cap);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        scanned++;
        const char *instance = (const char *)sqlite3_column_text(st, 2);
        const char *ck = (const char *)sqlite3_column_text(st, 4);
        if (instance == NULL)
            continue;
        wh__kent_t *e = wh__contact_entry(r, &ks, instance, wh__nonempty(ck), &rc);
        if (e == NULL)
            break;
        e->flags |= WH__K_PENDING;
        if (e->flags & WH__K_BLOCKED)
            continue; /* strict FIFO: nothing after the contact's waiting event */
        if (sqlite3_column_int64(st, 7) > now_ms) {
            e->flags |= WH__K_BLOCKED;
            continue;
        }
        if (filled == max) {
            rc = SQLITE_ROW; /* full: the scan is incomplete, so no timers either */
            break;
        }
        wh_work_item_t *it = &out[filled];
        memset(it, 0, sizeof(*it));
        it->id = sqlite3_column_int64(st, 0);
        it->received_at = sqlite3_column_int64(st, 1);
        it->instance = wh__col_dup(st, 2, &oom);
        it->event = wh__col_dup(st, 3, &oom);
        it->contact_key = ck != NULL && ck[0] != '\0' ? wh__col_dup(st, 4, &oom) : NULL;
        it->body = wh__col_dup(st, 5, &oom);
        it->attempts = sqlite3_column_int(st, 6);
        filled++;
        if (oom)
            break;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (oom || rc == SQLITE_NOMEM) {
        ret = WH_ENOMEM;
        goto fail;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        goto fail;

    if (rc == SQLITE_DONE && scanned < cap && filled < max) {
        st = r->st[WH__RS_TIMERS];
        sqlite3_bind_int64(st, 1, part);
        sqlite3_bind_int64(st, 2, nparts);
        sqlite3_bind_int64(st, 3, now_ms);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)cap);
        while (filled < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            const char *instance = (const char *)sqlite3_column_text(st, 2);
            const char *ck = wh__nonempty((const char *)sqlite3_column_text(st, 3));
            if (instance == NULL)
                continue;
            int crc;
            wh__kent_t *e = wh__contact_entry(r, &ks, instance, ck, &crc);
            if (e == NULL) {
                rc = crc;
                break;
            }
            if (e->flags & (WH__K_PENDING | WH__K_BLOCKED))
                continue; /* the contact's events first */
            wh_work_item_t *it = &out[filled];
            memset(it, 0, sizeof(*it));
            it->id = sqlite3_column_int64(st, 0);
            it->is_timer = 1;
            it->received_at = sqlite3_column_int64(st, 1);
            it->instance = wh__col_dup(st, 2, &oom);
            it->event = strdup("timer");
            oom |= it->event == NULL;
            it->contact_key = ck != NULL ? wh__col_dup(st, 3, &oom) : NULL;
            it->timer_name = wh__col_dup(st, 4, &oom);
            it->body = wh__col_dup(st, 5, &oom);
            it->attempts = sqlite3_column_int(st, 6);
            filled++;
            if (oom)
                break;
        }
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (oom || rc == SQLITE_NOMEM) {
            ret = WH_ENOMEM;
            goto fail;
        }
        if (rc != SQLITE_DONE && rc != SQLITE_ROW)
            goto fail;
    }
    wh__store_run(r->st[WH__RS_END]);
    wh__kset_free(&ks);
    *n = filled;
    return WH_OK;

fail:
    wh__store_set_err(err, errlen, ret == WH_ENOMEM ? "out of memory" : "cannot read work: %s",
                      sqlite3_errmsg(r->db));
    if (!sqlite3_get_autocommit(r->db))
        wh__store_run(r->st[WH__RS_END]);
    wh_store_work_free(out, filled);
    wh__kset_free(&ks);
    return ret;
}

int64_t wh_store_next_due(wh_store_reader_t *r, unsigned part, unsigned nparts)
{
    int64_t due = INT64_MAX;
    if (nparts == 0)
        nparts = 1;
    const int which[] = {WH__RS_DUE_EVENT, WH__RS_DUE_TIMER};
    for (size_t i = 0; i < WH_ARRAY_SIZE(which); i++) {
        sqlite3_stmt *st = r->st[which[i]];
        sqlite3_bind_int64(st, 1, part);
        sqlite3_bind_int64(st, 2, nparts);
        if (sqlite3_step(st) == SQLITE_ROW) {
            int64_t t = sqlite3_column_int64(st, 0);
            if (t < due)
                due = t;
        }
        sqlite3_reset(st);
    }
    return due;
}

int wh_store_state_get(wh_store_reader_t *r, const char *instance, const char *contact_key,
                       json_t **state)
{
    *state = NULL;
    if (r == NULL || instance == NULL)
        return WH_EINVAL;
    sqlite3_stmt *st = r->st[WH__RS_STATE];
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, contact_key != NULL ? contact_key : "", -1, SQLITE_STATIC);
    int ret = WH_OK;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        json_t *j = t != NULL ? json_loads(t, 0, NULL) : NULL;
        if (json_is_object(j)) {
            *state = j;
        } else {
            json_decref(j);
            ret = WH_EIO; /* the store wrote it as an object: this is damage */
        }
    } else if (rc != SQLITE_DONE) {
        ret = WH_EIO;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

int wh_store_message_origin(wh_store_reader_t *r, const char *instance, const char *wa_id,
                            char *out, size_t outlen)
{
    if (r == NULL || instance == NULL || wa_id == NULL || out == NULL || outlen == 0)
        return WH_EINVAL;
    out[0] = '\0';
    sqlite3_stmt *st = r->st[WH__RS_ORIGIN];
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, wa_id, -1, SQLITE_STATIC);
    int ret = WH_ENOTFOUND;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *o = (const char *)sqlite3_column_text(st, 0);
        size_t len = o != NULL ? strlen(o) : 0;
        if (len >= outlen) {
            ret = WH_EINVAL;
        } else {
            memcpy(out, o != NULL ? o : "", len + 1);
            ret = WH_OK;
        }
    } else if (rc != SQLITE_DONE) {
        ret = WH_EIO;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

int wh_store_pending_sends(wh_store_reader_t *r, const char *instance, const char *contact_key,
                           int64_t before_ms, int64_t *ids, size_t max, size_t *n)
{
    *n = 0;
    if (r == NULL || instance == NULL || contact_key == NULL)
        return WH_EINVAL;
    sqlite3_stmt *st = NULL;
    /* Rare (echoes of outgoing messages only): prepared per call rather than kept. */
    if (sqlite3_prepare_v2(r->db,
                           "SELECT id FROM outbox WHERE target = 'evolution' AND instance = ?1"
                           " AND contact_key = ?2 AND status = 'pending' AND created_at <= ?3"
                           " ORDER BY id LIMIT ?4",
                           -1, &st, NULL) != SQLITE_OK) {
        sqlite3_finalize(st);
        return WH_EIO;
    }
    sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, contact_key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, before_ms);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)max);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && *n < max)
        ids[(*n)++] = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? WH_OK : WH_EIO;
}

/* Copies a column into a caller's buffer; 0 when it does not fit. */
static int wh__col_copy(sqlite3_stmt *st, int i, char *out, size_t outlen)
{
    const char *t = (const char *)sqlite3_column_text(st, i);
    size_t len = t != NULL ? strlen(t) : 0;
    if (out == NULL || len >= outlen)
        return 0;
    memcpy(out, t != NULL ? t : "", len + 1);
    return 1;
}

int wh_store_next_merge(wh_store_reader_t *r, unsigned part, unsigned nparts, char *instance,
                        size_t ilen, char *from_key, size_t flen, char *to_key, size_t tlen)
{
    if (r == NULL)
        return WH_EINVAL;
    sqlite3_stmt *st = r->st[WH__RS_NEXT_MERGE];
    sqlite3_bind_int64(st, 1, part);
    sqlite3_bind_int64(st, 2, nparts > 0 ? nparts : 1);
    int ret = WH_ENOTFOUND;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        ret = wh__col_copy(st, 0, instance, ilen) && wh__col_copy(st, 1, from_key, flen) &&
                      wh__col_copy(st, 2, to_key, tlen)
                  ? WH_OK
                  : WH_EINVAL;
    } else if (rc != SQLITE_DONE) {
        ret = WH_EIO;
    }
    sqlite3_reset(st);
    return ret;
}

/* ---- read-only views for the CLI and health checks ------------------------------------------ */

int wh_store_event_show(const char *path, int64_t id,
                        int (*cb)(const wh_event_detail_t *d, void *ctx), void *ctx, char *err,
                        size_t errlen)
{
    if (cb == NULL)
        return WH_EINVAL;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int ret = wh__store_open_ro(path, &db, err, errlen);
    if (ret != WH_OK)
        return ret;
    ret = WH_EIO;
    if (sqlite3_prepare_v2(db,
                           "SELECT id, received_at, instance, event, dedup_id, contact_key, status,"
                           " body, attempts, last_error, script_version, processed_at,"
                           " next_attempt_at FROM events WHERE id = ?1",
                           -1, &st, NULL) != SQLITE_OK) {
        wh__store_set_err(err, errlen, "cannot read event: %s", sqlite3_errmsg(db));
        goto done;
    }
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        wh_event_detail_t d = {
            .row =
                {
                    .id = sqlite3_column_int64(st, 0),
                    .received_at = sqlite3_column_int64(st, 1),
                    .instance = (const char *)sqlite3_column_text(st, 2),
                    .event = (const char *)sqlite3_column_text(st, 3),
                    .dedup_id = (const char *)sqlite3_column_text(st, 4),
                    .contact_key = (const char *)sqlite3_column_text(st, 5),
                    .status = (const char *)sqlite3_column_text(st, 6),
                    .body = (const char *)sqlite3_column_text(st, 7),
                },
            .attempts = sqlite3_column_int(st, 8),
            .last_error = (const char *)sqlite3_column_text(st, 9),
            .script_version = (const char *)sqlite3_column_text(st, 10),
            .processed_at = sqlite3_column_int64(st, 11),
            .next_attempt_at = sqlite3_column_int64(st, 12),
        };
        cb(&d, ctx);
        ret = WH_OK;
    } else if (rc == SQLITE_DONE) {
        wh__store_set_err(err, errlen, "no event %lld", (long long)id);
        ret = WH_ENOTFOUND;
    } else {
        wh__store_set_err(err, errlen, "cannot read event: %s", sqlite3_errmsg(db));
    }

done:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}

int wh_store_event_counts(const char *path, int64_t *pending, int64_t *done, int64_t *dead)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t counts[3] = {0, 0, 0};
    int ret = wh__store_open_ro(path, &db, NULL, 0);
    if (ret != WH_OK)
        return ret;
    ret = WH_EIO;
    if (sqlite3_prepare_v2(db, "SELECT status, count(*) FROM events GROUP BY status", -1, &st,
                           NULL) != SQLITE_OK)
        goto done;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *status = (const char *)sqlite3_column_text(st, 0);
        int64_t c = sqlite3_column_int64(st, 1);
        if (status == NULL)
            continue;
        if (strcmp(status, "pending") == 0)
            counts[0] = c;
        else if (strcmp(status, "done") == 0)
            counts[1] = c;
        else if (strcmp(status, "dead") == 0)
            counts[2] = c;
    }
    if (rc == SQLITE_DONE) {
        ret = WH_OK;
        if (pending != NULL)
            *pending = counts[0];
        if (done != NULL)
            *done = counts[1];
        if (dead != NULL)
            *dead = counts[2];
    }

done:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}
