/* The webhook envelope: event, instance, dedup id, contact candidates, body apikey and the
 * redacted compact body to store, all read from one jansson parse of an Evolution API body. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include "wahook/common.h"
#include "wahook/envelope.h"

/* Real WhatsApp ids are 20–32 characters; anything longer is hostile and falls back to the
 * body hash rather than becoming a huge index key. */
#define WH__ID_MAX 256
#define WH__STATUS_MAX 64
/* E.164 numbers have at most 15 digits and LIDs about 15; 20 leaves room without accepting junk. */
#define WH__USER_MAX 20

static void wh__seterr(char *err, size_t errlen, const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
}

/* The value of a JSON string without NUL bytes (a NUL would silently shorten it in C), else
 * NULL. */
static const char *wh__str(const json_t *v, size_t *len)
{
    if (!json_is_string(v))
        return NULL;
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (memchr(s, '\0', n) != NULL)
        return NULL;
    if (len != NULL)
        *len = n;
    return s;
}

static void wh__hex(const unsigned char *md, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 15];
    }
    out[2 * n] = '\0';
}

static int wh__sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return WH_ENOMEM;
    wh__hex(md, 32, out);
    return WH_OK;
}

/* ---- JIDs ---------------------------------------------------------------------------------- */

enum {
    WH__JID_NONE = 0, /* absent, not a string, no '@' */
    WH__JID_PN,       /* <digits>@s.whatsapp.net or legacy @c.us */
    WH__JID_LID,      /* <digits>@lid */
    WH__JID_GROUP,    /* @g.us */
    WH__JID_BROADCAST, /* status@broadcast and broadcast lists */
    WH__JID_OTHER,    /* newsletters, @hosted, @bot, a PN/LID server with a non-numeric user, … */
};

typedef struct wh__jid {
    int kind;
    char user[WH__USER_MAX + 1]; /* digits, for PN and LID only */
} wh__jid_t;

static int wh__server_is(const char *s, size_t n, const char *name)
{
    size_t m = strlen(name);
    return n == m && memcmp(s, name, m) == 0;
}

/* Classifies a JID and, for PN and LID, keeps the user digits without any ":device" or
 * "_agent" part (Baileys' jidDecode splits the user the same way). */
static int wh__jid(const json_t *v, wh__jid_t *j)
{
    size_t n = 0;
    const char *s = wh__str(v, &n);
    j->kind = WH__JID_NONE;
    j->user[0] = '\0';
    if (s == NULL)
        return j->kind;
    const char *at = memchr(s, '@', n);
    if (at == NULL)
        return j->kind;
    const char *server = at + 1;
    size_t slen = n - (size_t)(server - s);
    int kind;
    if (wh__server_is(server, slen, "s.whatsapp.net") || wh__server_is(server, slen, "c.us"))
        kind = WH__JID_PN;
    else if (wh__server_is(server, slen, "lid"))
        kind = WH__JID_LID;
    else if (wh__server_is(server, slen, "g.us"))
        kind = WH__JID_GROUP;
    else if (wh__server_is(server, slen, "broadcast"))
        kind = WH__JID_BROADCAST;
    else
        kind = WH__JID_OTHER;
    if (kind == WH__JID_PN || kind == WH__JID_LID) {
        size_t ulen = 0;
        while (s + ulen < at && s[ulen] != ':' && s[ulen] != '_')
            ulen++;
        int digits = ulen >= 1 && ulen <= WH__USER_MAX;
        for (size_t i = 0; digits && i < ulen; i++)
            digits = s[i] >= '0' && s[i] <= '9';
        if (!digits) {
            j->kind = WH__JID_OTHER;
            return j->kind;
        }
        memcpy(j->user, s, ulen);
        j->user[ulen] = '\0';
    }
    j->kind = kind;
    return j->kind;
}

/* Stores into *out the first member of obj, in the order of names, that is a JID of the wanted
 * kind (PN or LID); leaves *out alone if *out is already set or nothing matches. */
static void wh__first(const json_t *obj, const char *const *names, int kind, wh__jid_t *out)
{
    if (out->kind != WH__JID_NONE)
        return;
    for (; *names != NULL; names++) {
        wh__jid_t j;
        if (wh__jid(json_object_get(obj, *names), &j) == kind) {
            *out = j;
            return;
        }
    }
}

