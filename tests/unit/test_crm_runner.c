/* Unit tests for runtime/crm_runner.c and the yielding wahook.http.request: requests handed to
 * the caller and answers resumed into the script (also through pcall), progress after every
 * step, failure classes, the deadline counting Lua time only, batches with per-item progress,
 * interleaved runs on one VM, abandoned runs, and the real scripts/crm/twenty.lua end to end. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "wahook/common.h"
#include "wahook/crm_runner.h"
#include "wahook/lua_vm.h"
#include "wh_test.h"

static char g_dir[64];

static void write_file(const char *dir, const char *rel, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    for (char *p = path + strlen(dir) + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(path, 0755);
            *p = '/';
        }
    }
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

/* The test module: deliver dispatches on op to one scenario each. */
static const char *const g_module =
    "local wahook = require 'wahook'\n"
    "local M = {closed = 0}\n"
    "local S = {}\n"
    "function S.basic(fields, ctx)\n"
    "  assert(ctx.target.name == 'crm' and ctx.instance == 'acme')\n"
    "  ctx.progress.contact = ctx.contact\n"
    "  ctx.progress.n = (ctx.progress.n or 0) + 1\n"
    "  local r = wahook.http.request{method = 'post', url = '/rest/people?upsert=true',\n"
    "    headers = {['X-A'] = 'b'}, body = {name = fields.name, id = 9007199254740993},\n"
    "    timeout = 5}\n"
    "  ctx.progress.status = r.status\n"
    "  ctx.progress.got = r.json.data.id\n"
    "  assert(math.type(r.json.data.id) == 'integer')\n"
    "  local r2, e2 = wahook.http.request{url = '/two'}\n"
    "  ctx.progress.e2 = e2\n"
    "  return {id = r.json.data.id, body = r.body}\n"
    "end\n"
    "function S.pcalls(fields, ctx)\n"
    "  local ok, r = pcall(wahook.http.request, {url = '/p'})\n"
    "  ctx.progress.first = ok and r.status\n"
    "  local ok2, e = pcall(function()\n"
    "    local r = wahook.http.request{url = '/q'}\n"
    "    error('boom ' .. r.status)\n"
    "  end)\n"
    "  ctx.progress.second = e\n"
    "  local ok3, e3 = pcall(wahook.http.request, {url = 'https://evil/x'})\n"
    "  ctx.progress.third = e3\n"
    "end\n"
    "local function spin(s) local t = wahook.now() while wahook.now() - t < s do end end\n"
    "function S.spin(fields, ctx)\n"
    "  spin(fields.s)\n"
    "  wahook.http.request{url = '/a'}\n"
    "  spin(fields.s)\n"
    "  wahook.http.request{url = '/b'}\n"
    "end\n"
    "function S.loop() wahook.http.request{url = '/a'} while true do end end\n"
    "function S.raise(fields, ctx)\n"
    "  local r = wahook.http.request{url = '/x'}\n"
    "  if fields.kind == 'string' then error('plain failure') end\n"
    "  error({[fields.kind] = true, message = 'flagged ' .. fields.kind, retry_after = 7})\n"
    "end\n"
    "function S.yield() coroutine.yield() end\n"
    "function S.badprogress(fields, ctx)\n"
    "  ctx.progress.f = print\n"
    "  wahook.http.request{url = '/x'}\n"
    "end\n"
    "function S.inner()\n"
    "  local co = coroutine.wrap(function() return wahook.http.request{url = '/x'} end)\n"
    "  co()\n"
    "end\n"
    "function S.sort()\n"
    "  table.sort({3, 1, 2}, function(a, b) wahook.http.request{url = '/x'} return a < b end)\n"
    "end\n"
    "function S.closer(fields, ctx)\n"
    "  local guard <close> = setmetatable({}, {__close = function() M.closed = M.closed + 1 end})\n"
    "  wahook.http.request{url = '/x'}\n"
    "end\n"
    "function S.closed() return M.closed end\n"
    "function S.one(fields, ctx)\n"
    "  local r = wahook.http.request{url = '/item/' .. fields.n}\n"
    "  ctx.progress.status = r.status\n"
    "end\n"
    "function M.deliver(op, fields, ctx) return S[op](fields, ctx) end\n"
    "return M\n";

