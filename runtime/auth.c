/* Inbound authentication: HMAC-SHA256 signatures, static tokens, HS256 JWTs and the body apikey,
 * each against every configured secret, plus the base64/hex/SHA-256 helpers they need. */
#include <ctype.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include "wahook/auth.h"
#include "wahook/common.h"
#include "wahook/log.h"

#define WH__DEFAULT_PREFIX "sha256="
/* A JWT from Evolution is about 200 bytes; the bound keeps decoding allocations small. */
#define WH__JWT_MAX 8192
#define WH__HMAC_SLOTS 8

/* ---- per-thread keyed HMAC contexts ----
 * Keying HMAC (hashing the padded key) costs more than hashing a small body, so each thread keeps
 * contexts keyed once per secret and re-initialises them with EVP_MAC_init(ctx, NULL, ...), which
 * reuses the key. Slots are looked up by key content, not by pointer, so a secret freed by a config
 * reload and another allocated at the same address can never share a context. */

typedef struct wh__hmac_slot {
    uint8_t *key;
    size_t keylen;
    EVP_MAC_CTX *ctx;
} wh__hmac_slot_t;

typedef struct wh__hmac_cache {
    EVP_MAC *mac;
    wh__hmac_slot_t slot[WH__HMAC_SLOTS];
    unsigned next; /* round-robin victim when every slot is taken */
} wh__hmac_cache_t;

static __thread wh__hmac_cache_t *wh__cache;
static pthread_key_t wh__cache_key;
static pthread_once_t wh__cache_once = PTHREAD_ONCE_INIT;
static int wh__cache_key_ok;

static void wh__slot_clear(wh__hmac_slot_t *s)
{
    if (s->key != NULL) {
        OPENSSL_cleanse(s->key, s->keylen);
        free(s->key);
    }
    EVP_MAC_CTX_free(s->ctx);
    memset(s, 0, sizeof(*s));
}

static void wh__cache_free(void *p)
{
    wh__hmac_cache_t *c = p;
    if (c == NULL)
        return;
    for (size_t i = 0; i < WH__HMAC_SLOTS; i++)
        wh__slot_clear(&c->slot[i]);
    EVP_MAC_free(c->mac);
    free(c);
    if (wh__cache == c)
        wh__cache = NULL;
}

static void wh__cache_key_init(void)
{
    /* The destructor frees the cache of threads that exit without calling the cleanup. */
    wh__cache_key_ok = pthread_key_create(&wh__cache_key, wh__cache_free) == 0;
}

void wh_auth_thread_cleanup(void)
{
    wh__hmac_cache_t *c = wh__cache;
    if (c == NULL)
        return;
    if (wh__cache_key_ok)
        pthread_setspecific(wh__cache_key, NULL);
    wh__cache_free(c);
}

static wh__hmac_cache_t *wh__cache_get(void)
{
    if (wh__cache != NULL)
        return wh__cache;
    pthread_once(&wh__cache_once, wh__cache_key_init);
    wh__hmac_cache_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (c->mac == NULL) {
        free(c);
        return NULL;
    }
    if (wh__cache_key_ok)
        pthread_setspecific(wh__cache_key, c);
    wh__cache = c;
    return c;
}