/* The version-independent rule of reference §4.1 ("Phone lookup rule") over a Baileys key. */
static void wh__from_key(const json_t *key, wh__jid_t *pn, wh__jid_t *lid)
{
    static const char *const author_pn[] = {"participantAlt", "participantPn", "participant", NULL};
    static const char *const author_lid[] = {"participant", "participantAlt", "participantLid", NULL};
    static const char *const alt[] = {"remoteJidAlt", NULL};
    static const char *const rj_only[] = {"remoteJid", NULL};
    /* fromMe: senderPn (like remoteJidAlt) describes our own account, not the peer. */
    static const char *const me_pn[] = {"remoteJid", NULL};
    static const char *const dm_pn[] = {"remoteJidAlt", "senderPn", "remoteJid", NULL};
    static const char *const dm_lid[] = {"remoteJid", "remoteJidAlt", "previousRemoteJid",
                                         "senderLid", NULL};
    if (!json_is_object(key))
        return;
    wh__jid_t rj;
    switch (wh__jid(json_object_get(key, "remoteJid"), &rj)) {
    case WH__JID_GROUP:
        wh__first(key, author_pn, WH__JID_PN, pn);
        wh__first(key, author_lid, WH__JID_LID, lid);
        break;
    case WH__JID_BROADCAST:
        /* Status and broadcast lists: remoteJidAlt is the author's other form, not the chat's. */
        wh__first(key, author_pn, WH__JID_PN, pn);
        wh__first(key, alt, WH__JID_PN, pn);
        wh__first(key, author_lid, WH__JID_LID, lid);
        wh__first(key, alt, WH__JID_LID, lid);
        break;
    case WH__JID_PN:
    case WH__JID_LID:
        if (json_is_true(json_object_get(key, "fromMe"))) {
            /* remoteJidAlt is filled from our own sender attributes here: never trust it. */
            wh__first(key, me_pn, WH__JID_PN, pn);
            wh__first(key, rj_only, WH__JID_LID, lid);
        } else {
            wh__first(key, dm_pn, WH__JID_PN, pn);
            wh__first(key, dm_lid, WH__JID_LID, lid);
        }
        break;
    default: /* newsletters, @hosted, @bot, missing chat: no contact */
        break;
    }
}

/* One JID naming the contact directly (receipts, presence, contacts, calls). */
static void wh__from_jid(const json_t *v, wh__jid_t *pn, wh__jid_t *lid)
{
    wh__jid_t j;
    switch (wh__jid(v, &j)) {
    case WH__JID_PN:
        *pn = j;
        break;
    case WH__JID_LID:
        *lid = j;
        break;
    default:
        break;
    }
}

static void wh__contact_jids(const json_t *root, wh__jid_t *pn, wh__jid_t *lid)
{
    pn->kind = lid->kind = WH__JID_NONE;
    const char *event = wh__str(json_object_get(root, "event"), NULL);
    const json_t *data = json_object_get(root, "data");
    if (event == NULL || !json_is_object(data))
        return; /* arrays of contacts, chats, groups; null data */
    if (strcmp(event, "messages.upsert") == 0 || strcmp(event, "send.message") == 0 ||
        strcmp(event, "messages.edited") == 0 || strcmp(event, "send.message.update") == 0) {
        wh__from_key(json_object_get(data, "key"), pn, lid);
    } else if (strcmp(event, "messages.delete") == 0) {
        /* API deletes wrap the key; deletes by the contact send the bare key as data. */
        const json_t *key = json_object_get(data, "key");
        wh__from_key(json_is_object(key) ? key : data, pn, lid);
    } else if (strcmp(event, "messages.update") == 0) {
        wh__from_jid(json_object_get(data, "remoteJid"), pn, lid);
    } else if (strcmp(event, "presence.update") == 0) {
        wh__from_jid(json_object_get(data, "id"), pn, lid);
    } else if (strcmp(event, "contacts.upsert") == 0 || strcmp(event, "contacts.update") == 0) {
        wh__from_jid(json_object_get(data, "remoteJid"), pn, lid);
        if (pn->kind == WH__JID_NONE && lid->kind == WH__JID_NONE)
            wh__from_jid(json_object_get(data, "id"), pn, lid);
    } else if (strcmp(event, "call") == 0) {
        wh__from_jid(json_object_get(data, "from"), pn, lid);
        if (pn->kind == WH__JID_NONE && lid->kind == WH__JID_NONE)
            wh__from_jid(json_object_get(data, "chatId"), pn, lid);
    }
}

