/* One CRM delivery run: a mapping module's deliver(op, fields, ctx) (or deliver_batch(items, ctx)
 * for several queued rows of one contact) run as a coroutine of a DELIVER-phase VM, where every
 * wahook.http.request yields the request to the caller instead of blocking. The caller (the
 * deliverer) performs the transfer on its own loop and resumes the run with the answer.
 *
 * Life of a run, all on the thread that owns the VM (a VM is not thread-safe):
 *
 *   wh_crm_run_t *run;
 *   wh_crm_run_start(vm, "crm.twenty", row_op, row_fields_json, row_progress_json, instance,
 *                    contact_key, &run, err, sizeof err);
 *   int st = wh_crm_run_step(run);
 *   while (st == WH_CRM_NEED_HTTP) {
 *       persist wh_crm_run_progress_json(run) in the outbox row   <- BEFORE sending (see below)
 *       perform *wh_crm_run_request(run) against wahook.crm.url + path, adding
 *           "Authorization: Bearer <wahook.crm.api-key>", charged to the crm target's rate
 *           limit and circuit breaker
 *       st = wh_crm_run_resume(run, &resp, NULL)          an HTTP answer, any status
 *         or wh_crm_run_resume(run, NULL, "timed out")    the transfer failed
 *   }
 *   DONE:   mark the row done; store wh_crm_run_progress_json and wh_crm_run_result_json
 *   FAILED: classify with wh_crm_run_fail_class (+ wh_crm_run_last_status for BY_STATUS),
 *           keep wh_crm_run_message as last_error and the progress
 *   wh_crm_run_free(run);
 *
 * Many runs may be in flight on one VM at once (each is its own coroutine); they interleave only
 * at their yields. Module-level variables of the mapping module are shared by all runs of the VM
 * (caches, detected field names). A VM must not be freed or swapped (hot reload) while a run on
 * it is not freed.
 *
 * Progress and crash safety. ctx.progress is a table the module fills with what it has created
 * (ids) and what it is about to do. wh_crm_run_progress_json is refreshed after every step;
 * persisting it before performing the step's request is what makes a crash at any point
 * harmless: the next attempt starts with the same progress (wh_crm_run_start's progress_json)
 * and the module skips or re-checks what it had done. A request is at-least-once either way; the
 * modules make every write idempotent (deterministic ids with ?upsert=true, re-reading before
 * appending).
 *
 * Deadline: the VM's per-call deadline bounds the run's total Lua run time over all its steps;
 * time waiting between a NEED_HTTP and the resume never counts. Memory: the VM's cap applies.
 */
#ifndef WAHOOK_CRM_RUNNER_H
#define WAHOOK_CRM_RUNNER_H

#include <stddef.h>
#include "wahook/lua_vm.h"

typedef struct wh_crm_run wh_crm_run_t;

/* What a step ended in. */
typedef enum wh_crm_status {
    WH_CRM_NEED_HTTP = 1, /* perform wh_crm_run_request(run), then wh_crm_run_resume */
    WH_CRM_DONE = 2,      /* deliver returned: the action is complete */
    WH_CRM_FAILED = 3,    /* deliver raised (or the module is unusable): see the fail class */
} wh_crm_status_t;

/* How a failed run is to be treated (the delivery rules of the outbox). */
typedef enum wh_crm_class {
    WH_CRM_RETRY = 1,         /* back off and retry: a transfer failed, the script timed out or
                               * ran out of memory, it raised {retry=true}, or it raised a plain
                               * error with no failed HTTP answer to go by */
    WH_CRM_PERMANENT = 2,     /* dead at once: {permanent=true} (bad input for this action) */
    WH_CRM_MISCONFIGURED = 3, /* hold the row, open the crm circuit, alert: {misconfigured=true},
                               * or the module cannot be used (not found, does not load, has no
                               * deliver, yields outside wahook.http.request, puts something
                               * unsavable into ctx.progress) */
    WH_CRM_BY_STATUS = 4,     /* a plain error() after a non-2xx answer: classify by
                               * wh_crm_run_last_status like any target answer (401/403/404
                               * misconfigured, 408/429/5xx retry, other 4xx permanent) */
} wh_crm_class_t;

