/* Unit tests for runtime/auth.c: HMAC vectors, signatures, tokens, JWTs, apikey, the header
 * decision matrix, base64 and constant-time comparison. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include "wahook/auth.h"
#include "wahook/common.h"
#include "wahook/log.h"
#include "wh_test.h"

#define NOW ((time_t)1761142404)

static void hex_of(const uint8_t *b, size_t n, char *out) { wh_hex_encode(b, n, out); }

static void test_hmac_vectors(void)
{
    /* RFC 4231 test cases 1, 2 and 6 (key longer than the block size). */
    uint8_t key1[20], key6[131], out[32];
    char hex[65];
    memset(key1, 0x0b, sizeof(key1));
    memset(key6, 0xaa, sizeof(key6));
    CHECK_INT(wh_hmac_sha256(key1, sizeof(key1), "Hi There", 8, out), 0);
    hex_of(out, 32, hex);
    CHECK_STR(hex, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    const char *m2 = "what do ya want for nothing?";
    CHECK_INT(wh_hmac_sha256("Jefe", 4, m2, strlen(m2), out), 0);
    hex_of(out, 32, hex);
    CHECK_STR(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    const char *m6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    CHECK_INT(wh_hmac_sha256(key6, sizeof(key6), m6, strlen(m6), out), 0);
    hex_of(out, 32, hex);
    CHECK_STR(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    /* Again, now served from the per-thread cache: the reused key must give the same answer. */
    CHECK_INT(wh_hmac_sha256("Jefe", 4, m2, strlen(m2), out), 0);
    hex_of(out, 32, hex);
    CHECK_STR(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");

    /* More distinct keys than cache slots, twice round: every result matches one-shot HMAC(). */
    for (int round = 0; round < 2; round++) {
        for (int k = 0; k < 20; k++) {
            char key[16], msg[32];
            uint8_t want[32];
            unsigned int wl = 0;
            snprintf(key, sizeof(key), "key-%d", k);
            snprintf(msg, sizeof(msg), "message %d/%d", k, round);
            HMAC(EVP_sha256(), key, (int)strlen(key), (const uint8_t *)msg, strlen(msg), want,
                 &wl);
            CHECK_INT(wh_hmac_sha256(key, strlen(key), msg, strlen(msg), out), 0);
            CHECK(memcmp(out, want, 32) == 0);
        }
    }
    /* A secret at the same address but with different contents must not reuse the old key. */
    char buf[8] = "aaaa";
    uint8_t a[32], b[32];
    wh_hmac_sha256(buf, 4, "x", 1, a);
    memcpy(buf, "bbbb", 4);
    wh_hmac_sha256(buf, 4, "x", 1, b);
    CHECK(memcmp(a, b, 32) != 0);
    wh_hmac_sha256("bbbb", 4, "x", 1, a);
    CHECK(memcmp(a, b, 32) == 0);

    uint8_t d[32];
    wh_sha256("abc", 3, d);
    hex_of(d, 32, hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    wh_sha256("", 0, d);
    hex_of(d, 32, hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void *thread_hmac(void *arg)
{
    /* Leaves its cache behind on purpose: the thread-exit destructor must free it (LSan). */
    uint8_t *out = arg;
    wh_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, out);
    return NULL;
}

static void test_hmac_thread(void)
{
    uint8_t out[32];
    char hex[65];
    pthread_t t;
    CHECK_INT(pthread_create(&t, NULL, thread_hmac, out), 0);
    pthread_join(t, NULL);
    hex_of(out, 32, hex);
    CHECK_STR(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

static void conf_init(wh_auth_conf_t *c)
{
    memset(c, 0, sizeof(*c));
    c->hmac.header = (char *)"x-webhook-signature";
    c->hmac.prefix = (char *)"sha256=";
    c->token.header = (char *)"x-webhook-token";
    c->jwt_leeway = 1800;
    c->jwt_app = (char *)"evolution";
    c->jwt_action = (char *)"webhook";
}

static void conf_free(wh_auth_conf_t *c)
{
    wh_strlist_clear(&c->hmac.secrets);
    wh_strlist_clear(&c->token.secrets);
    wh_strlist_clear(&c->jwt.secrets);
    wh_strlist_clear(&c->apikey.secrets);
}

static void push(wh_strlist_t *l, const char *s) { wh_strlist_push(l, s, strlen(s)); }

static void test_hmac_verify(void)
{
    wh_auth_conf_t c;
    conf_init(&c);
    push(&c.hmac.secrets, "s3cret");
    const char *body = "{\"event\":\"messages.upsert\"}";
    size_t blen = strlen(body);
    char sig[7 + 65], tmp[128];

    wh_auth_sign("s3cret", 6, "sha256=", body, blen, sig);
    CHECK_INT(strlen(sig), 7 + 64);
    CHECK(strncmp(sig, "sha256=", 7) == 0);
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, sig, strlen(sig), body, blen), 1);
    /* The signed text is what the reference HMAC gives. */
    uint8_t want[32];
    unsigned int wl;
    char wanthex[65];
    HMAC(EVP_sha256(), "s3cret", 6, (const uint8_t *)body, blen, want, &wl);
    hex_of(want, 32, wanthex);
    CHECK_STR(sig + 7, wanthex);

    /* Other body, wrong secret. */
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, sig, strlen(sig), "{}", 2), 0);
    wh_auth_sign("other", 5, "sha256=", body, blen, tmp);
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, tmp, strlen(tmp), body, blen), 0);

    /* Wrong or missing prefix. */
    snprintf(tmp, sizeof(tmp), "sha1=%s", sig + 7);
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, tmp, strlen(tmp), body, blen), 0);
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, sig + 7, 64, body, blen), 0);

    /* Upper-case hex (and prefix) is accepted. */
    strcpy(tmp, sig);
    for (char *p = tmp; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, tmp, strlen(tmp), body, blen), 1);

    /* Truncated, extended, non-hex, one bit flipped. */
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, sig, strlen(sig) - 2, body, blen), 0);
    snprintf(tmp, sizeof(tmp), "%s0", sig);
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, tmp, strlen(tmp), body, blen), 0);
    strcpy(tmp, sig);
    tmp[10] = 'g';
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, tmp, strlen(tmp), body, blen), 0);
    strcpy(tmp, sig);
    tmp[strlen(tmp) - 1] = tmp[strlen(tmp) - 1] == '0' ? '1' : '0';
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, tmp, strlen(tmp), body, blen), 0);
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, "", 0, body, blen), 0);
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, NULL, 0, body, blen), 0);

    /* Rotation: a signature under the second secret matches. */
    push(&c.hmac.secrets, "n3w-secret");
    wh_auth_sign("n3w-secret", 10, "sha256=", body, blen, tmp);
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, tmp, strlen(tmp), body, blen), 1);
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, sig, strlen(sig), body, blen), 1);

    /* Empty prefix: bare hex; NULL prefix: the default "sha256=". */
    c.hmac.prefix = (char *)"";
    wh_auth_sign("s3cret", 6, "", body, blen, tmp);
    CHECK_INT(strlen(tmp), 64);
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, tmp, 64, body, blen), 1);
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, sig, strlen(sig), body, blen), 0);
    c.hmac.prefix = NULL;
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, sig, strlen(sig), body, blen), 1);

    /* An empty body signs too. */
    wh_auth_sign("s3cret", 6, NULL, "", 0, tmp);
    CHECK_INT(wh_auth_hmac_verify(&c.hmac, tmp, strlen(tmp), "", 0), 1);
    conf_free(&c);
}

