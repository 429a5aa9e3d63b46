/* Host API area "actions": wahook.send_text, crm, alert and mail validate their arguments and
 * queue an action in the run's outcome (delivered after commit, never from the handler). */
#include <lauxlib.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include "wahook/common.h"
#include "wahook/lua_api.h"
#include "wahook/luaconv.h"

#define WH__MAX_TEXT 4096
#define WH__MAX_DELAY_MS 300000 /* Evolution's "typing" delay; minutes would be a timer */
#define WH__MAX_RECIPIENTS 20
#define WH__MAX_ATTACHMENTS 10

/* Queues action (owned) or raises with the outcome's reason. Nothing else may be held. */
static void wh__queue(lua_State *L, wh_outcome_t *out, json_t *action)
{
    char err[256];
    if (action == NULL)
        luaL_error(L, "not enough memory");
    if (wh_outcome_add_action(out, action, err, sizeof(err)) != WH_OK)
        wh_lua_errorf(L, "%s: %s", wh_lua_fname(L), err);
}

/* Normalises the recipient at idx into buf: a phone number (digits; "+", spaces, "-", "(" and
 * ")" are dropped) or a WhatsApp JID ("…@s.whatsapp.net", "…@g.us", "…@lid", …). */
static void wh__check_recipient(lua_State *L, int idx, char *buf, size_t len)
{
    char got[80];
    size_t n = 0, o = 0;
    const char *s = NULL;
    if (lua_isinteger(L, idx) && lua_tointeger(L, idx) > 0) {
        snprintf(buf, len, "%lld", (long long)lua_tointeger(L, idx));
        n = strlen(buf);
        if (n >= 5)
            return;
    } else if (lua_type(L, idx) == LUA_TSTRING) {
        s = lua_tolstring(L, idx, &n);
    }
    if (s != NULL && memchr(s, '@', n) != NULL) {
        const char *at = memchr(s, '@', n);
        size_t local = (size_t)(at - s), domain = n - local - 1;
        int ok = local > 0 && local <= 64 && domain > 0 && domain <= 32 && n < len;
        for (size_t i = 0; ok && i < local; i++)
            ok = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
                 (s[i] >= 'A' && s[i] <= 'Z') || s[i] == '.' || s[i] == '_' || s[i] == ':' ||
                 s[i] == '-';
        for (size_t i = local + 1; ok && i < n; i++)
            ok = (s[i] >= 'a' && s[i] <= 'z') || s[i] == '.';
        if (ok) {
            memcpy(buf, s, n);
            buf[n] = '\0';
            return;
        }
    } else if (s != NULL) {
        int ok = 1;
        for (size_t i = 0; ok && i < n; i++) {
            if (s[i] >= '0' && s[i] <= '9')
                ok = o + 1 < len && o < 20 ? (buf[o++] = s[i], 1) : 0;
            else
                ok = s[i] == '+' || s[i] == ' ' || s[i] == '-' || s[i] == '(' || s[i] == ')';
        }
        if (ok && o >= 5) {
            buf[o] = '\0';
            return;
        }
    }
    wh_lua_describe(L, idx, got, sizeof(got));
    wh_lua_errorf(L,
                  "%s: 'to' must be a phone number (digits, optionally with + and spaces) or a "
                  "WhatsApp JID such as 34600111222@s.whatsapp.net, got %s",
                  wh_lua_fname(L), got);
}