static wh_lua_vm_t *new_vm(int deadline_ms)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/wh_crm_runner_XXXXXX");
    if (mkdtemp(g_dir) == NULL)
        exit(2);
    write_file(g_dir, "main.lua", "return {}\n");
    write_file(g_dir, "crm/t.lua", g_module);
    write_file(g_dir, "crm/batchy.lua",
               "local wahook = require 'wahook'\n"
               "return {deliver_batch = function(items, ctx)\n"
               "  local names = {}\n"
               "  for i, it in ipairs(items) do names[i] = it.op .. ':' .. it.fields.n end\n"
               "  wahook.http.request{method = 'POST', url = '/merged', body = {names = names}}\n"
               "  return #items\n"
               "end}\n");
    write_file(g_dir, "crm/nodeliver.lua", "return {}\n");
    write_file(g_dir, "crm/broken.lua", "return {\n");
    wh_lua_vm_opts_t o = {0};
    o.scripts_dir = g_dir;
    o.deadline_ms = deadline_ms;
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

static wh_lua_http_resp_t resp_of(int status, const char *json_body)
{
    wh_lua_http_resp_t r;
    memset(&r, 0, sizeof(r));
    r.status = status;
    r.headers = json_pack("{s:s}", "content-type", "application/json; charset=utf-8");
    r.body = strdup(json_body);
    r.body_len = strlen(json_body);
    return r;
}

static int resume_status(wh_crm_run_t *run, int status, const char *body)
{
    wh_lua_http_resp_t r = resp_of(status, body);
    return wh_crm_run_resume(run, &r, NULL);
}