/* Starts a run of module_name's deliver(op, fields, ctx) on vm (created by wh_scripts_vm_new
 * for the current scripts generation; the runner sets its phase to WH_PHASE_DELIVER).
 *   module_name   "crm.twenty" (wahook.crm.module) → scripts/crm/twenty.lua
 *   op            "contact_upsert" | "activity" | "lead_score" | "task" (not checked here)
 *   fields_json   the action's "fields" object as JSON text (NULL: {})
 *   progress_json the outbox row's progress column (NULL or "": a fresh {})
 *   instance      the row's instance; contact_key the row's contact key (NULL or "": none)
 * ctx = {progress = <table>, instance = …, contact = … or nil, target = {name = "crm"}}.
 * Nothing runs yet: the module is required and deliver called by the first wh_crm_run_step. A
 * module that cannot be used makes that step FAILED/MISCONFIGURED, not this call.
 * Returns 0 with *out set, WH_EINVAL (unparsable JSON, fields or progress not an object, NULL
 * vm/module/instance/out) or WH_ENOMEM, with the reason in err. */
int wh_crm_run_start(wh_lua_vm_t *vm, const char *module_name, const char *op,
                     const char *fields_json, const char *progress_json, const char *instance,
                     const char *contact_key, wh_crm_run_t **out, char *err, size_t errlen);

/* Like wh_crm_run_start for several queued rows of ONE (instance, contact), oldest first, merged
 * into one run: items_json is a JSON array of {"op": …, "fields": {…}}. The module's
 * deliver_batch(items, ctx) runs when it has one (it may merge the items into fewer requests:
 * twenty.lua appends all messages of a day in one PATCH); otherwise the items go through
 * deliver one after the other, each with its own ctx.progress stored at
 * ctx.progress.items[i] and skipped once done. DONE completes every row of the batch; FAILED
 * applies to all of them. Persist the progress on every row of the batch, and always start a
 * batch at the contact's oldest pending row with that row's progress: items keep their index
 * across attempts because rows only leave the front of the queue. */
int wh_crm_run_start_batch(wh_lua_vm_t *vm, const char *module_name, const char *items_json,
                           const char *progress_json, const char *instance,
                           const char *contact_key, wh_crm_run_t **out, char *err,
                           size_t errlen);

/* Runs the run until its first request, its end, or a failure. Call once, right after start.
 * Returns a wh_crm_status_t, or WH_EINVAL when the run has already been stepped. */
int wh_crm_run_step(wh_crm_run_t *run);

/* Continues a run that returned WH_CRM_NEED_HTTP with the outcome of its request: resp (any
 * status; its body (malloc) and headers (object of lower-case names, json_decref) are taken
 * over and freed by the runner, also on failure) or, with resp NULL, transport_err: a short
 * message (the script sees nil, transport_err). Returns a wh_crm_status_t, or WH_EINVAL (resp's
 * memory still taken) when the run is not waiting for HTTP. */
int wh_crm_run_resume(wh_crm_run_t *run, wh_lua_http_resp_t *resp, const char *transport_err);

/* The request of the last NEED_HTTP: method ("GET", "POST", "PUT", "PATCH", "DELETE"), path
 * (starts with "/", relative to the crm base URL, may carry a query; no "..", no spaces, CR, LF
 * or other control bytes — validated by wahook.http.request), headers (an object of name →
 * one-line string; Content-Type is application/json when the body is a table), body (NULL when
 * none) and timeout_ms (> 0, ≤ 30000; 10000 by default). Valid until the next resume or free;
 * NULL when the run is not waiting for HTTP. */
const wh_lua_http_req_t *wh_crm_run_request(const wh_crm_run_t *run);

/* ctx.progress as compact JSON (an object), as of the end of the last step; "{}" before the
 * first. Borrowed: valid until the next step, resume or free. Never NULL. */
const char *wh_crm_run_progress_json(const wh_crm_run_t *run);

/* DONE: deliver's first return value as compact JSON (for the row's response column), or NULL
 * when it returned nothing (or something that is not JSON). Borrowed like the progress. */
const char *wh_crm_run_result_json(const wh_crm_run_t *run);

/* FAILED: the class (see wh_crm_class_t), the message with the Lua traceback (never NULL;
 * "" otherwise), the HTTP status of the last answer the run got (0: none, or the last request
 * failed in transport) and a retry delay the module asked for (error{retry_after = seconds},
 * in ms; 0: none). */
wh_crm_class_t wh_crm_run_fail_class(const wh_crm_run_t *run);
const char *wh_crm_run_message(const wh_crm_run_t *run);
int wh_crm_run_last_status(const wh_crm_run_t *run);
long long wh_crm_run_retry_after_ms(const wh_crm_run_t *run);

/* Number of requests the run has yielded so far (for logs and metrics). */
int wh_crm_run_requests(const wh_crm_run_t *run);

/* Ends the run, finished or not (an abandoned run's coroutine is closed and released). NULL is
 * fine. */
void wh_crm_run_free(wh_crm_run_t *run);

#endif