/* Fills *phone and *lid (malloc'd or NULL). Returns WH_OK or WH_ENOMEM. */
static int wh__contact(const json_t *root, char **phone, char **lid)
{
    wh__jid_t pn, l;
    *phone = *lid = NULL;
    wh__contact_jids(root, &pn, &l);
    if (pn.kind == WH__JID_PN && (*phone = strdup(pn.user)) == NULL)
        return WH_ENOMEM;
    if (l.kind == WH__JID_LID) {
        size_t n = strlen(l.user);
        if ((*lid = malloc(n + sizeof("@lid"))) == NULL) {
            free(*phone);
            *phone = NULL;
            return WH_ENOMEM;
        }
        memcpy(*lid, l.user, n);
        memcpy(*lid + n, "@lid", sizeof("@lid"));
    }
    return WH_OK;
}

void wh_envelope_contact(const void *root, char **phone, char **lid)
{
    if (wh__contact((const json_t *)root, phone, lid) != WH_OK)
        *phone = *lid = NULL;
}

char *wh_contact_key(const char *phone, const char *lid, const char *alias_phone)
{
    if (phone != NULL && phone[0] != '\0')
        return strdup(phone);
    if (alias_phone != NULL && alias_phone[0] != '\0')
        return strdup(alias_phone);
    if (lid != NULL && lid[0] != '\0')
        return strdup(lid);
    return NULL;
}

/* ---- dedup id (DESIGN rule 2) -------------------------------------------------------------- */

static int wh__dedup(const char *event, const json_t *root, const char *body, size_t len,
                     char **out)
{
    const json_t *data = json_object_get(root, "data");
    size_t n = 0;
    if (strcmp(event, "messages.upsert") == 0 || strcmp(event, "send.message") == 0) {
        const char *id = wh__str(json_object_get(json_object_get(data, "key"), "id"), &n);
        if (id != NULL && n > 0 && n <= WH__ID_MAX)
            return (*out = strdup(id)) != NULL ? WH_OK : WH_ENOMEM;
    } else if (strcmp(event, "messages.update") == 0) {
        /* json_object_get answers NULL for the old array form, which then falls to the hash. */
        const char *id = wh__str(json_object_get(data, "keyId"), &n);
        size_t slen = 0;
        const char *status = wh__str(json_object_get(data, "status"), &slen);
        if (status == NULL) {
            status = "";
            slen = 0;
        }
        if (id != NULL && n > 0 && n <= WH__ID_MAX && slen <= WH__STATUS_MAX) {
            if ((*out = malloc(n + 1 + slen + 1)) == NULL)
                return WH_ENOMEM;
            memcpy(*out, id, n);
            (*out)[n] = ':';
            memcpy(*out + n + 1, status, slen);
            (*out)[n + 1 + slen] = '\0';
            return WH_OK;
        }
    }
    /* Everything else, edits and deletes included (they carry the original message's id). */
    char hex[65];
    if (wh__sha256_hex(body, len, hex) != WH_OK)
        return WH_ENOMEM;
    if ((*out = malloc(sizeof("sha256:") - 1 + 64 + 1)) == NULL)
        return WH_ENOMEM;
    memcpy(*out, "sha256:", sizeof("sha256:") - 1);
    memcpy(*out + sizeof("sha256:") - 1, hex, 65);
    return WH_OK;
}

/* ---- media ---------------------------------------------------------------------------------- */

static int wh__b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes standard base64 (padding optional, line breaks tolerated) straight into a SHA-256
 * context, so a tens-of-MB attachment is never copied. Returns 1 when valid, 0 when not,
 * WH_ENOMEM on a digest failure. */