static void test_token_verify(void)
{
    wh_auth_conf_t c;
    conf_init(&c);
    CHECK_INT(wh_auth_token_verify(&c.token, "anything", 8), 0); /* no secrets */
    push(&c.token.secrets, "tok-old");
    push(&c.token.secrets, "tok-new");
    CHECK_INT(wh_auth_token_verify(&c.token, "tok-old", 7), 1);
    CHECK_INT(wh_auth_token_verify(&c.token, "tok-new", 7), 1);
    CHECK_INT(wh_auth_token_verify(&c.token, "tok-ne", 6), 0);
    CHECK_INT(wh_auth_token_verify(&c.token, "tok-newx", 8), 0);
    CHECK_INT(wh_auth_token_verify(&c.token, "TOK-NEW", 7), 0);
    CHECK_INT(wh_auth_token_verify(&c.token, "", 0), 0);
    CHECK_INT(wh_auth_token_verify(&c.token, "tok-new-with-tail", 7), 1); /* len is honoured */
    conf_free(&c);
}

/* base64url without padding, written here so the tests do not lean on the decoder under test. */
static void b64url(const void *in, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const uint8_t *p = in;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | p[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = a[(acc >> bits) & 63];
        }
    }
    if (bits > 0)
        out[o++] = a[(acc << (6 - bits)) & 63];
    out[o] = '\0';
}