static wh_crm_run_t *start(wh_lua_vm_t *vm, const char *module, const char *op,
                           const char *fields, const char *progress)
{
    wh_crm_run_t *run = NULL;
    char err[256];
    int rc = wh_crm_run_start(vm, module, op, fields, progress, "acme", "34600111222", &run, err,
                              sizeof(err));
    if (rc != WH_OK) {
        fprintf(stderr, "start: %s\n", err);
        exit(2);
    }
    return run;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_basic(void)
{
    wh_lua_vm_t *vm = new_vm(0);
    wh_crm_run_t *run = start(vm, "crm.t", "basic", "{\"name\":\"Ana\"}", "{\"n\":4}");
    CHECK_STR(wh_crm_run_progress_json(run), "{}");
    CHECK(wh_crm_run_request(run) == NULL);
    CHECK_INT(wh_crm_run_step(run), WH_CRM_NEED_HTTP);
    const wh_lua_http_req_t *req = wh_crm_run_request(run);
    CHECK(req != NULL);
    if (req == NULL)
        goto out;
    CHECK_STR(req->method, "POST");
    CHECK_STR(req->path, "/rest/people?upsert=true");
    CHECK_INT(req->timeout_ms, 5000);
    CHECK_STR(json_string_value(json_object_get(req->headers, "X-A")), "b");
    CHECK_STR(json_string_value(json_object_get(req->headers, "Content-Type")),
              "application/json");
    CHECK(req->body != NULL && strstr(req->body, "\"id\":9007199254740993") != NULL);
    CHECK(req->body != NULL && strstr(req->body, "\"name\":\"Ana\"") != NULL);
    /* The progress the module set before its request is there to persist before sending. */
    CHECK_STR(wh_crm_run_progress_json(run), "{\"contact\":\"34600111222\",\"n\":5}");
    CHECK_INT(wh_crm_run_step(run), WH_EINVAL); /* only once */

    CHECK_INT(resume_status(run, 201, "{\"data\":{\"id\":9007199254740993}}"), WH_CRM_NEED_HTTP);
    req = wh_crm_run_request(run);
    CHECK(req != NULL && strcmp(req->method, "GET") == 0 && strcmp(req->path, "/two") == 0 &&
          req->body == NULL && req->timeout_ms == 10000);
    CHECK_STR(wh_crm_run_progress_json(run),
              "{\"contact\":\"34600111222\",\"got\":9007199254740993,\"n\":5,\"status\":201}");
    CHECK_INT(wh_crm_run_resume(run, NULL, "timed out after 10 s"), WH_CRM_DONE);
    CHECK(wh_crm_run_request(run) == NULL);
    CHECK_STR(wh_crm_run_result_json(run),
              "{\"body\":\"{\\\"data\\\":{\\\"id\\\":9007199254740993}}\",\"id\":"
              "9007199254740993}");
    CHECK_CONTAINS(wh_crm_run_progress_json(run), "\"e2\":\"timed out after 10 s\"");
    CHECK_INT(wh_crm_run_requests(run), 2);
    CHECK_INT(wh_crm_run_last_status(run), 0);
    /* Not waiting any more: the answer's memory is still taken. */
    wh_lua_http_resp_t extra = resp_of(200, "{}");
    CHECK_INT(wh_crm_run_resume(run, &extra, NULL), WH_EINVAL);
    CHECK(extra.body == NULL && extra.headers == NULL);
out:
    wh_crm_run_free(run);

    /* Bad inputs. */
    char err[256];
    wh_crm_run_t *bad = NULL;
    CHECK_INT(wh_crm_run_start(vm, "crm.t", "basic", "[1]", NULL, "acme", NULL, &bad, err,
                               sizeof(err)),
              WH_EINVAL);
    CHECK_CONTAINS(err, "fields must be a JSON object");
    CHECK_INT(wh_crm_run_start(vm, "crm.t", "basic", "{}", "{oops", "acme", NULL, &bad, err,
                               sizeof(err)),
              WH_EINVAL);
    CHECK_CONTAINS(err, "progress is not valid JSON");
    CHECK_INT(wh_crm_run_start(NULL, "crm.t", "basic", "{}", NULL, "acme", NULL, &bad, err,
                               sizeof(err)),
              WH_EINVAL);
    CHECK(bad == NULL);
    free_vm(vm);
}

static void test_pcall(void)
{
    wh_lua_vm_t *vm = new_vm(0);
    wh_crm_run_t *run = start(vm, "crm.t", "pcalls", "{}", NULL);
    CHECK_INT(wh_crm_run_step(run), WH_CRM_NEED_HTTP);
    CHECK_STR(wh_crm_run_request(run)->path, "/p");
    CHECK_INT(resume_status(run, 204, "{}"), WH_CRM_NEED_HTTP);
    CHECK_STR(wh_crm_run_request(run)->path, "/q");
    CHECK_INT(resume_status(run, 500, "{}"), WH_CRM_DONE);
    const char *p = wh_crm_run_progress_json(run);
    CHECK_CONTAINS(p, "\"first\":204");
    CHECK_CONTAINS(p, "boom 500");
    /* A request refused by validation raises inside the pcall and is never yielded. */
    CHECK_CONTAINS(p, "url must be a path under the target's base URL");
    CHECK_INT(wh_crm_run_requests(run), 2);
    wh_crm_run_free(run);
    free_vm(vm);
}

static void test_deadline(void)
{
    wh_lua_vm_t *vm = new_vm(300);
    /* Waiting for HTTP between steps never counts. */
    wh_crm_run_t *run = start(vm, "crm.t", "spin", "{\"s\":0.01}", NULL);
    CHECK_INT(wh_crm_run_step(run), WH_CRM_NEED_HTTP);
    sleep_ms(400);
    CHECK_INT(resume_status(run, 200, "{}"), WH_CRM_NEED_HTTP);
    sleep_ms(400);
    CHECK_INT(resume_status(run, 200, "{}"), WH_CRM_DONE);
    wh_crm_run_free(run);

    free_vm(vm);

    /* Lua time adds up over the steps: 2 × 600 ms of a 1000 ms budget fails in the second. */
    vm = new_vm(1000);
    run = start(vm, "crm.t", "spin", "{\"s\":0.6}", NULL);
    CHECK_INT(wh_crm_run_step(run), WH_CRM_NEED_HTTP);
    CHECK_INT(resume_status(run, 200, "{}"), WH_CRM_FAILED);
    CHECK_INT(wh_crm_run_fail_class(run), WH_CRM_RETRY);
    CHECK_CONTAINS(wh_crm_run_message(run), "script timed out after 1000 ms");
    wh_crm_run_free(run);

    /* A runaway loop is killed and the VM stays usable. */
    run = start(vm, "crm.t", "loop", "{}", NULL);
    CHECK_INT(wh_crm_run_step(run), WH_CRM_NEED_HTTP);
    CHECK_INT(resume_status(run, 200, "{}"), WH_CRM_FAILED);
    CHECK_INT(wh_crm_run_fail_class(run), WH_CRM_RETRY);
    CHECK_CONTAINS(wh_crm_run_message(run), "timed out");
    CHECK(wh_crm_run_request(run) == NULL);
    wh_crm_run_free(run);
    run = start(vm, "crm.t", "one", "{\"n\":1}", NULL);
    CHECK_INT(wh_crm_run_step(run), WH_CRM_NEED_HTTP);
    CHECK_INT(resume_status(run, 200, "{}"), WH_CRM_DONE);
    wh_crm_run_free(run);
    free_vm(vm);
}

static void test_classes(void)
{
    wh_lua_vm_t *vm = new_vm(0);
    static const struct {
        const char *fields;
        int status; /* 0: transport error */
        int cls;
        const char *msg;
    } cases[] = {
        {"{\"kind\":\"permanent\"}", 400, WH_CRM_PERMANENT, "flagged permanent"},
        {"{\"kind\":\"misconfigured\"}", 200, WH_CRM_MISCONFIGURED, "flagged misconfigured"},
        {"{\"kind\":\"retry\"}", 400, WH_CRM_RETRY, "flagged retry"},
        {"{\"kind\":\"string\"}", 503, WH_CRM_BY_STATUS, "plain failure"},
        {"{\"kind\":\"string\"}", 401, WH_CRM_BY_STATUS, "plain failure"},
        {"{\"kind\":\"string\"}", 200, WH_CRM_RETRY, "plain failure"},
        {"{\"kind\":\"string\"}", 0, WH_CRM_RETRY, "plain failure"},
    };
    for (size_t i = 0; i < WH_ARRAY_SIZE(cases); i++) {
        wh_crm_run_t *run = start(vm, "crm.t", "raise", cases[i].fields, NULL);
        CHECK_INT(wh_crm_run_step(run), WH_CRM_NEED_HTTP);
        int st = cases[i].status != 0 ? resume_status(run, cases[i].status, "{}")
                                      : wh_crm_run_resume(run, NULL, "connection refused");
        CHECK_INT(st, WH_CRM_FAILED);
        CHECK_INT(wh_crm_run_fail_class(run), cases[i].cls);
        CHECK_INT(wh_crm_run_last_status(run), cases[i].status);
        CHECK_CONTAINS(wh_crm_run_message(run), cases[i].msg);
        CHECK_CONTAINS(wh_crm_run_message(run), "stack traceback");
        CHECK_CONTAINS(wh_crm_run_message(run), "crm/t.lua:");
        if (strstr(cases[i].fields, "string") == NULL)
            CHECK_INT(wh_crm_run_retry_after_ms(run), 7000);
        wh_crm_run_free(run);
    }

    /* Unusable modules and module bugs. */
    static const struct {
        const char *module, *op;
        int cls;
        const char *msg;
    } broken[] = {
        {"crm.missing", "x", WH_CRM_MISCONFIGURED, "module \"crm.missing\" not found"},
        {"crm.nodeliver", "x", WH_CRM_MISCONFIGURED, "has no deliver function"},
        {"crm.broken", "x", WH_CRM_MISCONFIGURED, "crm/broken.lua:"},
        {"crm.t", "yield", WH_CRM_MISCONFIGURED, "yielded outside wahook.http.request"},
        {"crm.t", "badprogress", WH_CRM_MISCONFIGURED, "ctx.progress cannot be saved"},
        {"crm.t", "inner", WH_CRM_RETRY, "inside a coroutine the script created"},
        {"crm.t", "sort", WH_CRM_RETRY, "cannot be called here"},
    };
    for (size_t i = 0; i < WH_ARRAY_SIZE(broken); i++) {
        wh_crm_run_t *run = start(vm, broken[i].module, broken[i].op, "{}", NULL);
        CHECK_INT(wh_crm_run_step(run), WH_CRM_FAILED);
        CHECK_INT(wh_crm_run_fail_class(run), broken[i].cls);
        CHECK_CONTAINS(wh_crm_run_message(run), broken[i].msg);
        CHECK(wh_crm_run_request(run) == NULL);
        CHECK_INT(wh_crm_run_requests(run), 0);
        wh_crm_run_free(run);
    }
    free_vm(vm);
}

static void test_interleaved_and_abandoned(void)
{
    wh_lua_vm_t *vm = new_vm(0);
    wh_crm_run_t *a = start(vm, "crm.t", "one", "{\"n\":1}", NULL);
    wh_crm_run_t *b = start(vm, "crm.t", "one", "{\"n\":2}", NULL);
    CHECK_INT(wh_crm_run_step(a), WH_CRM_NEED_HTTP);
    CHECK_INT(wh_crm_run_step(b), WH_CRM_NEED_HTTP);
    CHECK_STR(wh_crm_run_request(a)->path, "/item/1");
    CHECK_STR(wh_crm_run_request(b)->path, "/item/2");
    CHECK_INT(resume_status(b, 202, "{}"), WH_CRM_DONE);
    CHECK_INT(resume_status(a, 201, "{}"), WH_CRM_DONE);
    CHECK_STR(wh_crm_run_progress_json(a), "{\"status\":201}");
    CHECK_STR(wh_crm_run_progress_json(b), "{\"status\":202}");
    wh_crm_run_free(a);
    wh_crm_run_free(b);

    /* An abandoned run closes its to-be-closed variables. */
    wh_crm_run_t *c = start(vm, "crm.t", "closer", "{}", NULL);
    CHECK_INT(wh_crm_run_step(c), WH_CRM_NEED_HTTP);
    wh_crm_run_free(c);
    c = start(vm, "crm.t", "closed", "{}", NULL);
    CHECK_INT(wh_crm_run_step(c), WH_CRM_DONE);
    CHECK_STR(wh_crm_run_result_json(c), "1");
    wh_crm_run_free(c);
    free_vm(vm);
}

static void test_batch(void)
{
    wh_lua_vm_t *vm = new_vm(0);
    char err[256];
    const char *items = "[{\"op\":\"one\",\"fields\":{\"n\":1}},{\"op\":\"one\",\"fields\":{\"n\":2}},"
                        "{\"op\":\"one\",\"fields\":{\"n\":3}}]";
    /* A module with deliver_batch gets every item in one call. */
    wh_crm_run_t *run = NULL;
    CHECK_INT(wh_crm_run_start_batch(vm, "crm.batchy", items, NULL, "acme", "c1", &run, err,
                                     sizeof(err)),
              WH_OK);
    CHECK_INT(wh_crm_run_step(run), WH_CRM_NEED_HTTP);
    CHECK_STR(wh_crm_run_request(run)->body, "{\"names\":[\"one:1\",\"one:2\",\"one:3\"]}");
    CHECK_INT(resume_status(run, 200, "{}"), WH_CRM_DONE);
    CHECK_STR(wh_crm_run_result_json(run), "3");
    wh_crm_run_free(run);

    /* Without one, items go through deliver in order; a crash in item 2 resumes at item 2. */
    CHECK_INT(wh_crm_run_start_batch(vm, "crm.t", items, NULL, "acme", "c1", &run, err,
                                     sizeof(err)),
              WH_OK);
    CHECK_INT(wh_crm_run_step(run), WH_CRM_NEED_HTTP);
    CHECK_STR(wh_crm_run_request(run)->path, "/item/1");
    CHECK_INT(resume_status(run, 201, "{}"), WH_CRM_NEED_HTTP);
    CHECK_STR(wh_crm_run_request(run)->path, "/item/2");
    char *saved = strdup(wh_crm_run_progress_json(run));
    CHECK_STR(saved, "{\"done\":1,\"items\":[{\"status\":201},{}]}");
    wh_crm_run_free(run); /* the crash */
    CHECK_INT(wh_crm_run_start_batch(vm, "crm.t", items, saved, "acme", "c1", &run, err,
                                     sizeof(err)),
              WH_OK);
    free(saved);
    CHECK_INT(wh_crm_run_step(run), WH_CRM_NEED_HTTP);
    CHECK_STR(wh_crm_run_request(run)->path, "/item/2");
    CHECK_INT(resume_status(run, 202, "{}"), WH_CRM_NEED_HTTP);
    CHECK_STR(wh_crm_run_request(run)->path, "/item/3");
    CHECK_INT(resume_status(run, 203, "{}"), WH_CRM_DONE);
    CHECK_STR(wh_crm_run_progress_json(run),
              "{\"done\":3,\"items\":[{\"status\":201},{\"status\":202},{\"status\":203}]}");
    CHECK_INT(wh_crm_run_requests(run), 2);
    wh_crm_run_free(run);

    CHECK_INT(wh_crm_run_start_batch(vm, "crm.t", "[{\"fields\":{}}]", NULL, "acme", "c1", &run,
                                     err, sizeof(err)),
              WH_EINVAL);
    CHECK_CONTAINS(err, "items[1] must be an object");
    free_vm(vm);
}

/* ---- the real Twenty module, end to end through the runner ---- */

static void test_twenty_module(void)
{
    wh_lua_vm_opts_t o = {0};
    o.scripts_dir = WH_SOURCE_DIR "/scripts";
    char err[512];
    wh_lua_vm_t *vm = wh_lua_vm_new(&o, err, sizeof(err));
    CHECK(vm != NULL);
    if (vm == NULL) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    wh_crm_run_t *run = NULL;
    CHECK_INT(wh_crm_run_start(vm, "crm.twenty", "contact_upsert",
                               "{\"phone\":\"5511987654321\",\"name\":\"Ana Silva\"}", NULL, "acme",
                               "5511987654321", &run, err, sizeof(err)),
              WH_OK);
    CHECK_INT(wh_crm_run_step(run), WH_CRM_NEED_HTTP);
    const wh_lua_http_req_t *req = wh_crm_run_request(run);
    CHECK(req != NULL);
    if (req == NULL) {
        fprintf(stderr, "%s\n", wh_crm_run_message(run));
        wh_crm_run_free(run);
        wh_lua_vm_free(vm);
        return;
    }
    CHECK_STR(req->method, "GET");
    CHECK_CONTAINS(req->path, "/rest/people?depth=0&limit=");
    CHECK_CONTAINS(req->path, "phones.primaryPhoneNumber%5Beq%5D%3A%2211987654321%22");
    CHECK_CONTAINS(req->path, "phones.primaryPhoneCallingCode%5Beq%5D%3A%22%2B55%22");
    CHECK_INT(resume_status(run, 200, "{\"data\":{\"people\":[]},\"totalCount\":0}"),
              WH_CRM_NEED_HTTP);
    req = wh_crm_run_request(run);
    CHECK(req != NULL);
    if (req == NULL) {
        wh_crm_run_free(run);
        wh_lua_vm_free(vm);
        return;
    }
    CHECK_STR(req->method, "POST");
    CHECK_STR(req->path, "/rest/people?upsert=true&depth=0");
    CHECK_CONTAINS(req->body, "\"primaryPhoneNumber\":\"+5511987654321\"");
    CHECK_CONTAINS(req->body, "\"firstName\":\"Ana\"");
    /* The deterministic id is saved before the create is sent. */
    json_t *p = json_loads(wh_crm_run_progress_json(run), 0, NULL);
    const char *pid = json_string_value(json_object_get(
        json_object_get(json_object_get(p, "contacts"), "5511987654321"), "person_id"));
    CHECK(pid != NULL && strlen(pid) == 36 && pid[14] == '5');
    CHECK(pid != NULL && strstr(req->body, pid) != NULL);
    char body[256];
    snprintf(body, sizeof(body), "{\"data\":{\"createPerson\":{\"id\":\"%s\"}}}", pid ? pid : "");
    json_decref(p);
    CHECK_INT(resume_status(run, 201, body), WH_CRM_DONE);
    wh_crm_run_free(run);

    /* A 401 from Twenty: the target is misconfigured. */
    CHECK_INT(wh_crm_run_start(vm, "crm.twenty", "lead_score",
                               "{\"phone\":\"34600111222\",\"score\":40}", NULL, "acme",
                               "34600111222", &run, err, sizeof(err)),
              WH_OK);
    CHECK_INT(wh_crm_run_step(run), WH_CRM_NEED_HTTP);
    CHECK_INT(resume_status(run, 401,
                            "{\"statusCode\":401,\"error\":\"UNAUTHENTICATED\",\"messages\":"
                            "[\"Token has expired.\"]}"),
              WH_CRM_FAILED);
    CHECK_INT(wh_crm_run_fail_class(run), WH_CRM_MISCONFIGURED);
    CHECK_CONTAINS(wh_crm_run_message(run), "Token has expired.");
    wh_crm_run_free(run);
    wh_lua_vm_free(vm);
}

int main(void)
{
    test_basic();
    test_pcall();
    test_deadline();
    test_classes();
    test_interleaved_and_abandoned();
    test_batch();
    test_twenty_module();
    WH_TEST_MAIN_END();
}