/* wahook.send_text(to, text [, opts{delay=ms, quoted=id, link_preview=bool}]) */
static int wh__send_text(lua_State *L)
{
    static const char *const opt_keys[] = {"delay", "quoted", "link_preview", NULL};
    const char *fn = wh_lua_fname(L);
    char to[128], got[80];
    wh__check_recipient(L, 1, to, sizeof(to));
    size_t tlen;
    const char *text = wh_lua_check_string(L, 2, "text", 1, WH__MAX_TEXT, &tlen);
    lua_Integer delay = -1;
    const char *quoted = NULL;
    int preview = -1;
    if (!lua_isnoneornil(L, 3)) {
        if (!lua_istable(L, 3)) {
            wh_lua_describe(L, 3, got, sizeof(got));
            wh_lua_errorf(L, "%s: options must be a table, got %s", fn, got);
        }
        wh_lua_check_keys(L, 3, opt_keys, "wahook.send_text options");
        if (lua_getfield(L, 3, "delay") != LUA_TNIL) {
            int isint;
            delay = lua_tointegerx(L, -1, &isint);
            if (!isint || delay < 0 || delay > WH__MAX_DELAY_MS) {
                wh_lua_describe(L, -1, got, sizeof(got));
                wh_lua_errorf(L, "%s: delay must be an integer number of milliseconds 0..%d, got %s",
                              fn, WH__MAX_DELAY_MS, got);
            }
        }
        if (lua_getfield(L, 3, "quoted") != LUA_TNIL)
            quoted = wh_lua_check_string(L, -1, "quoted (the id of the message to quote)", 1, 128,
                                         NULL);
        if (lua_getfield(L, 3, "link_preview") != LUA_TNIL) {
            if (!lua_isboolean(L, -1)) {
                wh_lua_describe(L, -1, got, sizeof(got));
                wh_lua_errorf(L, "%s: link_preview must be true or false, got %s", fn, got);
            }
            preview = lua_toboolean(L, -1);
        }
    }
    wh_outcome_t *out = wh_lua_outcome(L);

    /* From here on nothing raises until the action is owned by the outcome. */
    json_t *a = json_pack("{s:s,s:s,s:s%}", "type", "send_text", "to", to, "text", text, tlen);
    if (a != NULL && delay >= 0)
        json_object_set_new(a, "delay", json_integer((json_int_t)delay));
    if (a != NULL && quoted != NULL)
        json_object_set_new(a, "quoted", json_string(quoted));
    if (a != NULL && preview >= 0)
        json_object_set_new(a, "link_preview", json_boolean(preview));
    wh__queue(L, out, a);
    return 0;
}

/* wahook.crm(op, fields): op is contact_upsert, activity, lead_score or task. */
static int wh__crm(lua_State *L)
{
    static const char *const ops[] = {"contact_upsert", "activity", "lead_score", "task", NULL};
    const char *fn = wh_lua_fname(L);
    char got[80];
    const char *op = lua_type(L, 1) == LUA_TSTRING ? lua_tostring(L, 1) : NULL;
    int known = 0;
    for (size_t i = 0; op != NULL && ops[i] != NULL && !known; i++)
        known = strcmp(op, ops[i]) == 0;
    if (!known) {
        wh_lua_describe(L, 1, got, sizeof(got));
        wh_lua_errorf(L,
                      "%s: unknown operation %s (allowed: contact_upsert, activity, lead_score, "
                      "task)",
                      fn, got);
    }
    if (!lua_istable(L, 2)) {
        wh_lua_describe(L, 2, got, sizeof(got));
        wh_lua_errorf(L, "%s: fields must be a table, got %s", fn, got);
    }
    wh_outcome_t *out = wh_lua_outcome(L);
    json_t *fields = wh_lua_to_json_or_raise(L, 2, "fields", out->limits.max_payload_bytes);
    if (!json_is_object(fields)) {
        json_decref(fields);
        wh_lua_errorf(L, "%s: fields must be a table with string keys, not a list", fn);
    }
    wh__queue(L, out, json_pack("{s:s,s:s,s:o}", "type", "crm", "op", op, "fields", fields));
    return 0;
}