/* Builds header.payload.signature with HMAC-SHA256 under secret. */
static void make_jwt(const char *header, const char *payload, const char *secret, char *out)
{
    char h[512], p[1024];
    b64url(header, strlen(header), h);
    b64url(payload, strlen(payload), p);
    int n = sprintf(out, "%s.%s", h, p);
    uint8_t mac[32];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const uint8_t *)out, (size_t)n, mac, &ml);
    out[n++] = '.';
    b64url(mac, 32, out + n);
}

static const char *HS256 = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

static void claims(char *out, long iat, long exp, const char *app, const char *action)
{
    sprintf(out, "{\"iat\":%ld,\"exp\":%ld,\"app\":\"%s\",\"action\":\"%s\"}", iat, exp, app,
            action);
}

static int jwt_ok(const wh_auth_conf_t *c, const char *tok, time_t now, char *why)
{
    return wh_auth_jwt_verify(c, tok, strlen(tok), now, why, 64);
}

static void test_jwt(void)
{
    wh_auth_conf_t c;
    conf_init(&c);
    char tok[2048], pl[512], why[64];
    const char *secret = "jwt-key-1";

    claims(pl, NOW, NOW + 600, "evolution", "webhook");
    make_jwt(HS256, pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0); /* jwt not configured */
    push(&c.jwt.secrets, secret);

    CHECK_INT(jwt_ok(&c, tok, NOW, why), 1);
    CHECK_STR(why, "ok");
    /* The exp boundary, and the leeway after it. */
    CHECK_INT(jwt_ok(&c, tok, NOW + 600, why), 1);
    CHECK_INT(jwt_ok(&c, tok, NOW + 600 + 1800, why), 1);
    CHECK_INT(jwt_ok(&c, tok, NOW + 600 + 1801, why), 0);
    CHECK_STR(why, "expired");
    /* Already expired at issue time, well beyond the leeway. */
    claims(pl, NOW - 4000, NOW - 3400, "evolution", "webhook");
    make_jwt(HS256, pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "expired");
    /* Expired 20 minutes ago: a late Evolution retry, inside the 30-minute leeway. */
    claims(pl, NOW - 1800, NOW - 1200, "evolution", "webhook");
    make_jwt(HS256, pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 1);
    c.jwt_leeway = 0;
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "expired");
    c.jwt_leeway = 1800;

    /* iat in the future beyond the leeway. */
    claims(pl, NOW + 3600, NOW + 4200, "evolution", "webhook");
    make_jwt(HS256, pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_CONTAINS(why, "future");
    claims(pl, NOW + 60, NOW + 660, "evolution", "webhook"); /* small clock skew is fine */
    make_jwt(HS256, pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 1);

    /* exp missing or not a number; iat optional. */
    make_jwt(HS256, "{\"iat\":1761142404,\"app\":\"evolution\",\"action\":\"webhook\"}", secret,
             tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "missing exp");
    make_jwt(HS256, "{\"exp\":\"1761143004\",\"app\":\"evolution\",\"action\":\"webhook\"}",
             secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    make_jwt(HS256, "{\"exp\":1761143004.5,\"app\":\"evolution\",\"action\":\"webhook\"}", secret,
             tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 1);

    /* Algorithms other than HS256 are refused, whatever the signature. */
    claims(pl, NOW, NOW + 600, "evolution", "webhook");
    make_jwt("{\"alg\":\"none\",\"typ\":\"JWT\"}", pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "unsupported alg");
    {
        char h[128], p[512];
        const char *none = "{\"alg\":\"none\"}";
        b64url(none, strlen(none), h);
        b64url(pl, strlen(pl), p);
        snprintf(tok, sizeof(tok), "%s.%s.", h, p); /* unsigned "none" token */
        CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    }
    make_jwt("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "unsupported alg");
    make_jwt("{\"alg\":\"hs256\"}", pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    make_jwt("{\"typ\":\"JWT\"}", pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "unsupported alg");
    make_jwt("{\"alg\":\"HS256\",\"alg\":\"none\"}", pl, secret, tok); /* duplicate keys */
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);

    /* Wrong claims. */
    claims(pl, NOW, NOW + 600, "other", "webhook");
    make_jwt(HS256, pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "wrong claims");
    claims(pl, NOW, NOW + 600, "evolution", "login");
    make_jwt(HS256, pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "wrong claims");
    make_jwt(HS256, "{\"exp\":1761143004,\"action\":\"webhook\"}", secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "wrong claims");
    /* With no app/action requirement configured, any claims pass. */
    c.jwt_app = NULL;
    c.jwt_action = (char *)"";
    claims(pl, NOW, NOW + 600, "other", "login");
    make_jwt(HS256, pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 1);
    c.jwt_app = (char *)"evolution";
    c.jwt_action = (char *)"webhook";

    /* Tampered payload keeps the old signature. */
    claims(pl, NOW, NOW + 600, "evolution", "webhook");
    make_jwt(HS256, pl, secret, tok);
    {
        char forged[2048], p2[512], p2b[1024];
        claims(p2, NOW, NOW + 999999, "evolution", "webhook");
        b64url(p2, strlen(p2), p2b);
        const char *d1 = strchr(tok, '.'), *d2 = strrchr(tok, '.');
        snprintf(forged, sizeof(forged), "%.*s.%s%s", (int)(d1 - tok), tok, p2b, d2);
        CHECK_INT(jwt_ok(&c, forged, NOW, why), 0);
        CHECK_STR(why, "bad signature");
        /* Signature bit flipped. */
        strcpy(forged, tok);
        char *last = forged + strlen(forged) - 2;
        *last = *last == 'A' ? 'B' : 'A';
        CHECK_INT(jwt_ok(&c, forged, NOW, why), 0);
        /* Signature cut short. */
        strcpy(forged, tok);
        forged[strlen(forged) - 4] = '\0';
        CHECK_INT(jwt_ok(&c, forged, NOW, why), 0);
    }

    /* Wrong secret; then rotation makes it right. */
    make_jwt(HS256, pl, "jwt-key-2", tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "bad signature");
    CHECK(strstr(why, "jwt-key") == NULL);
    push(&c.jwt.secrets, "jwt-key-2");
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 1);

    /* Malformed: two parts, four parts, empty parts, bad base64, non-JSON, non-object. */
    make_jwt(HS256, pl, secret, tok);
    {
        char bad[2100];
        const char *d2 = strrchr(tok, '.');
        snprintf(bad, sizeof(bad), "%.*s", (int)(d2 - tok), tok);
        CHECK_INT(jwt_ok(&c, bad, NOW, why), 0);
        CHECK_STR(why, "malformed");
        snprintf(bad, sizeof(bad), "%s.xyz", tok);
        CHECK_INT(jwt_ok(&c, bad, NOW, why), 0);
        CHECK_STR(why, "malformed");
        snprintf(bad, sizeof(bad), "%s", tok);
        bad[3] = '*';
        CHECK_INT(jwt_ok(&c, bad, NOW, why), 0);
        CHECK_STR(why, "malformed");
        CHECK_INT(jwt_ok(&c, "..", NOW, why), 0);
        CHECK_STR(why, "malformed");
        CHECK_INT(jwt_ok(&c, "", NOW, why), 0);
        CHECK_STR(why, "malformed");
        CHECK_INT(wh_auth_jwt_verify(&c, NULL, 0, NOW, why, sizeof(why)), 0);
    }
    make_jwt("not json", pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "malformed");
    make_jwt("[\"HS256\"]", pl, secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "malformed");
    make_jwt(HS256, "exp=1761143004", secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "malformed");
    make_jwt(HS256, "[1761143004]", secret, tok);
    CHECK_INT(jwt_ok(&c, tok, NOW, why), 0);
    CHECK_STR(why, "malformed");

    /* A tiny why buffer is truncated, never overrun. */
    make_jwt(HS256, pl, "nope", tok);
    char small[4];
    CHECK_INT(wh_auth_jwt_verify(&c, tok, strlen(tok), NOW, small, sizeof(small)), 0);
    CHECK_STR(small, "bad");
    conf_free(&c);
}

static void test_apikey(void)
{
    wh_auth_conf_t c;
    conf_init(&c);
    CHECK_INT(wh_auth_apikey_check(&c, "B6D711FCDE4D"), WH_AUTH_ABSENT); /* not configured */
    push(&c.apikey.secrets, "B6D711FCDE4D");
    push(&c.apikey.secrets, "second-instance-token");
    CHECK_INT(wh_auth_apikey_check(&c, NULL), WH_AUTH_ABSENT);
    CHECK_INT(wh_auth_apikey_check(&c, "Apikey not found"), WH_AUTH_ABSENT);
    CHECK_INT(wh_auth_apikey_check(&c, "B6D711FCDE4D"), WH_AUTH_PASS);
    CHECK_INT(wh_auth_apikey_check(&c, "second-instance-token"), WH_AUTH_PASS);
    CHECK_INT(wh_auth_apikey_check(&c, "b6d711fcde4d"), WH_AUTH_FAIL);
    CHECK_INT(wh_auth_apikey_check(&c, "B6D711FCDE4"), WH_AUTH_FAIL);
    CHECK_INT(wh_auth_apikey_check(&c, ""), WH_AUTH_FAIL);
    conf_free(&c);
}

static wh_auth_creds_t creds_of(const char *sig, const char *tok, const char *authz)
{
    wh_auth_creds_t cr = {0};
    cr.signature = sig;
    cr.signature_len = sig ? strlen(sig) : 0;
    cr.token = tok;
    cr.token_len = tok ? strlen(tok) : 0;
    cr.authorization = authz;
    cr.authorization_len = authz ? strlen(authz) : 0;
    return cr;
}

static void test_check_headers(void)
{
    wh_auth_conf_t c;
    conf_init(&c);
    const char *body = "{\"event\":\"connection.update\"}";
    size_t blen = strlen(body);
    char good_sig[80], bad_sig[80], jwt[1024], pl[256], bearer[1100], stale[1100];
    wh_auth_sign("hk", 2, "sha256=", body, blen, good_sig);
    wh_auth_sign("wrong", 5, "sha256=", body, blen, bad_sig);
    claims(pl, NOW, NOW + 600, "evolution", "webhook");
    make_jwt(HS256, pl, "jk", jwt);
    snprintf(bearer, sizeof(bearer), "Bearer %s", jwt);
    wh_auth_creds_t cr;

    CHECK_INT(wh_auth_any_configured(&c), 0);
    /* Nothing configured: every credential is ignored. */
    cr = creds_of(good_sig, "tk", bearer);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_ABSENT);

    push(&c.token.secrets, "tk");
    CHECK_INT(wh_auth_any_configured(&c), 1);
    /* Token configured; a random signature header or Authorization is ignored. */
    cr = creds_of(bad_sig, "tk", "Bearer garbage");
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_PASS);
    cr = creds_of(bad_sig, NULL, "Bearer garbage");
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_ABSENT);
    cr = creds_of(NULL, NULL, NULL);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_ABSENT);
    cr = creds_of(NULL, "tk2", NULL);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_FAIL);
    cr = creds_of(NULL, "", NULL); /* present but empty is wrong, not absent */
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_FAIL);

    push(&c.hmac.secrets, "hk");
    /* Token right but signature wrong: the wrong one fails the request. */
    cr = creds_of(bad_sig, "tk", NULL);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_FAIL);
    cr = creds_of(good_sig, "tk", NULL);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_PASS);
    cr = creds_of(good_sig, NULL, NULL);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_PASS);
    cr = creds_of(good_sig, "nope", NULL);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_FAIL);
    /* The signature covers the body that arrived. */
    cr = creds_of(good_sig, NULL, NULL);
    CHECK_INT(wh_auth_check_headers(&c, &cr, "{}", 2, NOW), WH_AUTH_FAIL);

    push(&c.jwt.secrets, "jk");
    cr = creds_of(NULL, NULL, bearer);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_PASS);
    /* Scheme is case-insensitive; extra spaces are tolerated. */
    snprintf(stale, sizeof(stale), "bEaReR   %s  ", jwt);
    cr = creds_of(NULL, NULL, stale);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_PASS);
    /* Not a Bearer scheme: absent for jwt. */
    cr = creds_of(NULL, NULL, "Basic dXNlcjpwYXNz");
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_ABSENT);
    snprintf(stale, sizeof(stale), "Bearer%s", jwt);
    cr = creds_of(NULL, NULL, stale);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_ABSENT);
    /* Bearer with a bad or empty token fails. */
    cr = creds_of(NULL, NULL, "Bearer abc.def.ghi");
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_FAIL);
    cr = creds_of(NULL, NULL, "Bearer");
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_FAIL);
    /* Good token with an expired JWT fails; good JWT with a bad token fails. */
    cr = creds_of(NULL, "tk", bearer);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW + 600 + 1801), WH_AUTH_FAIL);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW + 600 + 1800), WH_AUTH_PASS);
    cr = creds_of(good_sig, "bad", bearer);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_FAIL);
    cr = creds_of(good_sig, "tk", bearer);
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_PASS);
    /* Lengths are honoured, not NUL terminators. */
    cr = creds_of(good_sig, "tkXX", NULL);
    cr.token_len = 2;
    CHECK_INT(wh_auth_check_headers(&c, &cr, body, blen, NOW), WH_AUTH_PASS);

    /* An apikey-only route has no header method: headers decide nothing. */
    wh_auth_conf_t k;
    conf_init(&k);
    push(&k.apikey.secrets, "inst-token");
    CHECK_INT(wh_auth_any_configured(&k), 1);
    cr = creds_of(bad_sig, "x", bearer);
    CHECK_INT(wh_auth_check_headers(&k, &cr, body, blen, NOW), WH_AUTH_ABSENT);
    conf_free(&k);

    /* Empty secrets do not turn a method on and never match. */
    wh_auth_conf_t e;
    conf_init(&e);
    wh_strlist_push(&e.token.secrets, "", 0);
    CHECK_INT(wh_auth_any_configured(&e), 0);
    cr = creds_of(NULL, "", NULL);
    CHECK_INT(wh_auth_check_headers(&e, &cr, body, blen, NOW), WH_AUTH_ABSENT);
    CHECK_INT(wh_auth_token_verify(&e.token, "", 0), 0);
    conf_free(&e);
    conf_free(&c);
}

