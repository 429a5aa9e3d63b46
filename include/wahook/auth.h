/* Inbound authentication: HMAC-SHA256 body signatures, static tokens, Evolution's HS256 JWT and
 * the body apikey, with several secrets per method and constant-time comparisons throughout. */
#ifndef WAHOOK_AUTH_H
#define WAHOOK_AUTH_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include "wahook/config.h"

typedef enum wh_auth_result {
    WH_AUTH_ABSENT = 0, /* no credential for any configured method */
    WH_AUTH_PASS = 1,   /* a configured method passed and none present was wrong */
    WH_AUTH_FAIL = 2,   /* a credential for a configured method is present and wrong */
} wh_auth_result_t;

/* The credentials of one request as they arrived, unparsed. NULL means the header is absent. */
typedef struct wh_auth_creds {
    const char *signature; size_t signature_len;         /* value of conf->hmac.header */
    const char *token; size_t token_len;                 /* value of conf->token.header */
    const char *authorization; size_t authorization_len; /* value of Authorization */
} wh_auth_creds_t;

/* HMAC-SHA256 of msg under key into out. Returns 0 or WH_ERR. */
int wh_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                   uint8_t out[32]);
/* SHA-256 of msg into out. */
void wh_sha256(const void *msg, size_t len, uint8_t out[32]);
/* Lower-case hex of n bytes into out (2n+1 bytes, NUL-terminated). */
void wh_hex_encode(const uint8_t *in, size_t n, char *out);

/* Standard base64 (with padding) into out; returns the length written (excluding the NUL
 * terminator). out must hold 4*ceil(n/3)+1 bytes. */
size_t wh_base64_encode(const void *in, size_t n, char *out);
/* Decodes standard or URL-safe base64, padding optional. Returns the decoded length or -1 on
 * invalid input. out must hold 3*ceil(n/4) bytes. */
long wh_base64_decode(const char *in, size_t n, uint8_t *out);

/* Writes "sha256=<hex>"-style signature text: prefix + hex(HMAC(secret, body)). out must hold
 * strlen(prefix)+65 bytes. */
void wh_auth_sign(const char *secret, size_t secretlen, const char *prefix, const void *body,
                  size_t bodylen, char *out);

/* Checks one signature header value against every secret. Returns 1 on a match. */
int wh_auth_hmac_verify(const wh_auth_method_conf_t *m, const char *value, size_t len,
                        const void *body, size_t bodylen);
/* Checks a static token against every secret. Returns 1 on a match. */
int wh_auth_token_verify(const wh_auth_method_conf_t *m, const char *value, size_t len);
/* Verifies an HS256 JWT (the bare token, without "Bearer "): alg, signature under any secret,
 * exp/iat with leeway, and the app/action claims when set. Returns 1 when valid; otherwise 0
 * with a short reason in why (never a secret). */
int wh_auth_jwt_verify(const wh_auth_conf_t *conf, const char *token, size_t len, time_t now,
                       char *why, size_t whylen);
/* Checks a body apikey (NULL when absent, null, or "Apikey not found"). */
wh_auth_result_t wh_auth_apikey_check(const wh_auth_conf_t *conf, const char *apikey);

/* Decides on the header credentials of one request: every configured method whose credential is
 * present is checked; a wrong one fails the request even if another passes; credentials for
 * methods that are not configured are ignored. */
wh_auth_result_t wh_auth_check_headers(const wh_auth_conf_t *conf, const wh_auth_creds_t *creds,
                                       const void *body, size_t bodylen, time_t now);

/* 1 when at least one method has a secret. */
int wh_auth_any_configured(const wh_auth_conf_t *conf);

/* Frees the calling thread's cache of keyed HMAC contexts (threads that exit free theirs
 * automatically; call this on the main thread or before unloading). Safe to call repeatedly. */
void wh_auth_thread_cleanup(void);

#endif