/* Returns a context keyed with key, ready for EVP_MAC_init(ctx, NULL, 0, NULL); NULL on failure. */
static EVP_MAC_CTX *wh__hmac_ctx(const void *key, size_t keylen)
{
    wh__hmac_cache_t *c = wh__cache_get();
    if (c == NULL)
        return NULL;
    for (size_t i = 0; i < WH__HMAC_SLOTS; i++) {
        wh__hmac_slot_t *s = &c->slot[i];
        if (s->ctx != NULL && s->keylen == keylen && memcmp(s->key, key, keylen) == 0)
            return s->ctx;
    }
    wh__hmac_slot_t *s = NULL;
    for (size_t i = 0; i < WH__HMAC_SLOTS && s == NULL; i++)
        if (c->slot[i].ctx == NULL)
            s = &c->slot[i];
    if (s == NULL) {
        s = &c->slot[c->next];
        c->next = (c->next + 1) % WH__HMAC_SLOTS;
        wh__slot_clear(s);
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    s->key = malloc(keylen > 0 ? keylen : 1);
    s->ctx = EVP_MAC_CTX_new(c->mac);
    if (s->key == NULL || s->ctx == NULL)
        goto fail;
    memcpy(s->key, key, keylen);
    s->keylen = keylen;
    if (!EVP_MAC_init(s->ctx, key, keylen, params))
        goto fail;
    return s->ctx;
fail:
    wh__slot_clear(s);
    return NULL;
}

int wh_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                   uint8_t out[32])
{
    static const uint8_t empty[1];
    if (key == NULL)
        key = empty;
    if (msg == NULL)
        msg = empty;
    EVP_MAC_CTX *ctx = wh__hmac_ctx(key, keylen);
    if (ctx != NULL) {
        size_t outlen = 0;
        if (EVP_MAC_init(ctx, NULL, 0, NULL) && EVP_MAC_update(ctx, msg, msglen) &&
            EVP_MAC_final(ctx, out, &outlen, 32) && outlen == 32)
            return WH_OK;
    }
    /* Out of memory or a provider hiccup: the one-shot path still gives the right answer. */
    unsigned int len = 0;
    if (keylen > INT_MAX ||
        HMAC(EVP_sha256(), key, (int)keylen, msg, msglen, out, &len) == NULL || len != 32)
        return WH_ERR;
    return WH_OK;
}

void wh_sha256(const void *msg, size_t len, uint8_t out[32])
{
    static const uint8_t empty[1];
    unsigned int outlen = 0;
    if (!EVP_Digest(msg != NULL ? msg : empty, len, out, &outlen, EVP_sha256(), NULL))
        abort(); /* SHA-256 is always available; failure means a broken libcrypto */
}

void wh_hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int wh__hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* ---- base64 ---- */

size_t wh_base64_encode(const void *in, size_t n, char *out)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const uint8_t *p = in;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int wh__b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