static void b64_case(const char *plain, const char *enc)
{
    char out[128];
    uint8_t dec[128];
    size_t n = wh_base64_encode(plain, strlen(plain), out);
    CHECK_STR(out, enc);
    CHECK_INT(n, strlen(enc));
    long d = wh_base64_decode(enc, strlen(enc), dec);
    CHECK_INT(d, (long)strlen(plain));
    CHECK(d >= 0 && memcmp(dec, plain, (size_t)d) == 0);
}

static void test_base64(void)
{
    /* RFC 4648 section 10. */
    b64_case("", "");
    b64_case("f", "Zg==");
    b64_case("fo", "Zm8=");
    b64_case("foo", "Zm9v");
    b64_case("foob", "Zm9vYg==");
    b64_case("fooba", "Zm9vYmE=");
    b64_case("foobar", "Zm9vYmFy");

    uint8_t out[64];
    /* Padding optional. */
    CHECK_INT(wh_base64_decode("Zg", 2, out), 1);
    CHECK_INT(out[0], 'f');
    CHECK_INT(wh_base64_decode("Zm9vYmE", 7, out), 5);
    CHECK(memcmp(out, "fooba", 5) == 0);
    /* Both alphabets. */
    CHECK_INT(wh_base64_decode("-_8", 3, out), 2);
    CHECK_INT(out[0], 0xfb);
    CHECK_INT(out[1], 0xff);
    CHECK_INT(wh_base64_decode("+/8=", 4, out), 2);
    CHECK_INT(out[0], 0xfb);
    CHECK_INT(out[1], 0xff);
    /* Binary round trip of every byte value. */
    uint8_t all[256], back[256];
    char enc[400];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    size_t el = wh_base64_encode(all, 256, enc);
    CHECK_INT(el, 344);
    CHECK_INT(wh_base64_decode(enc, el, back), 256);
    CHECK(memcmp(all, back, 256) == 0);

    /* Garbage. */
    CHECK_INT(wh_base64_decode("Z", 1, out), -1);        /* lone 6 bits */
    CHECK_INT(wh_base64_decode("Zm9vY", 5, out), -1);
    CHECK_INT(wh_base64_decode("Zg=", 3, out), -1);      /* incomplete padding */
    CHECK_INT(wh_base64_decode("Zg===", 5, out), -1);    /* too much padding */
    CHECK_INT(wh_base64_decode("Zm8==", 5, out), -1);
    CHECK_INT(wh_base64_decode("Zm=9v", 5, out), -1);    /* padding inside */
    CHECK_INT(wh_base64_decode("Zm9v!", 5, out), -1);
    CHECK_INT(wh_base64_decode(" Zm9v", 5, out), -1);
    CHECK_INT(wh_base64_decode("Zm9v\n", 5, out), -1);
    CHECK_INT(wh_base64_decode("Zh==", 4, out), -1);     /* non-zero trailing bits */
    CHECK_INT(wh_base64_decode("Zm9=", 4, out), -1);
    CHECK_INT(wh_base64_decode("====", 4, out), -1);
    CHECK_INT(wh_base64_decode("Zm9v\0Zm9v", 9, out), -1);
    CHECK_INT(wh_base64_decode("", 0, out), 0);

    char hex[9];
    const uint8_t bytes[4] = {0x00, 0x0f, 0xa0, 0xff};
    wh_hex_encode(bytes, 4, hex);
    CHECK_STR(hex, "000fa0ff");
    wh_hex_encode(bytes, 0, hex);
    CHECK_STR(hex, "");
}

static void test_ct_equal(void)
{
    CHECK_INT(wh_ct_equal("abc", 3, "abc", 3), 1);
    CHECK_INT(wh_ct_equal("abc", 3, "abd", 3), 0);
    CHECK_INT(wh_ct_equal("abc", 3, "xbc", 3), 0);
    CHECK_INT(wh_ct_equal("abc", 3, "abcd", 4), 0);
    CHECK_INT(wh_ct_equal("abcd", 4, "abc", 3), 0);
    CHECK_INT(wh_ct_equal("abc\0", 4, "abc", 3), 0); /* a zero byte is not the same as nothing */
    CHECK_INT(wh_ct_equal("", 0, "", 0), 1);
    CHECK_INT(wh_ct_equal("", 0, "a", 1), 0);
}

int main(void)
{
    wh_log_set_level(WH_LOG_ERROR);
    test_hmac_vectors();
    test_hmac_thread();
    test_hmac_verify();
    test_token_verify();
    test_jwt();
    test_apikey();
    test_check_headers();
    test_base64();
    test_ct_equal();
    wh_auth_thread_cleanup();
    wh_auth_thread_cleanup(); /* twice is harmless */
    WH_TEST_MAIN_END();
}