/* wahook.alert(kind, text [, fields]) */
static int wh__alert(lua_State *L)
{
    const char *fn = wh_lua_fname(L);
    char got[80];
    size_t klen, tlen;
    const char *kind = wh_lua_check_string(L, 1, "kind", 1, 64, &klen);
    for (size_t i = 0; i < klen; i++) {
        char c = kind[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            wh_lua_errorf(L, "%s: kind must use letters, digits, '_', '.' and '-' only, got \"%s\"",
                          fn, kind);
    }
    const char *text = wh_lua_check_string(L, 2, "text", 1, WH__MAX_TEXT, &tlen);
    if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3)) {
        wh_lua_describe(L, 3, got, sizeof(got));
        wh_lua_errorf(L, "%s: fields must be a table or nil, got %s", fn, got);
    }
    wh_outcome_t *out = wh_lua_outcome(L);
    json_t *fields = NULL;
    if (lua_istable(L, 3)) {
        fields = wh_lua_to_json_or_raise(L, 3, "fields", out->limits.max_payload_bytes);
        if (!json_is_object(fields)) {
            json_decref(fields);
            wh_lua_errorf(L, "%s: fields must be a table with string keys, not a list", fn);
        }
    }
    json_t *a = json_pack("{s:s,s:s,s:s%}", "type", "alert", "kind", kind, "text", text, tlen);
    if (a != NULL && fields != NULL && json_object_set(a, "fields", fields) != 0) {
        json_decref(a);
        a = NULL;
    }
    json_decref(fields);
    wh__queue(L, out, a);
    return 0;
}

static int wh__email_ok(const char *s, size_t n)
{
    const char *at = memchr(s, '@', n);
    if (n < 3 || n > 254 || at == NULL || at == s || at == s + n - 1 ||
        memchr(at + 1, '@', (size_t)(s + n - at - 1)) != NULL)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || strchr("<>,;\"()[]\\", c) != NULL)
            return 0;
    }
    return 1;
}

static int wh__is_b64(const char *s, size_t n, size_t *decoded)
{
    if (n == 0 || n % 4 != 0)
        return 0;
    size_t pad = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '=') {
            if (i < n - 2 || (i == n - 2 && s[n - 1] != '='))
                return 0;
            pad++;
        } else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                     c == '+' || c == '/')) {
            return 0;
        }
    }
    *decoded = n / 4 * 3 - pad;
    return 1;
}

static int wh__mime_ok(const char *s, size_t n)
{
    const char *slash = memchr(s, '/', n);
    if (n < 3 || n > 127 || slash == NULL || slash == s || slash == s + n - 1)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("/+-.!#$&^_;= ", c) != NULL))
            return 0;
    }
    return 1;
}

/* A validated attachment: pointers into strings owned by the script's table (an argument, so
 * they stay alive while the action is built). */
typedef struct wh__attachment {
    const char *filename, *content_type, *data, *b64;
    size_t ct_len, data_len, b64_len;
} wh__attachment_t;

/* Pushes t[key] without metamethods: the values must be the table's own, to stay alive. */
static int wh__rawfield(lua_State *L, int t, const char *key)
{
    lua_pushstring(L, key);
    return lua_rawget(L, t);
}