static int wh__b64_digest(const char *s, size_t n, size_t *bytes, unsigned char md[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char buf[3072];
    size_t used = 0, total = 0, quad = 0, pad = 0;
    uint32_t acc = 0;
    int ok = 1;
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        return WH_ENOMEM;
    }
    for (size_t i = 0; i < n && ok; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' || c == '\n' || c == ' ' || c == '\t')
            continue;
        if (c == '=') {
            /* Padding only completes a quad that already holds two or three symbols. */
            if (quad + pad < 2 || quad + pad >= 4)
                ok = 0;
            else
                pad++;
            continue;
        }
        int v = wh__b64_value(c);
        if (v < 0 || pad > 0) {
            ok = 0;
            break;
        }
        acc = (acc << 6) | (uint32_t)v;
        if (++quad == 4) {
            buf[used++] = (unsigned char)(acc >> 16);
            buf[used++] = (unsigned char)(acc >> 8);
            buf[used++] = (unsigned char)acc;
            quad = 0;
            acc = 0;
            if (used == sizeof(buf)) {
                if (EVP_DigestUpdate(ctx, buf, used) != 1)
                    goto nomem;
                total += used;
                used = 0;
            }
        }
    }
    if (ok && (quad == 1 || (pad > 0 && quad + pad != 4)))
        ok = 0;
    if (ok && quad == 2) {
        buf[used++] = (unsigned char)(acc >> 4);
    } else if (ok && quad == 3) {
        buf[used++] = (unsigned char)(acc >> 10);
        buf[used++] = (unsigned char)(acc >> 2);
    }
    if (ok) {
        unsigned int mdlen = 0;
        if (EVP_DigestUpdate(ctx, buf, used) != 1 || EVP_DigestFinal_ex(ctx, md, &mdlen) != 1)
            goto nomem;
        total += used;
        *bytes = total;
    }
    EVP_MD_CTX_free(ctx);
    return ok;
nomem:
    EVP_MD_CTX_free(ctx);
    return WH_ENOMEM;
}

/* Replaces data.message.base64 by {"omitted":true,"bytes":N,"sha256":hex} (DESIGN rule 6). */
static int wh__omit_media(json_t *root)
{
    json_t *msg = json_object_get(json_object_get(root, "data"), "message");
    json_t *b64 = json_object_get(msg, "base64");
    if (!json_is_string(b64))
        return WH_OK;
    const char *s = json_string_value(b64);
    size_t n = json_string_length(b64), bytes = 0;
    unsigned char md[32];
    char hex[65];
    int valid = wh__b64_digest(s, n, &bytes, md);
    if (valid < 0)
        return valid;
    if (valid) {
        wh__hex(md, 32, hex);
    } else {
        bytes = n;
        if (wh__sha256_hex(s, n, hex) != WH_OK)
            return WH_ENOMEM;
    }
    json_t *o = json_pack("{s:b,s:I,s:s}", "omitted", 1, "bytes", (json_int_t)bytes, "sha256", hex);
    if (o == NULL)
        return WH_ENOMEM;
    if (!valid && json_object_set_new(o, "encoding", json_string("invalid")) != 0) {
        json_decref(o);
        return WH_ENOMEM;
    }
    return json_object_set_new(msg, "base64", o) == 0 ? WH_OK : WH_ENOMEM;
}

/* ---- redaction ------------------------------------------------------------------------------ */

/* Case-insensitive so "apiKey" and "API_KEY" in nested integration settings are caught too. */
static int wh__is_secret_key(const char *k)
{
    return strcasecmp(k, "apikey") == 0 || strcasecmp(k, "api_key") == 0;
}

/* Walks every container with an explicit stack (no recursion, whatever the nesting) and
 * replaces each non-null apikey/api_key member by "[redacted]". */
static int wh__redact(json_t *root)
{
    size_t cap = 64, n = 0;
    json_t **stack = malloc(cap * sizeof(*stack));
    int rc = WH_OK;
    if (stack == NULL)
        return WH_ENOMEM;
    stack[n++] = root;
    while (n > 0) {
        json_t *v = stack[--n];
        size_t count = json_is_array(v) ? json_array_size(v) : json_object_size(v);
        /* Each container pushes at most its own members. */
        if (n + count > cap) {
            size_t ncap = cap;
            while (n + count > ncap)
                ncap *= 2;
            json_t **ns = realloc(stack, ncap * sizeof(*stack));
            if (ns == NULL) {
                rc = WH_ENOMEM;
                goto out;
            }
            stack = ns;
            cap = ncap;
        }
        if (json_is_array(v)) {
            for (size_t i = 0; i < count; i++) {
                json_t *m = json_array_get(v, i);
                if (json_is_object(m) || json_is_array(m))
                    stack[n++] = m;
            }
            continue;
        }
        for (void *it = json_object_iter(v); it != NULL; it = json_object_iter_next(v, it)) {
            json_t *m = json_object_iter_value(it);
            if (wh__is_secret_key(json_object_iter_key(it)) && !json_is_null(m)) {
                json_t *r = json_string("[redacted]");
                if (r == NULL || json_object_iter_set_new(v, it, r) != 0) {
                    rc = WH_ENOMEM;
                    goto out;
                }
            } else if (json_is_object(m) || json_is_array(m)) {
                stack[n++] = m;
            }
        }
    }
out:
    free(stack);
    return rc;
}

