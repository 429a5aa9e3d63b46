/* Unit tests for the `wahook` module (runtime/lua_api*.c): what each host function queues, the
 * argument errors a script author sees, phase errors, state, timers, facts, log, time and config,
 * and http.request against a fake deliverer callback. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ftw.h>
#include <jansson.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "wahook/common.h"
#include "wahook/log.h"
#include "wahook/lua_vm.h"
#include "wahook/outcome.h"
#include "wh_test.h"

#define NOW_MS 1761141987000LL

static char g_dir[64];

static int64_t fixed_clock(void *ud)
{
    return NOW_MS;
}

/* ---- a fake deliverer http backend ---- */

static struct {
    int calls;
    int fail;
    int sleep_ms;
    char method[16], path[256], body[512], auth[128], ctype[64];
    int timeout_ms;
} g_http;

static int fake_http(void *ud, const wh_lua_http_req_t *req, wh_lua_http_resp_t *resp, char *err,
                     size_t errlen)
{
    g_http.calls++;
    snprintf(g_http.method, sizeof(g_http.method), "%s", req->method);
    snprintf(g_http.path, sizeof(g_http.path), "%s", req->path);
    snprintf(g_http.body, sizeof(g_http.body), "%.*s", (int)req->body_len,
             req->body != NULL ? req->body : "");
    const char *a = json_string_value(json_object_get(req->headers, "Authorization"));
    snprintf(g_http.auth, sizeof(g_http.auth), "%s", a != NULL ? a : "");
    const char *ct = json_string_value(json_object_get(req->headers, "Content-Type"));
    snprintf(g_http.ctype, sizeof(g_http.ctype), "%s", ct != NULL ? ct : "");
    g_http.timeout_ms = req->timeout_ms;
    if (g_http.sleep_ms > 0) {
        struct timespec ts = {g_http.sleep_ms / 1000, (long)(g_http.sleep_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (g_http.fail) {
        snprintf(err, errlen, "connection refused");
        return WH_EIO;
    }
    resp->status = 201;
    resp->headers = json_pack("{s:s}", "content-type", "application/json; charset=utf-8");
    resp->body = strdup("{\"id\":9007199254740993,\"name\":\"Ana\"}");
    resp->body_len = strlen(resp->body);
    return WH_OK;
}

/* ---- harness ---- */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static wh_lua_vm_t *new_vm(const json_t *config, int with_http, int deadline_ms)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/wh_lua_api_XXXXXX");
    if (mkdtemp(g_dir) == NULL)
        exit(2);
    wh_lua_vm_opts_t o = {0};
    o.scripts_dir = g_dir;
    o.config_json = config;
    o.clock_fn = fixed_clock;
    o.deadline_ms = deadline_ms;
    if (with_http)
        o.http_fn = fake_http;
    char err[256];
    wh_lua_vm_t *vm = wh_lua_vm_new(&o, err, sizeof(err));
    if (vm == NULL) {
        fprintf(stderr, "%s\n", err);
        exit(2);
    }
    return vm;
}

static void free_vm(wh_lua_vm_t *vm)
{
    wh_lua_vm_free(vm);
    nftw(g_dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* Runs code in phase with out as the outcome; the first result (if any) goes to res. The code
 * sees `wahook` as a local. Checks the stack is balanced. */
static int run_in(wh_lua_vm_t *vm, int phase, wh_outcome_t *out, const char *code, char *res,
                  size_t reslen, char *err, size_t errlen)
{
    char chunk[8192];
    snprintf(chunk, sizeof(chunk), "local wahook = require 'wahook' %s", code);
    lua_State *L = wh_lua_vm_state(vm);
    int top = lua_gettop(L);
    err[0] = '\0';
    if (res != NULL)
        res[0] = '\0';
    if (luaL_loadbufferx(L, chunk, strlen(chunk), "=test", "t") != LUA_OK) {
        fprintf(stderr, "syntax: %s\n", lua_tostring(L, -1));
        exit(2);
    }
    wh_lua_vm_set_context(vm, phase, out);
    int rc = wh_lua_vm_call(vm, 0, 1, err, errlen);
    wh_lua_vm_set_context(vm, WH_PHASE_LOAD, NULL);
    if (rc == WH_OK) {
        if (res != NULL) {
            snprintf(res, reslen, "%s", luaL_tolstring(L, -1, NULL));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    CHECK_INT(lua_gettop(L), top);
    return rc;
}

#define H(code) run_in(vm, WH_PHASE_HANDLER, &out, code, res, sizeof(res), err, sizeof(err))

static json_t *last_action(wh_outcome_t *out)
{
    json_t *a = wh_outcome_actions(out);
    return json_array_get(a, json_array_size(a) - 1);
}

static char *dump(json_t *j)
{
    static char buf[2048];
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    snprintf(buf, sizeof(buf), "%s", s != NULL ? s : "(null)");
    free(s);
    return buf;
}

static void test_send_text(void)
{
    wh_lua_vm_t *vm = new_vm(NULL, 0, 0);
    wh_outcome_t out;
    wh_outcome_init(&out, NULL);
    char res[256], err[1024];
    CHECK_INT(H("wahook.send_text('+34 600 111 222', 'Hola')"), WH_OK);
    CHECK_STR(dump(last_action(&out)),
              "{\"text\":\"Hola\",\"to\":\"34600111222\",\"type\":\"send_text\"}");
    CHECK_INT(H("wahook.send_text('120363025246125888@g.us', 'grupo', {delay = 1200, quoted = "
                "'3EB0ABC', link_preview = false})"),
              WH_OK);
    CHECK_STR(dump(last_action(&out)),
              "{\"delay\":1200,\"link_preview\":false,\"quoted\":\"3EB0ABC\",\"text\":\"grupo\","
              "\"to\":\"120363025246125888@g.us\",\"type\":\"send_text\"}");
    CHECK_INT(H("wahook.send_text(34600111222, 'n')"), WH_OK);
    CHECK_STR(json_string_value(json_object_get(last_action(&out), "to")), "34600111222");
    CHECK_INT(json_array_size(wh_outcome_actions(&out)), 3);

    CHECK_INT(H("wahook.send_text('abc', 'x')"), WH_ERR);
    CHECK_CONTAINS(err, "test:1: wahook.send_text: 'to' must be a phone number");
    CHECK_CONTAINS(err, "got \"abc\"");
    CHECK_INT(H("wahook.send_text('12', 'x')"), WH_ERR);
    CHECK_CONTAINS(err, "'to' must be a phone number");
    CHECK_INT(H("wahook.send_text(nil, 'x')"), WH_ERR);
    CHECK_CONTAINS(err, "got nil");
    CHECK_INT(H("wahook.send_text('a b@s.whatsapp.net', 'x')"), WH_ERR);
    CHECK_INT(H("wahook.send_text('34600111222', '')"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.send_text: text must be a non-empty string of at most 4096 bytes, "
                        "got \"\"");
    CHECK_INT(H("wahook.send_text('34600111222', string.rep('x', 4097))"), WH_ERR);
    CHECK_CONTAINS(err, "got 4097 bytes");
    CHECK_INT(H("wahook.send_text('34600111222', string.rep('x', 4096))"), WH_OK);
    CHECK_INT(H("wahook.send_text('34600111222', {})"), WH_ERR);
    CHECK_CONTAINS(err, "got a table");
    CHECK_INT(H("wahook.send_text('34600111222', '\\xff')"), WH_ERR);
    CHECK_CONTAINS(err, "text is not valid UTF-8");
    CHECK_INT(H("wahook.send_text('34600111222', 'x', {dealy = 5})"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.send_text options: unknown field \"dealy\" (allowed: delay, "
                        "quoted, link_preview)");
    CHECK_INT(H("wahook.send_text('34600111222', 'x', {delay = -1})"), WH_ERR);
    CHECK_CONTAINS(err, "delay must be an integer number of milliseconds");
    CHECK_INT(H("wahook.send_text('34600111222', 'x', {delay = 1.5})"), WH_ERR);
    CHECK_INT(H("wahook.send_text('34600111222', 'x', {link_preview = 'yes'})"), WH_ERR);
    CHECK_CONTAINS(err, "link_preview must be true or false, got \"yes\"");
    CHECK_INT(H("wahook.send_text('34600111222', 'x', 5)"), WH_ERR);
    CHECK_CONTAINS(err, "options must be a table");
    /* Failed calls queued nothing. */
    CHECK_INT(json_array_size(wh_outcome_actions(&out)), 4);

    /* The cap on actions per run shows up as a script error. */
    CHECK_INT(H("for i = 1, 200 do wahook.send_text('34600111222', 'x') end"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.send_text: too many actions: a handler may queue at most 100");
    wh_outcome_free(&out);
    free_vm(vm);
}

static void test_crm_alert_mail(void)
{
    wh_lua_vm_t *vm = new_vm(NULL, 0, 0);
    wh_outcome_t out;
    wh_outcome_init(&out, NULL);
    char res[256], err[1024];
    CHECK_INT(H("wahook.crm('contact_upsert', {phone = '34600111222', score = 10, tags = {'a'}})"),
              WH_OK);
    CHECK_STR(dump(last_action(&out)), "{\"fields\":{\"phone\":\"34600111222\",\"score\":10,"
                                       "\"tags\":[\"a\"]},\"op\":\"contact_upsert\",\"type\":"
                                       "\"crm\"}");
    CHECK_INT(H("wahook.crm('delete_everything', {})"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.crm: unknown operation \"delete_everything\" (allowed: "
                        "contact_upsert, activity, lead_score, task)");
    CHECK_INT(H("wahook.crm('task')"), WH_ERR);
    CHECK_CONTAINS(err, "fields must be a table, got nil");
    CHECK_INT(H("wahook.crm('task', {1, 2})"), WH_ERR);
    CHECK_CONTAINS(err, "not a list");
    CHECK_INT(H("wahook.crm('task', {f = print})"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.crm: cannot serialise a function value at fields.f");

    CHECK_INT(H("wahook.alert('connection.lost', 'Instance down', {instance = 'main'})"), WH_OK);
    CHECK_STR(dump(last_action(&out)), "{\"fields\":{\"instance\":\"main\"},\"kind\":"
                                       "\"connection.lost\",\"text\":\"Instance down\","
                                       "\"type\":\"alert\"}");
    CHECK_INT(H("wahook.alert('qr', 'scan me')"), WH_OK);
    CHECK(json_object_get(last_action(&out), "fields") == NULL);
    CHECK_INT(H("wahook.alert('bad kind', 'x')"), WH_ERR);
    CHECK_CONTAINS(err, "kind must use letters");
    CHECK_INT(H("wahook.alert('k', 'x', 'notatable')"), WH_ERR);

    CHECK_INT(H("wahook.mail({'ops@example.com', 'b@example.org'}, 'New lead', 'Body',\n"
                "  {{filename = 'a.bin', data = '\\0\\1\\2'},\n"
                "   {filename = 'p.png', data_url = 'data:image/png;base64,iVBORw0KGgo='}})"),
              WH_OK);
    CHECK_STR(dump(last_action(&out)),
              "{\"attachments\":[{\"content_type\":\"application/octet-stream\",\"data_base64\":"
              "\"AAEC\",\"filename\":\"a.bin\"},{\"content_type\":\"image/png\",\"data_base64\":"
              "\"iVBORw0KGgo=\",\"filename\":\"p.png\"}],\"body\":\"Body\",\"subject\":\"New "
              "lead\",\"to\":[\"ops@example.com\",\"b@example.org\"],\"type\":\"mail\"}");
    CHECK_INT(H("wahook.mail('ops@example.com', 'S', '', {{filename = 'r.pdf', content_type = "
                "'application/pdf', data = 'PDF'}})"),
              WH_OK);
    CHECK_STR(json_string_value(json_object_get(
                  json_array_get(json_object_get(last_action(&out), "attachments"), 0),
                  "content_type")),
              "application/pdf");
    CHECK_INT(H("wahook.mail('ops@example.com', 'Hi\\r\\nBcc: x@y.z', 'b')"), WH_ERR);
    CHECK_CONTAINS(err, "subject must be a single line");
    CHECK_INT(H("wahook.mail('not an address', 'S', 'b')"), WH_ERR);
    CHECK_CONTAINS(err, "is not an e-mail address");
    CHECK_INT(H("wahook.mail('a@b.c', 'S', 'b', {{filename = 'x', data = 'd', data_url = "
                "'data:text/plain;base64,ZA=='}})"),
              WH_ERR);
    CHECK_CONTAINS(err, "attachment 1 needs exactly one of data");
    CHECK_INT(H("wahook.mail('a@b.c', 'S', 'b', {{filename = 'x', data_url = "
                "'data:image/png;base64,!!!!'}})"),
              WH_ERR);
    CHECK_CONTAINS(err, "does not carry valid base64");
    CHECK_INT(H("wahook.mail('a@b.c', 'S', 'b', {{filename = 'x', data_url = 'http://x/y.png'}})"),
              WH_ERR);
    CHECK_CONTAINS(err, "data_url must look like");
    CHECK_INT(H("wahook.mail('a@b.c', 'S', 'b', {{filename = '../etc/passwd', data = 'x'}})"),
              WH_ERR);
    CHECK_CONTAINS(err, "filename must not contain");
    CHECK_INT(H("wahook.mail('a@b.c', 'S', 'b', {{filename = 'x', data = 'x', size = 1}})"),
              WH_ERR);
    CHECK_CONTAINS(err, "unknown field \"size\"");
    wh_outcome_free(&out);
    free_vm(vm);
}

static void test_timers(void)
{
    wh_lua_vm_t *vm = new_vm(NULL, 0, 0);
    wh_outcome_t out;
    wh_outcome_init(&out, NULL);
    char res[256], err[1024];
    CHECK_INT(H("wahook.after(60, 'remind', {step = 2})"), WH_OK);
    CHECK_STR(dump(wh_outcome_timers(&out)),
              "[{\"due_at\":1761142047000,\"name\":\"remind\",\"payload\":{\"step\":2}}]");
    CHECK_INT(H("wahook.after(1.5, 'remind')"), WH_OK); /* replaces */
    CHECK_STR(dump(wh_outcome_timers(&out)), "[{\"due_at\":1761141988500,\"name\":\"remind\"}]");
    CHECK_INT(H("wahook.cancel('remind')"), WH_OK);
    CHECK_STR(dump(wh_outcome_timers(&out)), "[]");
    CHECK_STR(dump(wh_outcome_cancelled(&out)), "[\"remind\"]");
    CHECK_INT(H("wahook.after(30 * 86400, 'max')"), WH_OK);

    CHECK_INT(H("wahook.after(0, 'x')"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.after: seconds must be a number > 0 and at most 2592000 (30 "
                        "days), got 0");
    CHECK_INT(H("wahook.after(30 * 86400 + 1, 'x')"), WH_ERR);
    CHECK_INT(H("wahook.after(0/0, 'x')"), WH_ERR);
    CHECK_INT(H("wahook.after('10', 'x')"), WH_ERR);
    CHECK_INT(H("wahook.after(10, string.rep('n', 65))"), WH_ERR);
    CHECK_CONTAINS(err, "the timer name must be a non-empty string of at most 64 bytes");
    CHECK_INT(H("wahook.after(10, '')"), WH_ERR);
    CHECK_INT(H("wahook.after(10, 'x', 'payload')"), WH_ERR);
    CHECK_CONTAINS(err, "payload must be a table or nil");
    CHECK_INT(H("wahook.after(10, 'x', {1, 2})"), WH_ERR);
    CHECK_CONTAINS(err, "not a list");
    CHECK_INT(H("wahook.cancel()"), WH_ERR);
    CHECK_INT(json_array_size(wh_outcome_timers(&out)), 1);
    wh_outcome_free(&out);
    free_vm(vm);
}

static void test_state(void)
{
    wh_lua_vm_t *vm = new_vm(NULL, 0, 0);
    wh_outcome_t out;
    wh_outcome_init(&out, NULL);
    char res[256], err[1024];
    /* No state yet: an empty table. */
    CHECK_INT(H("return next(wahook.state.get()) == nil"), WH_OK);
    CHECK_STR(res, "true");
    json_error_t jerr;
    json_t *prior = json_loads("{\"step\":1,\"seen\":1761141987,\"tags\":[]}", 0, &jerr);
    wh_outcome_set_prior_state(&out, prior);
    json_decref(prior);
    CHECK_INT(H("local s = wahook.state.get() s.step = 99\n"
                "local t = wahook.state.get()\n"
                "return t.step .. ' ' .. math.type(t.seen) .. ' ' .. #t.tags"),
              WH_OK);
    CHECK_STR(res, "1 integer 0"); /* a fresh copy every time */
    CHECK_INT(wh_outcome_state_change(&out), WH_STATE_UNCHANGED);
    CHECK_INT(H("local s = wahook.state.get() s.step = 2 wahook.state.set(s)\n"
                "return wahook.state.get().step"),
              WH_OK);
    CHECK_STR(res, "2");
    CHECK_STR(dump(out.state), "{\"seen\":1761141987,\"step\":2,\"tags\":[]}");

    CHECK_INT(H("wahook.state.set({a = {b = {1, x = 2}}})"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.state.set: cannot serialise a table with mixed keys at state.a.b");
    CHECK_INT(H("wahook.state.set({blob = string.rep('x', 70000)})"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.state.set: state is too large: more than 65536 bytes as JSON");
    CHECK_INT(H("wahook.state.set({1, 2})"), WH_ERR);
    CHECK_CONTAINS(err, "not a list");
    CHECK_INT(H("wahook.state.set('x')"), WH_ERR);
    CHECK_CONTAINS(err, "state must be a table (or nil to clear it), got \"x\"");
    CHECK_INT(H("local t = {} t.self = t wahook.state.set(t)"), WH_ERR);
    CHECK_CONTAINS(err, "cycle");
    CHECK_STR(dump(out.state), "{\"seen\":1761141987,\"step\":2,\"tags\":[]}");

    CHECK_INT(H("wahook.state.set(nil) return next(wahook.state.get()) == nil"), WH_OK);
    CHECK_STR(res, "true");
    CHECK_INT(wh_outcome_state_change(&out), WH_STATE_CLEARED);
    wh_outcome_free(&out);
    free_vm(vm);
}

static void test_record(void)
{
    wh_lua_vm_t *vm = new_vm(NULL, 0, 0);
    wh_outcome_t out;
    wh_outcome_init(&out, NULL);
    char res[256], err[1024];
    CHECK_INT(H("wahook.record('bot_reply', {in_reply_to = '3EB0', latency_ms = 120})\n"
                "wahook.record('bot_reply', {in_reply_to = '3EB1', latency_ms = 7.0})\n"
                "wahook.record('handoff')\n"
                "wahook.record('handoff', {reason = 'asked for a human'})\n"
                "wahook.record('lead', {stage = 'qualified'})\n"
                "wahook.record('lead', {score = 0.75, stage = 'new'})\n"
                "wahook.record('csat', {score = 5})\n"
                "wahook.record('custom', {name = 'coupon', value = true})"),
              WH_OK);
    json_t *f = wh_outcome_facts(&out);
    CHECK_INT(json_array_size(f), 8);
    CHECK_STR(dump(json_array_get(f, 0)),
              "{\"fields\":{\"in_reply_to\":\"3EB0\",\"latency_ms\":120},\"kind\":\"bot_reply\"}");
    CHECK(json_is_integer(json_object_get(json_object_get(json_array_get(f, 1), "fields"),
                                          "latency_ms")));
    CHECK_STR(dump(json_array_get(f, 2)), "{\"fields\":{},\"kind\":\"handoff\"}");

    CHECK_INT(H("wahook.record('purchase', {})"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.record: unknown kind \"purchase\" (allowed: bot_reply, handoff, "
                        "lead, csat, custom)");
    CHECK_INT(H("wahook.record('bot_reply', {in_reply_to = 'x', latency = 5})"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.record('bot_reply'): unknown field 'latency' for kind "
                        "'bot_reply' (allowed: in_reply_to, latency_ms)");
    CHECK_INT(H("wahook.record('bot_reply', {in_reply_to = 'x', latency_ms = -3})"), WH_ERR);
    CHECK_CONTAINS(err, "latency_ms must be an integer >= 0");
    CHECK_INT(H("wahook.record('bot_reply', {in_reply_to = 'x', latency_ms = 1.5})"), WH_ERR);
    CHECK_CONTAINS(err, "latency_ms must be an integer >= 0");
    CHECK_INT(H("wahook.record('bot_reply', {latency_ms = 3})"), WH_ERR);
    CHECK_CONTAINS(err, "kind 'bot_reply' needs the field in_reply_to");
    CHECK_INT(H("wahook.record('lead', {})"), WH_ERR);
    CHECK_CONTAINS(err, "needs at least one of: score, stage");
    CHECK_INT(H("wahook.record('csat', {score = '5'})"), WH_ERR);
    CHECK_CONTAINS(err, "score must be a number");
    CHECK_INT(H("wahook.record('custom', {name = 'x', value = {1}})"), WH_ERR);
    CHECK_CONTAINS(err, "value must be a string, a number or a boolean");
    CHECK_INT(H("wahook.record('custom', {name = 'x'})"), WH_ERR);
    CHECK_CONTAINS(err, "needs the field value");
    CHECK_INT(H("wahook.record('handoff', 'reason')"), WH_ERR);
    CHECK_CONTAINS(err, "fields must be a table");
    CHECK_INT(json_array_size(f), 8);
    wh_outcome_free(&out);
    free_vm(vm);
}

static void test_phases(void)
{
    wh_lua_vm_t *vm = new_vm(NULL, 0, 0);
    wh_outcome_t out;
    wh_outcome_init(&out, NULL);
    char res[256], err[1024];
    CHECK_INT(H("return wahook.http.request{url = '/x'}"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.http.request cannot be called from an event handler (allowed in: "
                        "deliverer)");
    CHECK_INT(run_in(vm, WH_PHASE_TRY, &out, "wahook.http.request{url = '/x'}", res, sizeof(res),
                     err, sizeof(err)),
              WH_ERR);
    CHECK_CONTAINS(err, "cannot be called from an event handler");
    CHECK_INT(run_in(vm, WH_PHASE_TRY, &out, "wahook.send_text('34600111222', 'dry')", res,
                     sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_INT(run_in(vm, WH_PHASE_LOAD, NULL, "wahook.send_text('34600111222', 'x')", res,
                     sizeof(res), err, sizeof(err)),
              WH_ERR);
    CHECK_CONTAINS(err, "wahook.send_text cannot be called while scripts load (allowed in: event "
                        "handler)");
    CHECK_INT(run_in(vm, WH_PHASE_LOAD, NULL, "wahook.state.get()", res, sizeof(res), err,
                     sizeof(err)),
              WH_ERR);
    CHECK_CONTAINS(err, "wahook.state.get cannot be called while scripts load");
    CHECK_INT(run_in(vm, WH_PHASE_DELIVER, &out, "wahook.after(5, 'x')", res, sizeof(res), err,
                     sizeof(err)),
              WH_ERR);
    CHECK_CONTAINS(err, "wahook.after cannot be called from the deliverer (allowed in: event "
                        "handler)");
    CHECK_INT(run_in(vm, WH_PHASE_LOAD, NULL, "wahook.metric.inc('x')", res, sizeof(res), err,
                     sizeof(err)),
              WH_ERR);
    CHECK_CONTAINS(err, "(allowed in: event handler, deliverer)");
    /* Utilities work while loading. */
    CHECK_INT(run_in(vm, WH_PHASE_LOAD, NULL, "return wahook.localtime('UTC', 0).year", res,
                     sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "1970");
    /* A handler-phase call without an outcome is refused, not a crash. */
    CHECK_INT(run_in(vm, WH_PHASE_HANDLER, NULL, "wahook.send_text('34600111222', 'x')", res,
                     sizeof(res), err, sizeof(err)),
              WH_ERR);
    CHECK_CONTAINS(err, "wahook.send_text is not available here");
    wh_outcome_free(&out);
    free_vm(vm);
}

static void test_http(void)
{
    char res[256], err[1024];
    wh_outcome_t out;
    wh_outcome_init(&out, NULL);
    /* No backend: nil plus a message. */
    wh_lua_vm_t *vm = new_vm(NULL, 0, 0);
    CHECK_INT(run_in(vm, WH_PHASE_DELIVER, &out,
                     "local r, e = wahook.http.request{url = '/rest/people'} return tostring(r) "
                     ".. ' ' .. e",
                     res, sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "nil http is not available");
    free_vm(vm);

    /* A slow backend does not eat the script's deadline: its time is excluded. */
    vm = new_vm(NULL, 1, 1000);
    memset(&g_http, 0, sizeof(g_http));
    g_http.sleep_ms = 1500;
    CHECK_INT(run_in(vm, WH_PHASE_DELIVER, &out,
                     "local r = wahook.http.request{method = 'post', url = '/rest/people?x=1',\n"
                     "  headers = {Authorization = 'Bearer t', ['X-Count'] = 3},\n"
                     "  body = {name = 'Ana', id = 9007199254740993}, timeout = 5}\n"
                     "assert(math.type(r.json.id) == 'integer' and r.json.id == 9007199254740993)\n"
                     "return r.status .. ' ' .. r.json.name .. ' ' .. #r.body .. ' ' .. "
                     "r.headers['content-type']",
                     res, sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "201 Ana 36 application/json; charset=utf-8");
    CHECK_INT(g_http.calls, 1);
    CHECK_STR(g_http.method, "POST");
    CHECK_STR(g_http.path, "/rest/people?x=1");
    CHECK_STR(g_http.auth, "Bearer t");
    CHECK_STR(g_http.ctype, "application/json");
    CHECK_CONTAINS(g_http.body, "\"id\":9007199254740993");
    CHECK_INT(g_http.timeout_ms, 5000);
    g_http.sleep_ms = 0;

    CHECK_INT(run_in(vm, WH_PHASE_DELIVER, &out,
                     "local r = wahook.http.request{url = '/x', body = 'raw', headers = "
                     "{['Content-Type'] = 'text/plain'}} return r.status",
                     res, sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(g_http.body, "raw");
    CHECK_STR(g_http.ctype, "text/plain");
    CHECK_STR(g_http.method, "GET");
    CHECK_INT(g_http.timeout_ms, 10000);

    g_http.fail = 1;
    CHECK_INT(run_in(vm, WH_PHASE_DELIVER, &out,
                     "local r, e = wahook.http.request{url = '/x'} return tostring(r) .. ' ' .. e",
                     res, sizeof(res), err, sizeof(err)),
              WH_OK);
    CHECK_STR(res, "nil connection refused");
    g_http.fail = 0;

    static const char *const bad[][2] = {
        {"{url = 'https://evil.example/x'}", "url must be a path under the target's base URL"},
        {"{url = '//evil.example/x'}", "url must be a path"},
        {"{url = '/a/../../admin'}", "url must be a path"},
        {"{url = '/a b'}", "url must be a path"},
        {"{url = '/a/%2E%2e/admin'}", "url must be a path"},
        {"{}", "url must be a non-empty string"},
        {"{url = '/x', method = 'TRACE'}", "method must be GET, POST, PUT, PATCH or DELETE"},
        {"{url = '/x', headers = {['X-A'] = 'a\\r\\nHost: evil'}}", "must be one line"},
        {"{url = '/x', headers = {['bad name'] = 'a'}}", "is not a valid HTTP token"},
        {"{url = '/x', timeout = 100}", "timeout must be seconds > 0 and at most 30"},
        {"{url = '/x', body = print}", "body must be a string or a table"},
        {"{url = '/x', verb = 'GET'}", "unknown field \"verb\""},
        {"'/x'", "expects a table"},
    };
    int calls = g_http.calls;
    char code[256];
    for (size_t i = 0; i < WH_ARRAY_SIZE(bad); i++) {
        snprintf(code, sizeof(code), "wahook.http.request(%s)", bad[i][0]);
        CHECK_INT(run_in(vm, WH_PHASE_DELIVER, &out, code, res, sizeof(res), err, sizeof(err)),
                  WH_ERR);
        CHECK_CONTAINS(err, bad[i][1]);
    }
    CHECK_INT(g_http.calls, calls); /* nothing invalid reached the backend */
    wh_outcome_free(&out);
    free_vm(vm);
}

static void test_util(void)
{
    json_error_t jerr;
    json_t *cfg = json_loads("{\"hours\":{\"open\":9,\"close\":18,\"days\":[1,2,3,4,5]},"
                             "\"tz\":\"UTC\"}",
                             0, &jerr);
    wh_lua_vm_t *vm = new_vm(cfg, 0, 0);
    json_decref(cfg); /* the VM keeps its own copy */
    wh_outcome_t out;
    wh_outcome_init(&out, NULL);
    char res[512], err[1024];

    CHECK_INT(H("return math.type(wahook.now()) .. ' ' .. string.format('%.3f', wahook.now())"),
              WH_OK);
    CHECK_STR(res, "float 1761141987.000");
    CHECK_INT(H("local t = wahook.localtime('UTC', 0)\n"
                "return table.concat({t.year, t.month, t.day, t.hour, t.min, t.sec, t.wday, "
                "t.yday, tostring(t.isdst), t.utc_offset, t.zone}, ' ')"),
              WH_OK);
    CHECK_STR(res, "1970 1 1 0 0 0 4 1 false 0 UTC");
    CHECK_INT(H("local t = wahook.localtime(wahook.config.tz)\n"
                "return string.format('%d-%02d-%02d %02d:%02d:%02d wday=%d yday=%d', t.year, "
                "t.month, t.day, t.hour, t.min, t.sec, t.wday, t.yday)"),
              WH_OK);
    CHECK_STR(res, "2025-10-22 14:06:27 wday=3 yday=295");
    CHECK_INT(H("local t = wahook.localtime('UTC', 1761141987.9) return t.sec"), WH_OK);
    CHECK_STR(res, "27");
    CHECK_INT(H("return wahook.mktime('UTC', {year = 2025, month = 10, day = 22, hour = 14, min = "
                "6, sec = 27})"),
              WH_OK);
    CHECK_STR(res, "1761141987");
    /* A localtime table can be edited and passed back. */
    CHECK_INT(H("local t = wahook.localtime('UTC') t.hour = 9 t.min = 0 t.sec = 0\n"
                "local e = wahook.mktime('UTC', t) return math.type(e) .. ' ' .. e"),
              WH_OK);
    CHECK_STR(res, "integer 1761123600");
    CHECK_INT(H("wahook.localtime('Mars/Olympus')"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.localtime: unknown time zone \"Mars/Olympus\"");
    CHECK_INT(H("wahook.localtime('../../etc/passwd')"), WH_ERR);
    CHECK_CONTAINS(err, "invalid time zone");
    CHECK_INT(H("wahook.localtime(1)"), WH_ERR);
    CHECK_CONTAINS(err, "the time zone (e.g. \"Europe/Madrid\") must be a non-empty string");
    CHECK_INT(H("wahook.localtime('UTC', 'noon')"), WH_ERR);
    CHECK_CONTAINS(err, "t must be seconds since the epoch");
    CHECK_INT(H("wahook.mktime('UTC', {year = 2025, month = 10})"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.mktime: day must be an integer, got nil");
    CHECK_INT(H("wahook.mktime('UTC', {year = 2025, month = 10, day = 1, hours = 9})"), WH_ERR);
    CHECK_CONTAINS(err, "unknown field \"hours\"");
    CHECK_INT(H("wahook.mktime('UTC', {year = 2025, month = 10, day = 1.5})"), WH_ERR);

    /* config: read-only at every depth, iterable, serialisable. */
    CHECK_INT(H("local c = wahook.config return c.hours.open .. '-' .. c.hours.close .. ' ' .. "
                "#c.hours.days"),
              WH_OK);
    CHECK_STR(res, "9-18 5");
    CHECK_INT(H("wahook.config.tz = 'x'"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.config is read-only");
    CHECK_INT(H("wahook.config.hours.open = 8"), WH_ERR);
    CHECK_CONTAINS(err, "wahook.config is read-only");
    CHECK_INT(H("wahook.state.set({hours = wahook.config.hours})"), WH_OK);
    CHECK_STR(dump(out.state), "{\"hours\":{\"close\":18,\"days\":[1,2,3,4,5],\"open\":9}}");
    CHECK_INT(H("return type(wahook.version)"), WH_OK);
    CHECK_STR(res, "string");

    /* metric.inc */
    CHECK_INT(H("wahook.metric.inc('bot_replies', {flow = 'menu', step = 2})\n"
                "wahook.metric.inc('bot_replies', {flow = 'menu', step = 2})\n"
                "wahook.metric.inc('handoffs')"),
              WH_OK);
    CHECK_STR(dump(wh_outcome_metrics(&out)),
              "[{\"labels\":{\"flow\":\"menu\",\"step\":\"2\"},\"name\":\"bot_replies\","
              "\"value\":2},{\"labels\":{},\"name\":\"handoffs\",\"value\":1}]");
    CHECK_INT(H("wahook.metric.inc('bad name')"), WH_ERR);
    CHECK_CONTAINS(err, "the metric name must be letters, digits and _");
    CHECK_INT(H("wahook.metric.inc('m', {nested = {1}})"), WH_ERR);
    CHECK_CONTAINS(err, "label nested must be a string, a number or a boolean");
    wh_outcome_free(&out);
    free_vm(vm);

    /* Without a config section: an empty read-only table. */
    vm = new_vm(NULL, 0, 0);
    wh_outcome_init(&out, NULL);
    CHECK_INT(H("return tostring(wahook.config.anything)"), WH_OK);
    CHECK_STR(res, "nil");
    CHECK_INT(H("wahook.config.x = 1"), WH_ERR);
    wh_outcome_free(&out);
    free_vm(vm);
}

static void test_log(void)
{
    char path[] = "/tmp/wh_lua_api_log_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    CHECK_INT(wh_log_open(path), WH_OK);
    wh_lua_vm_t *vm = new_vm(NULL, 0, 0);
    wh_outcome_t out;
    wh_outcome_init(&out, NULL);
    char res[256], err[1024];
    CHECK_INT(H("wahook.log.info('greeted', {flow = 'menu', n = 1761141987})"), WH_OK);
    CHECK_INT(H("\nwahook.log.warn('careful')"), WH_OK);
    CHECK_INT(H("print('plain', 1, nil)"), WH_OK);
    CHECK_INT(run_in(vm, WH_PHASE_TRY, &out, "wahook.log.error('dry')", res, sizeof(res), err,
                     sizeof(err)),
              WH_OK);
    CHECK_INT(H("wahook.log.info({})"), WH_ERR);
    CHECK_CONTAINS(err, "the message must be a string, got a table");
    CHECK_INT(H("wahook.log.info('x', 'y')"), WH_ERR);
    CHECK_CONTAINS(err, "fields must be a table or nil");
    CHECK_INT(H("wahook.log.info('x', {f = print})"), WH_ERR);
    CHECK_CONTAINS(err, "cannot serialise a function value at fields.f");
    wh_log_open(NULL);
    size_t len;
    char *text = wh_test_read_file(path, &len);
    CHECK_CONTAINS(text, "\"msg\":\"greeted\",");
    CHECK_CONTAINS(text, "\"flow\":\"menu\",");
    CHECK_CONTAINS(text, "\"n\":1761141987,");
    CHECK_CONTAINS(text, "\"where\":\"test:1\",\"script\":true}");
    CHECK_CONTAINS(text, "\"level\":\"warn\",\"msg\":\"careful\",\"where\":\"test:2\"");
    CHECK_CONTAINS(text, "\"msg\":\"plain\\t1\\tnil\"");
    CHECK_CONTAINS(text, "\"level\":\"error\",\"msg\":\"dry\",\"where\":\"test:1\",\"script\":"
                         "true,\"dry_run\":true}");
    free(text);
    unlink(path);
    wh_outcome_free(&out);
    free_vm(vm);
}

int main(void)
{
    test_send_text();
    test_crm_alert_mail();
    test_timers();
    test_state();
    test_record();
    test_phases();
    test_http();
    test_util();
    test_log();
    WH_TEST_MAIN_END();
}
