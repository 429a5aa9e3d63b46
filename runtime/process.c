/* Processor threads: scan their partition for due work, normalise each event, run its handler in
 * the thread's Lua VM, and commit status, native records, state, timers and actions together. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "wahook/common.h"
#include "wahook/deliver.h"
#include "wahook/log.h"
#include "wahook/lua_vm.h"
#include "wahook/luaconv.h"
#include "wahook/metrics.h"
#include "wahook/process.h"

#define WH__BATCH 64
#define WH__ERR_MAX 4096

struct wh_processors;

typedef struct wh__slot {
    wh_work_commit_t commit;
    wh_outcome_t outcome;
    int outcome_ready;
    json_t *msg;
    char *error;
    char origin[16];
    struct wh__proc *proc;
} wh__slot_t;

/* What this batch knows about a contact: its latest state (from the store or an earlier run of
 * this batch) and whether a failed event now holds back its later events. */
typedef struct wh__contact {
    char *key; /* instance + "\x1f" + contact key */
    json_t *state;
    int loaded;
    int blocked;
} wh__contact_t;

typedef struct wh__proc {
    struct wh_processors *pool;
    unsigned index;
    pthread_t tid;
    wh_store_reader_t *reader;
    wh_lua_vm_t *vm;
    wh_scripts_gen_t *gen;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int woken;         /* under mu */
    size_t outstanding; /* commits not yet reported, under mu */
    int commit_failed;  /* under mu */
} wh__proc_t;

struct wh_processors {
    const wh_config_t *conf;
    wh_store_t *store;
    wh_scripts_t *scripts;
    char *db_path;
    unsigned n;
    wh__proc_t *procs;
    atomic_int stop;
    _Atomic(struct wh_deliverers *) deliverers;
    atomic_long processed, failed, dead, timers, normalize_errors, contact_mismatches;
};

/* ---- helpers shared with `wahook try` ------------------------------------------------------ */

json_t *wh_process_build_event(int64_t id, int64_t received_at, const char *contact_key,
                               const char *body, int attempt)
{
    json_error_t jerr;
    json_t *ev = json_loads(body, JSON_ALLOW_NUL, &jerr);
    if (ev == NULL || !json_is_object(ev)) {
        json_decref(ev);
        return NULL;
    }
    json_object_set_new(ev, "id", json_integer(id));
    json_object_set_new(ev, "received_at", json_integer(received_at));
    json_object_set_new(ev, "contact", contact_key != NULL ? json_string(contact_key) : json_null());
    json_object_set_new(ev, "attempt", json_integer(attempt));
    return ev;
}

int wh_process_normalize(wh_lua_vm_t *vm, json_t *ev, char *err, size_t errlen)
{
    lua_State *L = wh_lua_vm_state(vm);
    int top = lua_gettop(L);
    /* require "lib.normalize" through the sandbox's own require, then call .event(ev). */
    if (lua_getglobal(L, "require") != LUA_TFUNCTION) {
        lua_settop(L, top);
        snprintf(err, errlen, "require is not available");
        return WH_ERR;
    }
    lua_pushliteral(L, "lib.normalize");
    int rc = wh_lua_vm_call(vm, 1, 1, err, errlen);
    if (rc != WH_OK) {
        lua_settop(L, top);
        return rc;
    }
    if (!lua_istable(L, -1) || lua_getfield(L, -1, "event") != LUA_TFUNCTION) {
        lua_settop(L, top);
        snprintf(err, errlen, "lib/normalize.lua must return a table with an event function");
        return WH_EINVAL;
    }
    /* A hostile body may nest deeper than a Lua table can: push it through the VM's
     * protected converter, never outside a protected call. */
    if ((rc = wh_lua_vm_push_json(vm, ev, err, errlen)) != WH_OK) {
        lua_settop(L, top);
        return rc;
    }
    rc = wh_lua_vm_call(vm, 1, 2, err, errlen);
    if (rc != WH_OK) {
        lua_settop(L, top);
        return rc;
    }
    if (lua_isnil(L, -2)) {
        const char *why = lua_tostring(L, -1);
        snprintf(err, errlen, "normalize: %s", why != NULL ? why : "no view for this event");
        lua_settop(L, top);
        return WH_EINVAL;
    }
    json_t *msg = NULL;
    rc = wh_luaconv_to_json(L, -2, "msg", 1024 * 1024, &msg, err, errlen);
    lua_settop(L, top);
    if (rc != WH_OK)
        return rc;
    json_object_set_new(ev, "msg", msg);
    return WH_OK;
}