/* Validates attachments[i] (on top of the stack) into a. Returns its decoded size. */
static size_t wh__check_attachment(lua_State *L, lua_Integer i, wh__attachment_t *a)
{
    static const char *const keys[] = {"filename", "content_type", "data", "data_url", NULL};
    const char *fn = wh_lua_fname(L);
    char what[64], got[80];
    int t = lua_gettop(L);
    snprintf(what, sizeof(what), "%s attachment %lld", fn, (long long)i);
    if (!lua_istable(L, t)) {
        wh_lua_describe(L, t, got, sizeof(got));
        wh_lua_errorf(L, "%s must be a table {filename, content_type, data | data_url}, got %s",
                      what, got);
    }
    wh_lua_check_keys(L, t, keys, what);
    memset(a, 0, sizeof(*a));

    wh__rawfield(L, t, "filename");
    size_t n;
    a->filename = wh_lua_check_string(L, -1, "attachment filename", 1, 255, &n);
    for (size_t k = 0; k < n; k++)
        if ((unsigned char)a->filename[k] < 0x20 || strchr("/\\\"", a->filename[k]) != NULL)
            wh_lua_errorf(L, "%s: filename must not contain '/', '\\', '\"' or control characters",
                          what);

    int has_data = wh__rawfield(L, t, "data") != LUA_TNIL;
    int has_url = wh__rawfield(L, t, "data_url") != LUA_TNIL;
    if (has_data == has_url)
        wh_lua_errorf(L, "%s needs exactly one of data (a string) or data_url (\"data:…;base64,…\")",
                      what);
    size_t size = 0;
    if (has_data) {
        if (lua_type(L, -2) != LUA_TSTRING)
            wh_lua_errorf(L, "%s: data must be a string", what);
        a->data = lua_tolstring(L, -2, &a->data_len);
        size = a->data_len;
    } else {
        size_t ulen = 0;
        const char *url = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &ulen) : NULL;
        const char *comma = url != NULL ? memchr(url, ',', ulen) : NULL;
        static const char marker[] = ";base64";
        size_t mlen = sizeof(marker) - 1;
        if (url == NULL || ulen < 5 || memcmp(url, "data:", 5) != 0 || comma == NULL ||
            (size_t)(comma - url) < 5 + mlen || memcmp(comma - mlen, marker, mlen) != 0)
            wh_lua_errorf(L, "%s: data_url must look like \"data:image/png;base64,…\"", what);
        a->b64 = comma + 1;
        a->b64_len = ulen - (size_t)(comma + 1 - url);
        if (!wh__is_b64(a->b64, a->b64_len, &size))
            wh_lua_errorf(L, "%s: data_url does not carry valid base64", what);
        size_t ctl = (size_t)(comma - mlen - (url + 5));
        if (ctl > 0) {
            a->content_type = url + 5;
            a->ct_len = ctl;
        }
    }
    if (wh__rawfield(L, t, "content_type") != LUA_TNIL) {
        a->content_type = wh_lua_check_string(L, -1, "attachment content_type", 1, 127,
                                              &a->ct_len);
    }
    if (a->content_type == NULL) {
        a->content_type = "application/octet-stream";
        a->ct_len = strlen(a->content_type);
    }
    if (!wh__mime_ok(a->content_type, a->ct_len))
        wh_lua_errorf(L, "%s: content_type must be a media type such as \"application/pdf\"",
                      what);
    /* Keep the values reachable from the table only; drop our stack copies. */
    lua_settop(L, t);
    return size;
}