/* ---- parse ---------------------------------------------------------------------------------- */

static json_t *wh__load(const char *body, size_t len, int *nomem)
{
    json_error_t jerr;
    *nomem = 0;
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    if (root == NULL && json_error_code(&jerr) == json_error_numeric_overflow) {
        /* An integer beyond int64 is still valid JSON; a 400 would make Evolution drop the
         * event for good, so read such a body with every integer as a double instead. */
        root = json_loadb(body, len, JSON_ALLOW_NUL | JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL,
                          &jerr);
    }
    if (root == NULL && json_error_code(&jerr) == json_error_out_of_memory)
        *nomem = 1;
    return root;
}

int wh_envelope_parse(wh_envelope_t *env, const char *body, size_t len,
                      const wh_envelope_opts_t *opts, char *err, size_t errlen)
{
    static const wh_envelope_opts_t defaults = {0};
    json_t *root = NULL;
    int rc = WH_ENOMEM, nomem = 0;
    size_t n = 0;

    memset(env, 0, sizeof(*env));
    if (opts == NULL)
        opts = &defaults;
    wh__seterr(err, errlen, "");
    if (body == NULL)
        body = "";

    if ((root = wh__load(body, len, &nomem)) == NULL) {
        if (nomem)
            goto fail;
        wh__seterr(err, errlen, "malformed JSON");
        rc = WH_EINVAL;
        goto fail;
    }
    if (!json_is_object(root)) {
        wh__seterr(err, errlen, "body is not a JSON object");
        rc = WH_EINVAL;
        goto fail;
    }

    const char *event = wh__str(json_object_get(root, "event"), &n);
    if (event == NULL || n == 0 || n > WH_EVENT_MAX) {
        wh__seterr(err, errlen, "missing event");
        rc = WH_EINVAL;
        goto fail;
    }
    json_t *inst = json_object_get(root, "instance");
    const char *instance = "";
    if (inst != NULL && !json_is_null(inst)) {
        instance = wh__str(inst, &n);
        if (instance == NULL || n > WH_INSTANCE_MAX) {
            wh__seterr(err, errlen, "invalid instance");
            rc = WH_EINVAL;
            goto fail;
        }
    }
    if ((env->event = strdup(event)) == NULL || (env->instance = strdup(instance)) == NULL)
        goto fail;

    const char *apikey = wh__str(json_object_get(root, "apikey"), &n);
    if (apikey != NULL && n > 0 && strcmp(apikey, "Apikey not found") != 0 &&
        (env->apikey = strdup(apikey)) == NULL)
        goto fail;

    if (wh__dedup(event, root, body, len, &env->dedup_id) != WH_OK)
        goto fail;
    if (wh__contact(root, &env->phone, &env->lid) != WH_OK)
        goto fail;

    if (!opts->keep_media && (rc = wh__omit_media(root)) != WH_OK)
        goto fail;
    if ((rc = wh__redact(root)) != WH_OK)
        goto fail;
    if ((env->body = json_dumps(root, JSON_COMPACT)) == NULL) {
        rc = WH_ENOMEM;
        goto fail;
    }
    env->body_len = strlen(env->body);
    json_decref(root);
    return WH_OK;

fail:
    json_decref(root);
    wh_envelope_clear(env);
    if (rc == WH_ENOMEM)
        wh__seterr(err, errlen, "out of memory");
    return rc;
}

void wh_envelope_clear(wh_envelope_t *env)
{
    if (env == NULL)
        return;
    free(env->event);
    free(env->instance);
    free(env->dedup_id);
    free(env->phone);
    free(env->lid);
    if (env->apikey != NULL) {
        /* It is a credential: do not leave it in freed heap memory. */
        OPENSSL_cleanse(env->apikey, strlen(env->apikey));
        free(env->apikey);
    }
    free(env->body);
    memset(env, 0, sizeof(*env));
}