long wh_base64_decode(const char *in, size_t n, uint8_t *out)
{
    size_t pad = 0;
    while (n > 0 && pad < 2 && in[n - 1] == '=') {
        n--;
        pad++;
    }
    /* Padding, when present, must complete the last quantum; without it a lone 6-bit tail
     * cannot encode a byte. */
    if ((pad > 0 && (n + pad) % 4 != 0) || n % 4 == 1 || n > (size_t)LONG_MAX)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = wh__b64val((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Non-zero leftover bits mean a non-canonical encoding; rejecting them keeps one byte string
     * to one text (a JWT signature cannot be altered without changing its bytes). */
    if (acc != 0)
        return -1;
    return (long)o;
}

/* ---- methods ---- */

/* A method is on when it has at least one non-empty secret; empty secrets never match. */
static int wh__method_on(const wh_auth_method_conf_t *m)
{
    for (size_t i = 0; i < m->secrets.n; i++)
        if (m->secrets.v[i] != NULL && m->secrets.v[i][0] != '\0')
            return 1;
    return 0;
}

int wh_auth_any_configured(const wh_auth_conf_t *conf)
{
    return wh__method_on(&conf->hmac) || wh__method_on(&conf->token) ||
           wh__method_on(&conf->jwt) || wh__method_on(&conf->apikey);
}

void wh_auth_sign(const char *secret, size_t secretlen, const char *prefix, const void *body,
                  size_t bodylen, char *out)
{
    uint8_t mac[32];
    if (prefix == NULL)
        prefix = WH__DEFAULT_PREFIX;
    size_t plen = strlen(prefix);
    if (wh_hmac_sha256(secret, secretlen, body, bodylen, mac) != WH_OK) {
        out[0] = '\0';
        return;
    }
    memcpy(out, prefix, plen);
    wh_hex_encode(mac, sizeof(mac), out + plen);
    OPENSSL_cleanse(mac, sizeof(mac));
}

int wh_auth_hmac_verify(const wh_auth_method_conf_t *m, const char *value, size_t len,
                        const void *body, size_t bodylen)
{
    if (value == NULL)
        return 0;
    const char *prefix = m->prefix != NULL ? m->prefix : WH__DEFAULT_PREFIX;
    size_t plen = strlen(prefix);
    /* The prefix is matched case-insensitively like the hex after it ("SHA256=ABCD…"). */
    if (len != plen + 64 || strncasecmp(value, prefix, plen) != 0)
        return 0;
    uint8_t given[32];
    for (size_t i = 0; i < 32; i++) {
        int hi = wh__hexval((unsigned char)value[plen + 2 * i]);
        int lo = wh__hexval((unsigned char)value[plen + 2 * i + 1]);
        if (hi < 0 || lo < 0)
            return 0;
        given[i] = (uint8_t)(hi << 4 | lo);
    }
    /* Every secret is tried, whichever matches, so timing says nothing about which one did. */
    int match = 0;
    for (size_t i = 0; i < m->secrets.n; i++) {
        const char *s = m->secrets.v[i];
        uint8_t want[32];
        if (s == NULL || s[0] == '\0')
            continue;
        if (wh_hmac_sha256(s, strlen(s), body, bodylen, want) == WH_OK)
            match |= wh_ct_equal(want, sizeof(want), given, sizeof(given));
        OPENSSL_cleanse(want, sizeof(want));
    }
    return match;
}

int wh_auth_token_verify(const wh_auth_method_conf_t *m, const char *value, size_t len)
{
    if (value == NULL)
        return 0;
    int match = 0;
    for (size_t i = 0; i < m->secrets.n; i++) {
        const char *s = m->secrets.v[i];
        if (s == NULL || s[0] == '\0')
            continue;
        match |= wh_ct_equal(s, strlen(s), value, len);
    }
    return match;
}

static void wh__why(char *why, size_t whylen, const char *reason)
{
    if (why != NULL && whylen > 0) {
        strncpy(why, reason, whylen - 1);
        why[whylen - 1] = '\0';
    }
}

/* Decodes one base64url JWT segment and parses it as a JSON object; NULL when it is not one. */
static json_t *wh__jwt_json(const char *seg, size_t len)
{
    uint8_t *buf = malloc(len / 4 * 3 + 3);
    if (buf == NULL)
        return NULL;
    json_t *j = NULL;
    long n = wh_base64_decode(seg, len, buf);
    if (n > 0)
        j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    free(buf);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* 1 when the claim is absent from the requirement (want NULL or "") or equals it. */
static int wh__claim_ok(json_t *payload, const char *name, const char *want)
{
    if (want == NULL || want[0] == '\0')
        return 1;
    json_t *v = json_object_get(payload, name);
    return json_is_string(v) && strcmp(json_string_value(v), want) == 0;
}

int wh_auth_jwt_verify(const wh_auth_conf_t *conf, const char *token, size_t len, time_t now,
                       char *why, size_t whylen)
{
    json_t *header = NULL, *payload = NULL;
    const char *reason = "malformed";
    int ok = 0;

    if (!wh__method_on(&conf->jwt)) {
        reason = "not configured";
        goto exit;
    }
    if (token == NULL || len == 0 || len > WH__JWT_MAX)
        goto exit;
    const char *d1 = memchr(token, '.', len);
    if (d1 == NULL)
        goto exit;
    const char *d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token));
    if (d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) != NULL)
        goto exit;
    size_t hlen = (size_t)(d1 - token), plen = (size_t)(d2 - d1 - 1);
    size_t slen = len - (size_t)(d2 + 1 - token);
    if (hlen == 0 || plen == 0 || slen == 0)
        goto exit;

    if ((header = wh__jwt_json(token, hlen)) == NULL)
        goto exit;
    /* Only HS256: "none" and other algorithms are refused before any signature work. */
    const char *alg = json_string_value(json_object_get(header, "alg"));
    if (alg == NULL || strcmp(alg, "HS256") != 0) {
        reason = "unsupported alg";
        goto exit;
    }

    /* An HS256 signature is 43 characters; anything much longer cannot match. */
    uint8_t sig[48];
    if (slen > 60) {
        reason = "bad signature";
        goto exit;
    }
    long siglen = wh_base64_decode(d2 + 1, slen, sig);
    if (siglen < 0)
        goto exit;
    int match = 0;
    for (size_t i = 0; i < conf->jwt.secrets.n; i++) {
        const char *s = conf->jwt.secrets.v[i];
        uint8_t want[32];
        if (s == NULL || s[0] == '\0')
            continue;
        if (wh_hmac_sha256(s, strlen(s), token, (size_t)(d2 - token), want) == WH_OK)
            match |= wh_ct_equal(want, sizeof(want), sig, (size_t)siglen);
        OPENSSL_cleanse(want, sizeof(want));
    }
    if (!match) {
        reason = "bad signature";
        goto exit;
    }

    if ((payload = wh__jwt_json(d1 + 1, plen)) == NULL)
        goto exit;
    double leeway = conf->jwt_leeway > 0 ? (double)conf->jwt_leeway : 0.0;
    json_t *exp = json_object_get(payload, "exp");
    if (!json_is_number(exp)) {
        reason = "missing exp";
        goto exit;
    }
    if ((double)now > json_number_value(exp) + leeway) {
        reason = "expired";
        goto exit;
    }
    json_t *iat = json_object_get(payload, "iat");
    if (iat != NULL) {
        if (!json_is_number(iat))
            goto exit;
        if (json_number_value(iat) > (double)now + leeway) {
            reason = "issued in the future";
            goto exit;
        }
    }
    if (!wh__claim_ok(payload, "app", conf->jwt_app) ||
        !wh__claim_ok(payload, "action", conf->jwt_action)) {
        reason = "wrong claims";
        goto exit;
    }
    reason = "ok";
    ok = 1;
exit:
    json_decref(header);
    json_decref(payload);
    wh__why(why, whylen, reason);
    return ok;
}

