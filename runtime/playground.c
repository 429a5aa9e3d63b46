/* The dashboard's playground: POST /api/try runs the current scripts on one event as a dry run
 * (the `wahook try` engine: same envelope rules, normalisation, handler in the TRY phase, no
 * commit) in a fresh VM with the configured limits, on a worker thread. */
#include <stdlib.h>
#include <string.h>

#include <h2o.h>
#include <jansson.h>

#include "wahook/common.h"
#include "wahook/dashboard.h"
#include "wahook/envelope.h"
#include "wahook/log.h"
#include "wahook/lua_vm.h"
#include "wahook/outcome.h"
#include "wahook/process.h"
#include "wahook/scripts.h"

static json_t *wh__error(const char *msg)
{
    return json_pack("{s:s}", "error", msg);
}

int wh_playground_run(const wh_admin_env_t *env, const char *body, size_t len, json_t **result)
{
    char err[4096];
    json_error_t jerr;
    json_t *root = NULL, *ev = NULL, *res = NULL;
    char *event_text = NULL;
    wh_envelope_t envl = {0};
    wh_scripts_gen_t *gen = NULL;
    wh_lua_vm_t *vm = NULL;
    wh_outcome_t out;
    int out_ready = 0;
    int status = 400;

    root = json_loadb(body, len, 0, &jerr);
    if (!json_is_object(root)) {
        snprintf(err, sizeof(err), "the body must be a JSON object (%s)",
                 root == NULL ? jerr.text : "not an object");
        res = wh__error(err);
        goto done;
    }
    /* {"event": {…}, "state": {…}} carries a prior state; otherwise the body is the event. */
    json_t *event_obj = root, *prior = NULL;
    if (json_is_object(json_object_get(root, "event"))) {
        event_obj = json_object_get(root, "event");
        prior = json_object_get(root, "state");
        if (prior != NULL && !json_is_object(prior) && !json_is_null(prior)) {
            res = wh__error("state must be a JSON object");
            goto done;
        }
        if (json_is_null(prior))
            prior = NULL;
    }
    if ((event_text = json_dumps(event_obj, JSON_COMPACT)) == NULL) {
        status = 500;
        res = wh__error("out of memory");
        goto done;
    }
    wh_envelope_opts_t eo = {.keep_media = env->conf != NULL ? env->conf->store_keep_media : 0};
    if (wh_envelope_parse(&envl, event_text, strlen(event_text), &eo, err, sizeof(err)) !=
        WH_OK) {
        res = wh__error(err);
        goto done;
    }
    if (env->scripts == NULL) {
        status = 503;
        res = wh__error("no scripts are loaded");
        goto done;
    }
    char *contact = wh_contact_key(envl.phone, envl.lid, NULL);
    ev = wh_process_build_event(0, wh_now_ms(), contact, envl.body, 1);
    free(contact);
    if (ev == NULL) {
        res = wh__error("the event body is not a JSON object");
        goto done;
    }
    gen = wh_scripts_current(env->scripts);
    if ((vm = wh_scripts_vm_new(env->scripts, gen, NULL, NULL, err, sizeof(err))) == NULL) {
        status = 503;
        res = wh__error(err);
        goto done;
    }
    if (wh_outcome_init(&out, NULL) != WH_OK) {
        status = 500;
        res = wh__error("out of memory");
        goto done;
    }
    out_ready = 1;
    res = json_object();
    if (strcmp(envl.event, "timer") != 0 &&
        wh_process_normalize(vm, ev, err, sizeof(err)) != WH_OK)
        json_object_set_new(res, "normalize_error", json_string(err));
    wh_outcome_set_prior_state(&out, prior);
    int hr = wh_lua_vm_run_handler_in(vm, WH_PHASE_TRY, envl.event, ev, &out, err, sizeof(err));
    json_object_set_new(res, "event", json_string(envl.event));
    json_object_set_new(res, "contact", json_incref(json_object_get(ev, "contact")));
    json_object_set_new(res, "script_version", json_string(gen->version));
    if (json_object_get(ev, "msg") != NULL)
        json_object_set_new(res, "msg", json_incref(json_object_get(ev, "msg")));
    if (hr == WH_OK || hr == WH_ENOTFOUND) {
        json_object_set_new(res, "handled", json_boolean(hr == WH_OK));
        json_object_set_new(res, "outcome", wh_outcome_to_json(&out));
    } else {
        json_object_set_new(res, "error", json_string(err));
    }
    status = 200;
done:
    if (res == NULL) {
        status = 500;
        res = wh__error("out of memory");
    }
    *result = res;
    if (out_ready)
        wh_outcome_free(&out);
    wh_lua_vm_free(vm);
    if (gen != NULL)
        wh_scripts_gen_unref(env->scripts, gen);
    json_decref(ev);
    wh_envelope_clear(&envl);
    free(event_text);
    json_decref(root);
    return status;
}

typedef struct wh__try_job {
    wh_dashboard_t *dash;
    const wh_admin_env_t *env;
    char *body;
    size_t len;
} wh__try_job_t;

static void wh__try_run(void *arg, wh_admin_reply_t *reply)
{
    wh__try_job_t *job = arg;
    json_t *res = NULL;
    reply->status = wh_playground_run(job->env, job->body, job->len, &res);
    reply->content_type = NULL;
    reply->body = json_dumps(res, JSON_COMPACT);
    reply->body_len = 0;
    json_decref(res);
    if (reply->body == NULL) {
        reply->status = 500;
        reply->body = strdup("{\"error\":\"out of memory\"}");
    }
    wh_dashboard_dry_run_end(job->dash);
    free(job->body);
    free(job);
}

void wh_playground_serve(wh_dashboard_t *d, const wh_admin_env_t *env, h2o_req_t *req)
{
    if (!wh_dashboard_dry_run_begin(d)) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                       H2O_STRLIT("1"));
        wh_admin_respond_error(req, 429, "too many dry runs at once");
        return;
    }
    wh__try_job_t *job = calloc(1, sizeof(*job));
    /* req->entity points into the connection's buffer: the worker gets its own copy. */
    char *copy = malloc(req->entity.len + 1);
    if (job == NULL || copy == NULL) {
        free(job);
        free(copy);
        wh_dashboard_dry_run_end(d);
        wh_admin_respond_error(req, 503, "out of memory");
        return;
    }
    memcpy(copy, req->entity.base, req->entity.len);
    copy[req->entity.len] = '\0';
    job->dash = d;
    job->env = env;
    job->body = copy;
    job->len = req->entity.len;
    if (wh_admin_defer(req, wh__try_run, job) != WH_OK) {
        free(job->body);
        free(job);
        wh_dashboard_dry_run_end(d);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                       H2O_STRLIT("5"));
        wh_admin_respond_error(req, 503, "cannot start the dry run");
    }
}