static json_t *wh__attachment_json(const wh__attachment_t *a)
{
    json_t *j = json_pack("{s:s,s:s%}", "filename", a->filename, "content_type",
                          a->content_type, a->ct_len);
    if (j == NULL)
        return NULL;
    json_t *b64 = NULL;
    if (a->b64 != NULL) {
        b64 = json_stringn_nocheck(a->b64, a->b64_len);
    } else {
        size_t cap = (a->data_len + 2) / 3 * 4 + 1;
        unsigned char *buf = malloc(cap);
        if (buf != NULL) {
            int n = EVP_EncodeBlock(buf, (const unsigned char *)a->data, (int)a->data_len);
            b64 = json_stringn_nocheck((const char *)buf, (size_t)n);
            free(buf);
        }
    }
    if (b64 == NULL || json_object_set_new(j, "data_base64", b64) != 0) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* wahook.mail(to, subject, body [, attachments]) */
static int wh__mail(lua_State *L)
{
    const char *fn = wh_lua_fname(L);
    char got[80];
    const char *to[WH__MAX_RECIPIENTS];
    size_t nto = 0;
    lua_settop(L, 4);
    if (lua_type(L, 1) == LUA_TSTRING) {
        to[nto++] = lua_tostring(L, 1);
    } else if (lua_istable(L, 1)) {
        lua_Unsigned n = lua_rawlen(L, 1);
        if (n == 0 || n > WH__MAX_RECIPIENTS)
            wh_lua_errorf(L, "%s: 'to' must list 1..%d addresses", fn, WH__MAX_RECIPIENTS);
        for (lua_Unsigned i = 1; i <= n; i++) {
            lua_rawgeti(L, 1, (lua_Integer)i);
            if (lua_type(L, -1) != LUA_TSTRING)
                wh_lua_errorf(L, "%s: 'to' entry %llu is not a string", fn, (unsigned long long)i);
            to[nto++] = lua_tostring(L, -1); /* still referenced by the table */
            lua_pop(L, 1);
        }
    } else {
        wh_lua_describe(L, 1, got, sizeof(got));
        wh_lua_errorf(L, "%s: 'to' must be an e-mail address or a list of them, got %s", fn, got);
    }
    for (size_t i = 0; i < nto; i++)
        if (!wh__email_ok(to[i], strlen(to[i])))
            wh_lua_errorf(L, "%s: \"%.80s\" is not an e-mail address", fn, to[i]);

    size_t slen, blen;
    const char *subject = wh_lua_check_string(L, 2, "subject", 1, 998, &slen);
    if (memchr(subject, '\r', slen) != NULL || memchr(subject, '\n', slen) != NULL)
        wh_lua_errorf(L, "%s: subject must be a single line", fn);
    wh_outcome_t *out = wh_lua_outcome(L);
    const char *body = wh_lua_check_string(L, 3, "body", 0, out->limits.max_mail_bytes, &blen);

    wh__attachment_t att[WH__MAX_ATTACHMENTS];
    size_t natt = 0, total = blen;
    if (!lua_isnil(L, 4)) {
        if (!lua_istable(L, 4)) {
            wh_lua_describe(L, 4, got, sizeof(got));
            wh_lua_errorf(L, "%s: attachments must be a list of tables, got %s", fn, got);
        }
        lua_Unsigned n = lua_rawlen(L, 4);
        if (n > WH__MAX_ATTACHMENTS)
            wh_lua_errorf(L, "%s: at most %d attachments per mail", fn, WH__MAX_ATTACHMENTS);
        for (lua_Unsigned i = 1; i <= n; i++) {
            lua_rawgeti(L, 4, (lua_Integer)i);
            total += wh__check_attachment(L, (lua_Integer)i, &att[natt++]);
            lua_pop(L, 1);
        }
    }
    if (total > out->limits.max_mail_bytes)
        wh_lua_errorf(L, "%s: the mail is too large: %zu bytes with attachments, the limit is %zu",
                      fn, total, out->limits.max_mail_bytes);

    /* Build without raising; every string was validated above. */
    json_t *a = json_pack("{s:s,s:[],s:s%,s:s%,s:[]}", "type", "mail", "to", "subject", subject,
                          slen, "body", body, blen, "attachments");
    for (size_t i = 0; a != NULL && i < nto; i++)
        if (json_array_append_new(json_object_get(a, "to"), json_string(to[i])) != 0) {
            json_decref(a);
            a = NULL;
        }
    for (size_t i = 0; a != NULL && i < natt; i++) {
        json_t *j = wh__attachment_json(&att[i]);
        if (j == NULL || json_array_append_new(json_object_get(a, "attachments"), j) != 0) {
            json_decref(a);
            a = NULL;
        }
    }
    wh__queue(L, out, a);
    return 0;
}

static const wh_lua_fn_t wh__actions[] = {
    {"send_text", wh__send_text, WH_PHASES_HANDLER},
    {"crm", wh__crm, WH_PHASES_HANDLER},
    {"alert", wh__alert, WH_PHASES_HANDLER},
    {"mail", wh__mail, WH_PHASES_HANDLER},
    {NULL, NULL, 0},
};

void wh_lua_api_actions_register(lua_State *L, int mod)
{
    wh_lua_api_register(L, mod, "wahook", wh__actions);
}