wh_auth_result_t wh_auth_apikey_check(const wh_auth_conf_t *conf, const char *apikey)
{
    if (apikey == NULL || strcmp(apikey, "Apikey not found") == 0 ||
        !wh__method_on(&conf->apikey))
        return WH_AUTH_ABSENT;
    return wh_auth_token_verify(&conf->apikey, apikey, strlen(apikey)) ? WH_AUTH_PASS
                                                                       : WH_AUTH_FAIL;
}

/* Finds the credentials of "Authorization: Bearer <token>" (scheme case-insensitive). Returns 0
 * when the header is another scheme, which leaves the JWT method without a credential. */
static int wh__bearer(const char *v, size_t len, const char **tok, size_t *toklen)
{
    size_t i = 0;
    while (i < len && (v[i] == ' ' || v[i] == '\t'))
        i++;
    if (len - i < 6 || strncasecmp(v + i, "bearer", 6) != 0)
        return 0;
    i += 6;
    if (i < len && v[i] != ' ' && v[i] != '\t')
        return 0; /* "Bearerx…" is some other scheme */
    while (i < len && (v[i] == ' ' || v[i] == '\t'))
        i++;
    size_t end = len;
    while (end > i && (v[end - 1] == ' ' || v[end - 1] == '\t'))
        end--;
    *tok = v + i;
    *toklen = end - i;
    return 1;
}

wh_auth_result_t wh_auth_check_headers(const wh_auth_conf_t *conf, const wh_auth_creds_t *creds,
                                       const void *body, size_t bodylen, time_t now)
{
    int passed = 0, failed = 0;

    if (creds->signature != NULL && wh__method_on(&conf->hmac)) {
        if (wh_auth_hmac_verify(&conf->hmac, creds->signature, creds->signature_len, body,
                                bodylen))
            passed = 1;
        else {
            failed = 1;
            wh_log(WH_LOG_DEBUG, "auth failed", "{s:s,s:s}", "method", "hmac", "reason",
                   "bad signature");
        }
    }
    if (creds->token != NULL && wh__method_on(&conf->token)) {
        if (wh_auth_token_verify(&conf->token, creds->token, creds->token_len))
            passed = 1;
        else {
            failed = 1;
            wh_log(WH_LOG_DEBUG, "auth failed", "{s:s,s:s}", "method", "token", "reason",
                   "wrong token");
        }
    }
    const char *jwt;
    size_t jwtlen;
    if (creds->authorization != NULL && wh__method_on(&conf->jwt) &&
        wh__bearer(creds->authorization, creds->authorization_len, &jwt, &jwtlen)) {
        char why[64];
        if (wh_auth_jwt_verify(conf, jwt, jwtlen, now, why, sizeof(why)))
            passed = 1;
        else {
            failed = 1;
            wh_log(WH_LOG_DEBUG, "auth failed", "{s:s,s:s}", "method", "jwt", "reason", why);
        }
    }
    if (failed)
        return WH_AUTH_FAIL;
    return passed ? WH_AUTH_PASS : WH_AUTH_ABSENT;
}