int64_t wh_process_backoff(int attempts, int64_t base_ms, int64_t max_ms)
{
    if (attempts < 1)
        attempts = 1;
    int64_t wait = base_ms;
    for (int i = 1; i < attempts && wait < max_ms; i++)
        wait *= 2;
    if (wait > max_ms)
        wait = max_ms;
    /* ±20% jitter so that a burst of failures does not retry in lockstep. */
    uint64_t r = ((uint64_t)rand() << 16) ^ (uint64_t)rand();
    int64_t span = wait / 5;
    if (span > 0)
        wait += (int64_t)(r % (uint64_t)(2 * span + 1)) - span;
    return wait < 1 ? 1 : wait;
}

/* ---- one work item ------------------------------------------------------------------------- */

static void wh__on_committed(wh_work_commit_t *c, int status)
{
    wh__slot_t *sl = c->user;
    wh__proc_t *p = sl->proc;
    pthread_mutex_lock(&p->mu);
    if (status != WH_OK)
        p->commit_failed = 1;
    p->outstanding--;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static const char *wh__origin(wh__proc_t *p, const wh_work_item_t *it, json_t *msg, char *buf,
                              size_t len)
{
    json_t *from_me = json_object_get(msg, "from_me");
    if (!json_is_true(from_me))
        return "contact";
    const char *id = json_string_value(json_object_get(msg, "id"));
    if (id != NULL &&
        wh_store_message_origin(p->reader, it->instance, id, buf, len) == WH_OK &&
        strcmp(buf, "wahook") == 0)
        return "wahook";
    /* API sends arrive as send.message, phone-typed ones as messages.upsert with fromMe. */
    return strcmp(it->event, "send.message") == 0 ? "api" : "phone";
}

/* The contact key normalize.lua implies, to detect disagreements with the ingest rule. */
static void wh__check_contact(wh__proc_t *p, const wh_work_item_t *it, json_t *msg)
{
    const char *phone = json_string_value(json_object_get(msg, "phone"));
    const char *lid = json_string_value(json_object_get(msg, "lid"));
    if (phone == NULL && lid == NULL)
        return;
    const char *key = it->contact_key;
    int agree = key != NULL && ((phone != NULL && strcmp(phone, key) == 0) ||
                                (lid != NULL && strcmp(lid, key) == 0) ||
                                /* a LID resolved to its phone through the alias table */
                                (phone == NULL && lid != NULL));
    if (!agree) {
        atomic_fetch_add(&p->pool->contact_mismatches, 1);
        wh_log(WH_LOG_WARN, "normalize.lua and the ingest contact rule disagree", "{s:I,s:s,s:s?,s:s?}",
               "event_id", (json_int_t)it->id, "stored", key != NULL ? key : "(none)", "phone",
               phone, "lid", lid);
    }
}

static json_t *wh__timer_event(const wh_work_item_t *it)
{
    json_t *payload = NULL;
    if (it->body != NULL) {
        json_error_t jerr;
        payload = json_loads(it->body, JSON_DECODE_ANY, &jerr);
    }
    return json_pack("{s:s,s:s,s:s,s:I,s:I,s:o,s:o,s:i}", "event", "timer", "timer",
                     it->timer_name != NULL ? it->timer_name : "", "instance", it->instance, "id",
                     (json_int_t)it->id, "due_at", (json_int_t)it->received_at, "contact",
                     it->contact_key != NULL ? json_string(it->contact_key) : json_null(),
                     "payload", payload != NULL ? payload : json_null(), "attempt",
                     it->attempts + 1);
}

/* 1 when it is the echo of an outgoing message (send.message, or fromMe upsert) for a contact
 * with an Evolution send of ours still in flight: it waits until that send is resolved, so the
 * runtime can tell wahook's own message from one another client sent. */
static int wh__echo_must_wait(wh__proc_t *p, const wh_work_item_t *it)
{
    struct wh_deliverers *d = atomic_load(&p->pool->deliverers);
    if (d == NULL || it->is_timer || it->contact_key == NULL ||
        (strcmp(it->event, "send.message") != 0 && strcmp(it->event, "messages.upsert") != 0) ||
        it->body == NULL || strstr(it->body, "\"fromMe\":true") == NULL)
        return 0;
    int64_t ids[16];
    size_t n = 0;
    if (wh_store_pending_sends(p->reader, it->instance, it->contact_key, it->received_at, ids,
                               WH_ARRAY_SIZE(ids), &n) != WH_OK)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (wh_deliverers_in_flight((wh_deliverers_t *)d, ids[i]))
            return 1;
    return 0;
}

/* Runs one item into sl->commit. prior is the contact's state (borrowed, may be NULL). */
static void wh__run_item(wh__proc_t *p, wh_work_item_t *it, json_t *prior, wh__slot_t *sl)
{
    const wh_config_t *conf = p->pool->conf;
    char err[WH__ERR_MAX] = "";
    int rc;
    json_t *ev;

    memset(&sl->commit, 0, sizeof(sl->commit));
    sl->commit.item = it;
    sl->commit.script_version = p->gen != NULL ? p->gen->version : NULL;
    sl->commit.cb = wh__on_committed;
    sl->commit.user = sl;

    if (it->is_timer) {
        ev = wh__timer_event(it);
        atomic_fetch_add(&p->pool->timers, 1);
    } else {
        ev = wh_process_build_event(it->id, it->received_at, it->contact_key, it->body,
                                    it->attempts + 1);
    }
    if (ev == NULL) {
        sl->error = strdup("the stored event is not a JSON object");
        sl->commit.status = WH_WORK_DEAD;
        sl->commit.error = sl->error;
        atomic_fetch_add(&p->pool->dead, 1);
        return;
    }

    if (p->vm == NULL) {
        rc = WH_ERR;
        snprintf(err, sizeof(err), "no script version could be loaded in this processor");
        goto failed;
    }
    if (!it->is_timer) {
        char nerr[1024];
        if (wh_process_normalize(p->vm, ev, nerr, sizeof(nerr)) != WH_OK) {
            atomic_fetch_add(&p->pool->normalize_errors, 1);
            wh_log(WH_LOG_WARN, "normalize.lua failed; the handler gets no ev.msg",
                   "{s:I,s:s,s:s}", "event_id", (json_int_t)it->id, "event", it->event, "error",
                   nerr);
        } else {
            json_t *msg = json_object_get(ev, "msg");
            const char *origin = wh__origin(p, it, msg, sl->origin, sizeof(sl->origin));
            snprintf(sl->origin, sizeof(sl->origin), "%s", origin);
            json_object_set_new(msg, "origin", json_string(sl->origin));
            sl->msg = json_incref(msg);
            sl->commit.msg = sl->msg;
            sl->commit.origin = sl->origin;
            wh__check_contact(p, it, msg);
        }
    }

    double started = wh_mono_now();
    if (wh_outcome_init(&sl->outcome, NULL) != WH_OK) {
        rc = WH_ENOMEM;
        snprintf(err, sizeof(err), "out of memory");
        goto failed;
    }
    sl->outcome_ready = 1;
    wh_outcome_set_prior_state(&sl->outcome, prior);
    rc = wh_lua_vm_run_handler(p->vm, it->is_timer ? "timer" : it->event, ev, &sl->outcome, err,
                               sizeof(err));
    if (rc == WH_OK || rc == WH_ENOTFOUND) {
        json_decref(ev);
        sl->commit.status = WH_WORK_DONE;
        sl->commit.outcome = &sl->outcome;
        atomic_fetch_add(&p->pool->processed, 1);
        wh_metrics_event_processed(it->event, "done", wh_mono_now() - started);
        return;
    }
    wh_metrics_script_error(rc == WH_ETIMEDOUT ? "timeout" : rc == WH_ENOMEM ? "memory" : "error");

failed:
    json_decref(ev);
    {
        int attempt = it->attempts + 1;
        int64_t now = wh_now_ms();
        int64_t wait = wh_process_backoff(attempt, conf->retry_base_ms, conf->retry_max_ms);
        int out_of_time = now + wait - it->received_at > conf->retry_total_ms;
        sl->error = strdup(err);
        sl->commit.error = sl->error != NULL ? sl->error : "error";
        if (attempt >= conf->max_attempts || out_of_time) {
            sl->commit.status = WH_WORK_DEAD;
            atomic_fetch_add(&p->pool->dead, 1);
        } else {
            sl->commit.status = WH_WORK_RETRY;
            sl->commit.next_attempt_at = now + wait;
        }
        atomic_fetch_add(&p->pool->failed, 1);
        wh_metrics_event_processed(it->event,
                                   sl->commit.status == WH_WORK_DEAD ? "dead" : "retry", 0);
        wh_log(WH_LOG_WARN,
               sl->commit.status == WH_WORK_DEAD ? "handler failed for the last time: dead"
                                                 : "handler failed; will retry",
               "{s:I,s:b,s:s,s:i,s:s}", "id", (json_int_t)it->id, "timer", it->is_timer, "event",
               it->event, "attempt", attempt, "error", err);
    }
}

static void wh__slot_clear(wh__slot_t *sl)
{
    if (sl->outcome_ready)
        wh_outcome_free(&sl->outcome);
    json_decref(sl->msg);
    free(sl->error);
    memset(sl, 0, sizeof(*sl));
}

/* ---- the processor loop ------------------------------------------------------------------- */

static wh__contact_t *wh__contact(wh__contact_t *cs, size_t *n, const wh_work_item_t *it)
{
    char key[1024];
    snprintf(key, sizeof(key), "%s\x1f%s", it->instance,
             it->contact_key != NULL ? it->contact_key : "");
    for (size_t i = 0; i < *n; i++)
        if (strcmp(cs[i].key, key) == 0)
            return &cs[i];
    wh__contact_t *c = &cs[(*n)++];
    memset(c, 0, sizeof(*c));
    c->key = strdup(key);
    return c;
}

/* Swaps in a VM of the current script version when a reload happened. Between two events only. */
static void wh__refresh_vm(wh__proc_t *p)
{
    wh_scripts_t *scripts = p->pool->scripts;
    if (p->gen != NULL && p->gen->number == wh_scripts_generation(scripts) && p->vm != NULL)
        return;
    wh_scripts_gen_t *g = wh_scripts_current(scripts);
    if (p->gen != NULL && g->number == p->gen->number && p->vm != NULL) {
        wh_scripts_gen_unref(scripts, g);
        return;
    }
    char err[WH__ERR_MAX];
    wh_lua_vm_t *vm = wh_scripts_vm_new(scripts, g, NULL, NULL, err, sizeof(err));
    if (vm == NULL) {
        /* The files changed again after the reload was checked: keep the running version. */
        wh_log(WH_LOG_ERROR, "processor could not load the new script version; keeping its own",
               "{s:i,s:s,s:s}", "processor", (int)p->index, "version", g->version, "error", err);
        wh_scripts_gen_unref(scripts, g);
        return;
    }
    wh_lua_vm_free(p->vm);
    wh_scripts_gen_unref(scripts, p->gen);
    p->vm = vm;
    p->gen = g;
}

static void wh__wait_commits(wh__proc_t *p)
{
    pthread_mutex_lock(&p->mu);
    while (p->outstanding > 0)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void wh__sleep(wh__proc_t *p, int64_t until_ms)
{
    pthread_mutex_lock(&p->mu);
    while (!p->woken && !atomic_load(&p->pool->stop)) {
        int64_t now = wh_now_ms();
        if (now >= until_ms)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = (int64_t)ts.tv_nsec + (until_ms - now) * 1000000;
        ts.tv_sec += (time_t)(ns / 1000000000);
        ts.tv_nsec = (long)(ns % 1000000000);
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    p->woken = 0;
    pthread_mutex_unlock(&p->mu);
}

/* One scan: returns the number of items run. */
static size_t wh__batch(wh__proc_t *p)
{
    wh_processors_t *pool = p->pool;
    wh_work_item_t items[WH__BATCH];
    wh__slot_t slots[WH__BATCH];
    wh__contact_t contacts[WH__BATCH];
    size_t n = 0, nc = 0, ran = 0;
    char err[512];

    if (wh_store_next_work(p->reader, p->index, pool->n, wh_now_ms(), items, WH__BATCH, &n, err,
                           sizeof(err)) != WH_OK) {
        wh_log(WH_LOG_ERROR, "processor cannot read its work", "{s:i,s:s}", "processor",
               (int)p->index, "error", err);
        return 0;
    }
    memset(slots, 0, sizeof(slots));
    for (size_t i = 0; i < n && !atomic_load(&pool->stop); i++) {
        wh_work_item_t *it = &items[i];
        wh__contact_t *c = wh__contact(contacts, &nc, it);
        if (c->key == NULL || c->blocked)
            continue; /* strict FIFO: an earlier event of this contact is waiting for a retry */
        if (wh__echo_must_wait(p, it)) {
            /* Nothing is committed: the next scan (a wake-up or the poll) sees it again. */
            c->blocked = 1;
            continue;
        }
        if (!c->loaded) {
            if (wh_store_state_get(p->reader, it->instance, it->contact_key, &c->state) != WH_OK)
                c->state = NULL;
            c->loaded = 1;
        }
        wh__slot_t *sl = &slots[i];
        sl->proc = p;
        wh__run_item(p, it, c->state, sl);
        if (sl->commit.status == WH_WORK_DONE) {
            int change = wh_outcome_state_change(&sl->outcome);
            if (change != WH_STATE_UNCHANGED) {
                json_t *now_state = wh_outcome_current_state(&sl->outcome);
                json_decref(c->state);
                c->state = now_state != NULL ? json_incref(now_state) : NULL;
            }
        } else if (sl->commit.status == WH_WORK_RETRY) {
            c->blocked = 1;
        }
        pthread_mutex_lock(&p->mu);
        p->outstanding++;
        pthread_mutex_unlock(&p->mu);
        if (wh_store_commit_work(pool->store, &sl->commit) != WH_OK) {
            pthread_mutex_lock(&p->mu);
            p->outstanding--;
            p->commit_failed = 1;
            pthread_mutex_unlock(&p->mu);
            /* The store refused (full, closing): later events of this contact must wait. */
            c->blocked = 1;
            continue;
        }
        ran++;
    }
    wh__wait_commits(p);
    for (size_t i = 0; i < n; i++)
        wh__slot_clear(&slots[i]);
    for (size_t i = 0; i < nc; i++) {
        free(contacts[i].key);
        json_decref(contacts[i].state);
    }
    wh_store_work_free(items, n);
    return ran;
}

static void *wh__proc_main(void *arg)
{
    wh__proc_t *p = arg;
    wh_processors_t *pool = p->pool;
    while (!atomic_load(&pool->stop)) {
        wh__refresh_vm(p);
        size_t ran = wh__batch(p);
        int failed;
        pthread_mutex_lock(&p->mu);
        failed = p->commit_failed;
        p->commit_failed = 0;
        pthread_mutex_unlock(&p->mu);
        if (ran > 0 && !failed)
            continue;

        /* Contacts first known by LID whose partition has drained move to their phone key. */
        char inst[256], from[256], to[256];
        if (!failed && wh_store_next_merge(p->reader, p->index, pool->n, inst, sizeof(inst), from,
                                           sizeof(from), to, sizeof(to)) == WH_OK) {
            if (wh_store_merge_contact(pool->store, inst, from, to) == WH_OK) {
                wh_log(WH_LOG_INFO, "contact merged", "{s:s,s:s,s:s}", "instance", inst, "from",
                       from, "to", to);
                continue;
            }
        }
        int64_t now = wh_now_ms();
        int64_t until = now + pool->conf->poll_interval_ms;
        if (failed)
            until = now + 1000; /* the store refused a commit: back off a little */
        int64_t due = wh_store_next_due(p->reader, p->index, pool->n);
        if (due < until)
            until = due;
        wh__sleep(p, until);
    }
    wh_lua_vm_free(p->vm);
    p->vm = NULL;
    wh_scripts_gen_unref(pool->scripts, p->gen);
    p->gen = NULL;
    return NULL;
}

/* ---- pool ------------------------------------------------------------------------------------ */

void wh_processors_set_deliverers(wh_processors_t *pool, struct wh_deliverers *d)
{
    if (pool != NULL)
        atomic_store(&pool->deliverers, d);
}

void wh_processors_wake(wh_processors_t *pool)
{
    if (pool == NULL)
        return;
    for (unsigned i = 0; i < pool->n; i++) {
        wh__proc_t *p = &pool->procs[i];
        pthread_mutex_lock(&p->mu);
        p->woken = 1;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
}

static void wh__hook(void *arg)
{
    wh_processors_wake(arg);
}

int wh_processors_start(wh_processors_t **out, const wh_config_t *conf, wh_store_t *store,
                        const char *db_path, wh_scripts_t *scripts, char *err, size_t errlen)
{
    wh_processors_t *pool = calloc(1, sizeof(*pool));
    if (pool == NULL)
        return WH_ENOMEM;
    pool->conf = conf;
    pool->store = store;
    pool->scripts = scripts;
    pool->db_path = strdup(db_path);
    pool->n = (unsigned)conf->processors;
    pool->procs = calloc(pool->n, sizeof(*pool->procs));
    if (pool->db_path == NULL || pool->procs == NULL) {
        free(pool->db_path);
        free(pool->procs);
        free(pool);
        return WH_ENOMEM;
    }
    srand((unsigned)wh_now_ms());
    for (unsigned i = 0; i < pool->n; i++) {
        wh__proc_t *p = &pool->procs[i];
        p->pool = pool;
        p->index = i;
        pthread_mutex_init(&p->mu, NULL);
        pthread_cond_init(&p->cv, NULL);
        int rc = wh_store_reader_open(&p->reader, db_path, err, errlen);
        if (rc != WH_OK) {
            pool->n = i; /* the ones opened so far are cleaned up by stop */
            wh_processors_stop(pool);
            return rc;
        }
    }
    wh_store_set_commit_hook(store, wh__hook, pool);
    for (unsigned i = 0; i < pool->n; i++)
        pthread_create(&pool->procs[i].tid, NULL, wh__proc_main, &pool->procs[i]);
    *out = pool;
    return WH_OK;
}

void wh_processors_stop(wh_processors_t *pool)
{
    if (pool == NULL)
        return;
    atomic_store(&pool->stop, 1);
    wh_processors_wake(pool);
    for (unsigned i = 0; i < pool->n; i++) {
        wh__proc_t *p = &pool->procs[i];
        if (p->tid != 0)
            pthread_join(p->tid, NULL);
        wh_store_reader_close(p->reader);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
    }
    wh_store_set_commit_hook(pool->store, NULL, NULL);
    free(pool->procs);
    free(pool->db_path);
    free(pool);
}

json_t *wh_processors_stats(wh_processors_t *pool)
{
    if (pool == NULL)
        return json_object();
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "processed",
                     (json_int_t)atomic_load(&pool->processed), "failed",
                     (json_int_t)atomic_load(&pool->failed), "dead",
                     (json_int_t)atomic_load(&pool->dead), "timers",
                     (json_int_t)atomic_load(&pool->timers), "normalize_errors",
                     (json_int_t)atomic_load(&pool->normalize_errors), "contact_mismatches",
                     (json_int_t)atomic_load(&pool->contact_mismatches));
}
