/* Tests for the webhook envelope: the shared contact-key vectors, every Evolution fixture (event,
 * instance, dedup id, redaction, media omission) and hostile or malformed bodies. */
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "wahook/common.h"
#include "wahook/envelope.h"
#include "wh_test.h"

#define FIXDIR WH_FIXTURES_DIR "/evolution"
#define FIX_APIKEY "B1E2C3D4-A5F6-4789-9ABC-DEF012345678"

static const wh_envelope_opts_t no_media = {0};
static const wh_envelope_opts_t keep_media = {1};

static char *read_fixture(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", FIXDIR, name);
    return wh_test_read_file(path, len);
}

/* Parses a NUL-terminated body; returns the WH_* code. */
static int parse_str(wh_envelope_t *env, const char *body, char *err, size_t errlen)
{
    return wh_envelope_parse(env, body, strlen(body), &no_media, err, errlen);
}

static int is_hex64(const char *s)
{
    if (s == NULL || strlen(s) != 64)
        return 0;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return 0;
    return 1;
}

static int is_body_hash(const char *id)
{
    return id != NULL && strncmp(id, "sha256:", 7) == 0 && is_hex64(id + 7);
}

/* Counts apikey/api_key members (any case, any depth) whose value is neither null nor
 * "[redacted]"; walks with an explicit stack like the code under test. */
static int unredacted_secrets(const char *body, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
    if (root == NULL)
        return -1;
    size_t cap = 4096, n = 0;
    json_t **stack = malloc(cap * sizeof(*stack));
    int bad = 0;
    stack[n++] = root;
    while (n > 0 && n < cap - 1) {
        json_t *v = stack[--n];
        if (json_is_array(v)) {
            for (size_t i = 0; i < json_array_size(v) && n < cap - 1; i++)
                stack[n++] = json_array_get(v, i);
        } else if (json_is_object(v)) {
            const char *k;
            json_t *m;
            json_object_foreach(v, k, m) {
                if ((strcasecmp(k, "apikey") == 0 || strcasecmp(k, "api_key") == 0) &&
                    !json_is_null(m) &&
                    !(json_is_string(m) && strcmp(json_string_value(m), "[redacted]") == 0))
                    bad++;
                if (n < cap - 1)
                    stack[n++] = m;
            }
        }
    }
    free(stack);
    json_decref(root);
    return bad;
}

static json_t *load_stored(const wh_envelope_t *env)
{
    json_error_t jerr;
    return json_loadb(env->body, env->body_len, JSON_ALLOW_NUL, &jerr);
}

/* ---- shared contact-key vectors ------------------------------------------------------------ */

static int vector_names_fixture(json_t *cases, const char *fixture)
{
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *f = json_string_value(json_object_get(c, "fixture"));
        if (f != NULL && strcmp(f, fixture) == 0)
            return 1;
    }
    return 0;
}

static void test_vectors(void)
{
    json_error_t jerr;
    json_t *vec = json_load_file(WH_SOURCE_DIR "/tests/vectors/contact-keys.json", 0, &jerr);
    CHECK(vec != NULL);
    if (vec == NULL) {
        fprintf(stderr, "contact-keys.json: %s at line %d\n", jerr.text, jerr.line);
        return;
    }
    json_t *cases = json_object_get(vec, "cases");
    CHECK(json_is_array(cases) && json_array_size(cases) >= 40);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *fixture = json_string_value(json_object_get(c, "fixture"));
        json_t *expect = json_object_get(c, "expect");
        char *body;
        size_t len;
        CHECK(name != NULL && json_is_object(expect));
        if (name == NULL || !json_is_object(expect))
            continue;
        if (fixture != NULL) {
            body = read_fixture(fixture, &len);
        } else {
            body = json_dumps(json_object_get(c, "body"), JSON_COMPACT);
            CHECK(body != NULL);
            if (body == NULL)
                continue;
            len = strlen(body);
        }
        wh_envelope_t env;
        char err[128];
        int rc = wh_envelope_parse(&env, body, len, &no_media, err, sizeof(err));
        if (rc != WH_OK)
            fprintf(stderr, "vector \"%s\": %s\n", name, err);
        CHECK_INT(rc, WH_OK);
        const char *want_phone = json_string_value(json_object_get(expect, "phone"));
        const char *want_lid = json_string_value(json_object_get(expect, "lid"));
        const char *want_key = json_string_value(json_object_get(expect, "key"));
        const char *alias = NULL;
        if (env.lid != NULL)
            alias = json_string_value(json_object_get(json_object_get(c, "alias"), env.lid));
        char *key = wh_contact_key(env.phone, env.lid, alias);
        int ok = (env.phone == NULL ? want_phone == NULL
                                    : want_phone != NULL && strcmp(env.phone, want_phone) == 0) &&
                 (env.lid == NULL ? want_lid == NULL
                                  : want_lid != NULL && strcmp(env.lid, want_lid) == 0) &&
                 (key == NULL ? want_key == NULL : want_key != NULL && strcmp(key, want_key) == 0);
        if (!ok)
            fprintf(stderr, "vector \"%s\": got phone=%s lid=%s key=%s\n", name,
                    env.phone ? env.phone : "null", env.lid ? env.lid : "null",
                    key ? key : "null");
        CHECK(ok);

        /* The helper exposed to other stages answers the same on the same tree. */
        json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
        char *phone = (char *)1, *lid = (char *)1;
        wh_envelope_contact(root, &phone, &lid);
        CHECK_STR(phone, env.phone);
        CHECK_STR(lid, env.lid);
        free(phone);
        free(lid);
        json_decref(root);
        free(key);
        wh_envelope_clear(&env);
        free(body);
    }

    /* Every fixture must be in the shared vector file, so a new fixture cannot be forgotten. */
    DIR *d = opendir(FIXDIR);
    CHECK(d != NULL);
    int seen = 0;
    for (struct dirent *de; d != NULL && (de = readdir(d)) != NULL;) {
        size_t n = strlen(de->d_name);
        if (n < 6 || strcmp(de->d_name + n - 5, ".json") != 0)
            continue;
        seen++;
        if (!vector_names_fixture(cases, de->d_name))
            fprintf(stderr, "fixture %s has no case in contact-keys.json\n", de->d_name);
        CHECK(vector_names_fixture(cases, de->d_name));
    }
    if (d != NULL)
        closedir(d);
    CHECK(seen >= 20);
    json_decref(vec);
}

/* ---- fixtures ------------------------------------------------------------------------------ */

static void check_fixture(const char *name)
{
    size_t len;
    char *body = read_fixture(name, &len);
    json_error_t jerr;
    json_t *orig = json_loadb(body, len, 0, &jerr);
    CHECK(orig != NULL);
    wh_envelope_t env;
    char err[128];
    int rc = wh_envelope_parse(&env, body, len, &no_media, err, sizeof(err));
    CHECK_INT(rc, WH_OK);
    if (rc != WH_OK) {
        fprintf(stderr, "%s: %s\n", name, err);
        goto out;
    }
    const char *event = json_string_value(json_object_get(orig, "event"));
    json_t *data = json_object_get(orig, "data");
    CHECK_STR(env.event, event);
    CHECK_STR(env.instance, "acme-bot");
    CHECK_STR(env.apikey, FIX_APIKEY);

    /* Dedup id, from the fixture's own fields. */
    if (strcmp(event, "messages.upsert") == 0 || strcmp(event, "send.message") == 0) {
        CHECK_STR(env.dedup_id, json_string_value(json_object_get(json_object_get(data, "key"), "id")));
    } else if (strcmp(event, "messages.update") == 0) {
        char want[256];
        snprintf(want, sizeof(want), "%s:%s", json_string_value(json_object_get(data, "keyId")),
                 json_string_value(json_object_get(data, "status")));
        CHECK_STR(env.dedup_id, want);
    } else {
        CHECK(is_body_hash(env.dedup_id));
    }

    /* Stored body: compact, valid JSON, same leading key order, no secret left. */
    CHECK(env.body != NULL && env.body_len == strlen(env.body));
    CHECK(strstr(env.body, FIX_APIKEY) == NULL);
    CHECK_INT(unredacted_secrets(env.body, env.body_len), 0);
    CHECK(strstr(env.body, "\"apikey\":\"[redacted]\"") != NULL);
    CHECK(strchr(env.body, '\n') == NULL);
    CHECK(env.body_len < len);
    char head[160];
    snprintf(head, sizeof(head), "{\"event\":\"%s\",\"instance\":\"acme-bot\",\"data\":", event);
    CHECK(strncmp(env.body, head, strlen(head)) == 0);
    json_t *stored = load_stored(&env);
    CHECK(stored != NULL);
    /* Apart from the redacted apikey (and the omitted media), the stored body is the original. */
    json_object_set_new(orig, "apikey", json_string("[redacted]"));
    if (strcmp(name, "messages-upsert-image-base64.json") != 0)
        CHECK(json_equal(orig, stored));
    json_decref(stored);
out:
    wh_envelope_clear(&env);
    json_decref(orig);
    free(body);
}

static void test_fixtures(void)
{
    DIR *d = opendir(FIXDIR);
    CHECK(d != NULL);
    int n = 0;
    for (struct dirent *de; d != NULL && (de = readdir(d)) != NULL;) {
        size_t l = strlen(de->d_name);
        if (l > 5 && strcmp(de->d_name + l - 5, ".json") == 0) {
            check_fixture(de->d_name);
            n++;
        }
    }
    if (d != NULL)
        closedir(d);
    CHECK(n >= 20);
}

static void expect_dedup(const char *fixture, const char *want)
{
    size_t len;
    char *body = read_fixture(fixture, &len);
    wh_envelope_t env;
    CHECK_INT(wh_envelope_parse(&env, body, len, NULL, NULL, 0), WH_OK);
    CHECK_STR(env.dedup_id, want);
    wh_envelope_clear(&env);
    free(body);
}

static void test_fixture_dedup_values(void)
{
    expect_dedup("messages-upsert-text.json", "A5F3C8E1B2D4967F0E1A2B3C4D5E6F70");
    expect_dedup("send-message.json", "3EB07F3A9C1D2E4B5A6F70");
    expect_dedup("messages-update-read.json", "3EB07F3A9C1D2E4B5A6F70:READ");
    expect_dedup("messages-update-delivery.json", "3EB0A4C2E6F81B3D5A7C90:DELIVERY_ACK");
    /* sha256sum of the raw fixture file. */
    expect_dedup("connection-update-close.json",
                 "sha256:29cd766c1f10ceb3c1b638a9e681ccf1061a3451d7950926db8f85b51ed0ccf5");
}

static void test_base64_media(void)
{
    size_t len;
    char *body = read_fixture("messages-upsert-image-base64.json", &len);
    json_error_t jerr;
    json_t *orig = json_loadb(body, len, 0, &jerr);
    const char *b64 = json_string_value(json_object_get(json_object_get(json_object_get(orig, "data"), "message"), "base64"));
    CHECK(b64 != NULL && strlen(b64) > 100);

    wh_envelope_t env;
    CHECK_INT(wh_envelope_parse(&env, body, len, &no_media, NULL, 0), WH_OK);
    char prefix[41];
    snprintf(prefix, sizeof(prefix), "%s", b64);
    CHECK(strstr(env.body, prefix) == NULL);
    json_t *stored = load_stored(&env);
    json_t *m = json_object_get(json_object_get(json_object_get(stored, "data"), "message"), "base64");
    CHECK(json_is_object(m));
    CHECK(json_is_true(json_object_get(m, "omitted")));
    CHECK_INT(json_integer_value(json_object_get(m, "bytes")), 420);
    CHECK_STR(json_string_value(json_object_get(m, "sha256")),
              "e9e8100e850eba4afd054f83cfa54e5ba0b33477e33660accc392497d38d0a72");
    CHECK(json_object_get(m, "encoding") == NULL);
    /* The rest of the message (imageMessage etc.) is untouched. */
    CHECK(json_equal(json_object_get(json_object_get(json_object_get(stored, "data"), "message"), "imageMessage"),
                     json_object_get(json_object_get(json_object_get(orig, "data"), "message"), "imageMessage")));
    CHECK_STR(env.dedup_id, "3A1F0E2D3C4B5A697887");
    json_decref(stored);
    wh_envelope_clear(&env);

    CHECK_INT(wh_envelope_parse(&env, body, len, &keep_media, NULL, 0), WH_OK);
    stored = load_stored(&env);
    CHECK_STR(json_string_value(json_object_get(json_object_get(json_object_get(stored, "data"), "message"), "base64")), b64);
    CHECK(strstr(env.body, FIX_APIKEY) == NULL);
    json_decref(stored);
    wh_envelope_clear(&env);

    /* qrcode.updated carries data.qrcode.base64, which is not media and stays. */
    free(body);
    body = read_fixture("qrcode-updated.json", &len);
    CHECK_INT(wh_envelope_parse(&env, body, len, &no_media, NULL, 0), WH_OK);
    CHECK(strstr(env.body, "data:image/png;base64,iVBORw0KGgo") != NULL);
    wh_envelope_clear(&env);
    free(body);
    json_decref(orig);
}

/* data.message.base64 = b64 → expected bytes and SHA-256 of the decoded (or raw, if invalid) data. */
static void expect_media(const char *b64, long long bytes, const char *sha, int invalid)
{
    char body[512];
    snprintf(body, sizeof(body),
             "{\"event\":\"send.message\",\"data\":{\"key\":{\"id\":\"X\"},\"message\":{\"base64\":\"%s\"}}}", b64);
    wh_envelope_t env;
    CHECK_INT(parse_str(&env, body, NULL, 0), WH_OK);
    json_t *stored = load_stored(&env);
    json_t *m = json_object_get(json_object_get(json_object_get(stored, "data"), "message"), "base64");
    CHECK(json_is_object(m));
    CHECK_INT(json_integer_value(json_object_get(m, "bytes")), bytes);
    CHECK_STR(json_string_value(json_object_get(m, "sha256")), sha);
    if (invalid)
        CHECK_STR(json_string_value(json_object_get(m, "encoding")), "invalid");
    else
        CHECK(json_object_get(m, "encoding") == NULL);
    json_decref(stored);
    wh_envelope_clear(&env);
}

#define SHA_HI "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"
#define SHA_HELLO "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
#define SHA_EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static void test_base64_decoding(void)
{
    expect_media("aGk=", 2, SHA_HI, 0);
    expect_media("aGk", 2, SHA_HI, 0);           /* padding is optional */
    expect_media("aGVsbG8=", 5, SHA_HELLO, 0);
    expect_media("aGVs\\nbG8=", 5, SHA_HELLO, 0); /* line breaks are tolerated */
    expect_media("", 0, SHA_EMPTY, 0);
    /* Not base64: size and hash of the string itself. */
    expect_media("@@@@", 4, "e8151b2c92fd188cec72b573a289fefc9d06d3116ba4eb2c8a8719ebf15c1270", 1);
    expect_media("aGk==", 5, "a208fde54d051ffaf6a4937906105da11b4cdf25b26d58d74d9d6ac91c464ca1", 1);
    expect_media("a===", 4, "c930deb71743ba80332949fcc7060fd21944baaf40e6a8afed337298967ffbcc", 1);
    expect_media("aG=k", 4, "b28a23d20cc3657be1e7140e8df8ffb132cd125de4fc96e454229bd7d3c4d720", 1);
    expect_media("a", 1, "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb", 1);
    expect_media("data:image/png;base64,aGk=", 26,
                 "bd5199410db203bb4b4c6606accb88f0ca1ee9fefc64a762d0ebe0a29a65d3d6", 1);

    /* A non-string base64 or a message without it is left alone. */
    wh_envelope_t env;
    CHECK_INT(parse_str(&env, "{\"event\":\"messages.upsert\",\"data\":{\"message\":{\"base64\":5}}}", NULL, 0), WH_OK);
    CHECK_STR(env.body, "{\"event\":\"messages.upsert\",\"data\":{\"message\":{\"base64\":5}}}");
    wh_envelope_clear(&env);
}

/* ---- dedup --------------------------------------------------------------------------------- */

static char *dedup_of(const char *body)
{
    wh_envelope_t env;
    char *id = NULL;
    if (parse_str(&env, body, NULL, 0) == WH_OK) {
        id = strdup(env.dedup_id);
        wh_envelope_clear(&env);
    }
    return id;
}

static void expect_dedup_str(const char *body, const char *want)
{
    char *id = dedup_of(body);
    CHECK_STR(id, want);
    free(id);
}

static void expect_dedup_hash(const char *body)
{
    char *id = dedup_of(body);
    CHECK(is_body_hash(id));
    free(id);
}

static void test_dedup(void)
{
    expect_dedup_str("{\"event\":\"messages.upsert\",\"data\":{\"key\":{\"id\":\"ABC\"}}}", "ABC");
    expect_dedup_str("{\"event\":\"send.message\",\"data\":{\"key\":{\"id\":\"3EB0\"}}}", "3EB0");
    expect_dedup_str("{\"event\":\"messages.update\",\"data\":{\"keyId\":\"K1\",\"status\":\"PLAYED\"}}", "K1:PLAYED");
    expect_dedup_str("{\"event\":\"messages.update\",\"data\":{\"keyId\":\"K1\"}}", "K1:");
    expect_dedup_str("{\"event\":\"messages.update\",\"data\":{\"keyId\":\"K1\",\"status\":3}}", "K1:");
    /* Not usable ids fall back to the body hash. */
    expect_dedup_hash("{\"event\":\"messages.upsert\",\"data\":{\"key\":{\"id\":\"\"}}}");
    expect_dedup_hash("{\"event\":\"messages.upsert\",\"data\":{\"key\":{\"id\":12}}}");
    expect_dedup_hash("{\"event\":\"messages.upsert\",\"data\":{\"key\":{\"id\":\"A\\u0000B\"}}}");
    expect_dedup_hash("{\"event\":\"messages.upsert\",\"data\":[{\"key\":{\"id\":\"A\"}}]}");
    expect_dedup_hash("{\"event\":\"messages.upsert\"}");
    expect_dedup_hash("{\"event\":\"messages.update\",\"data\":[{\"keyId\":\"K1\",\"status\":\"READ\"}]}");
    expect_dedup_hash("{\"event\":\"messages.update\",\"data\":{\"keyId\":\"\",\"status\":\"READ\"}}");
    expect_dedup_hash("{\"event\":\"messages.update\",\"data\":{\"status\":\"READ\"}}");
    /* Another event with a key.id is not deduplicated on it. */
    expect_dedup_hash("{\"event\":\"messages.set\",\"data\":{\"key\":{\"id\":\"ABC\"}}}");
    char longid[400];
    memset(longid, 0, sizeof(longid));
    strcpy(longid, "{\"event\":\"messages.upsert\",\"data\":{\"key\":{\"id\":\"");
    memset(longid + strlen(longid), 'A', 300);
    strcat(longid, "\"}}}");
    expect_dedup_hash(longid);

    /* The hash is over the raw bytes: the same JSON spelled differently is a different body. */
    char *a = dedup_of("{\"event\":\"chats.update\",\"data\":[]}");
    char *b = dedup_of("{\"event\": \"chats.update\", \"data\": []}");
    CHECK(a != NULL && b != NULL && strcmp(a, b) != 0);
    /* sha256 of the exact bytes {"event":"x"} */
    expect_dedup_str("{\"event\":\"x\"}",
                     "sha256:ebc2c4ea03938ee05e18c1a712d9fa02de923d6f2db34b68fe1f8dcf651e479d");
    free(a);
    free(b);
}

/* Edits and deletes carry the original message's id; they must not collide with its upsert. */
static void test_edit_delete_not_duplicates(void)
{
    char *orig = dedup_of("{\"event\":\"messages.upsert\",\"instance\":\"acme-bot\",\"data\":{\"key\":{\"remoteJid\":\"34600111222@s.whatsapp.net\",\"fromMe\":false,\"id\":\"A5F3C8E1B2D4967F0E1A2B3C4D5E6F70\"},\"message\":{\"conversation\":\"hola\"}}}");
    CHECK_STR(orig, "A5F3C8E1B2D4967F0E1A2B3C4D5E6F70");
    static const char *const later[] = {
        "{\"event\":\"messages.edited\",\"instance\":\"acme-bot\",\"data\":{\"key\":{\"remoteJid\":\"34600111222@s.whatsapp.net\",\"fromMe\":false,\"id\":\"A5F3C8E1B2D4967F0E1A2B3C4D5E6F70\"},\"type\":\"MESSAGE_EDIT\",\"editedMessage\":{\"conversation\":\"hola!\"}}}",
        "{\"event\":\"send.message.update\",\"instance\":\"acme-bot\",\"data\":{\"key\":{\"remoteJid\":\"34600111222@s.whatsapp.net\",\"fromMe\":true,\"id\":\"A5F3C8E1B2D4967F0E1A2B3C4D5E6F70\"},\"type\":\"MESSAGE_EDIT\"}}",
        "{\"event\":\"messages.delete\",\"instance\":\"acme-bot\",\"data\":{\"remoteJid\":\"34600111222@s.whatsapp.net\",\"fromMe\":false,\"id\":\"A5F3C8E1B2D4967F0E1A2B3C4D5E6F70\",\"participant\":\"\"}}",
        "{\"event\":\"messages.delete\",\"instance\":\"acme-bot\",\"data\":{\"id\":\"cmh2\",\"key\":{\"remoteJid\":\"34600111222@s.whatsapp.net\",\"fromMe\":false,\"id\":\"A5F3C8E1B2D4967F0E1A2B3C4D5E6F70\"},\"status\":\"DELETED\"}}",
    };
    for (size_t i = 0; i < WH_ARRAY_SIZE(later); i++) {
        char *id = dedup_of(later[i]);
        CHECK(id != NULL && orig != NULL && strcmp(id, orig) != 0);
        CHECK(is_body_hash(id));
        CHECK(id != NULL && strstr(id, "A5F3C8E1") == NULL);
        free(id);
    }
    free(orig);
}

/* ---- apikey and redaction ------------------------------------------------------------------ */

static void expect_apikey(const char *body, const char *want)
{
    wh_envelope_t env;
    CHECK_INT(parse_str(&env, body, NULL, 0), WH_OK);
    CHECK_STR(env.apikey, want);
    wh_envelope_clear(&env);
}

static void test_apikey(void)
{
    expect_apikey("{\"event\":\"x\",\"apikey\":\"tok-1\"}", "tok-1");
    expect_apikey("{\"event\":\"x\",\"apikey\":null}", NULL);
    expect_apikey("{\"event\":\"x\"}", NULL);
    expect_apikey("{\"event\":\"x\",\"apikey\":\"\"}", NULL);
    expect_apikey("{\"event\":\"x\",\"apikey\":\"Apikey not found\"}", NULL);
    expect_apikey("{\"event\":\"x\",\"apikey\":42}", NULL);
    expect_apikey("{\"event\":\"x\",\"apikey\":[\"tok\"]}", NULL);
    expect_apikey("{\"event\":\"x\",\"apikey\":\"tok\\u0000more\"}", NULL);
    /* Only the top-level member is the envelope's apikey. */
    expect_apikey("{\"event\":\"x\",\"data\":{\"apikey\":\"inner\"}}", NULL);
}

static void expect_stored(const char *body, const char *want)
{
    wh_envelope_t env;
    CHECK_INT(parse_str(&env, body, NULL, 0), WH_OK);
    CHECK_STR(env.body, want);
    CHECK_INT(env.body_len, want != NULL ? strlen(want) : 0);
    wh_envelope_clear(&env);
}

static void test_redaction(void)
{
    expect_stored("{\"event\":\"x\",\"apikey\":\"s\"}", "{\"event\":\"x\",\"apikey\":\"[redacted]\"}");
    expect_stored("{\"event\":\"x\",\"apikey\":null}", "{\"event\":\"x\",\"apikey\":null}");
    /* The error webhook carries the global key as api_key. */
    expect_stored("{\"event\":\"error\",\"data\":{\"m\":1},\"api_key\":\"GLOBAL\"}",
                  "{\"event\":\"error\",\"data\":{\"m\":1},\"api_key\":\"[redacted]\"}");
    /* Any depth, inside arrays, any value type, any case; other members untouched. */
    expect_stored("{\"event\":\"x\",\"data\":[{\"apikey\":\"s1\"},{\"n\":[{\"api_key\":{\"k\":\"s2\"}},[{\"ApiKey\":7}]]},\"apikey\"],\"b\":{\"API_KEY\":false,\"apikeys\":\"keep\"}}",
                  "{\"event\":\"x\",\"data\":[{\"apikey\":\"[redacted]\"},{\"n\":[{\"api_key\":\"[redacted]\"},[{\"ApiKey\":\"[redacted]\"}]]},\"apikey\"],\"b\":{\"API_KEY\":\"[redacted]\",\"apikeys\":\"keep\"}}");
    /* Non-ASCII stays raw UTF-8 and key order is kept. */
    expect_stored("{ \"z\": 1, \"event\": \"x\", \"a\": \"Gràcia 🎉\" }",
                  "{\"z\":1,\"event\":\"x\",\"a\":\"Gràcia 🎉\"}");
    /* NUL bytes inside strings survive as escapes. */
    expect_stored("{\"event\":\"x\",\"s\":\"a\\u0000b\"}", "{\"event\":\"x\",\"s\":\"a\\u0000b\"}");

    /* A secret at the bottom of a deep nest is redacted without recursion trouble. */
    enum { DEPTH = 2000 };
    size_t cap = DEPTH * 12 + 128, n = 0;
    char *body = malloc(cap);
    n += (size_t)snprintf(body + n, cap - n, "{\"event\":\"x\",\"d\":");
    for (int i = 0; i < DEPTH; i++)
        n += (size_t)snprintf(body + n, cap - n, i % 2 ? "[" : "{\"a\":");
    n += (size_t)snprintf(body + n, cap - n, "{\"apikey\":\"deep-secret\"}");
    for (int i = DEPTH - 1; i >= 0; i--)
        n += (size_t)snprintf(body + n, cap - n, i % 2 ? "]" : "}");
    n += (size_t)snprintf(body + n, cap - n, "}");
    wh_envelope_t env;
    CHECK_INT(wh_envelope_parse(&env, body, n, NULL, NULL, 0), WH_OK);
    CHECK(env.body != NULL && strstr(env.body, "deep-secret") == NULL);
    CHECK(env.body != NULL && strstr(env.body, "{\"apikey\":\"[redacted]\"}") != NULL);
    wh_envelope_clear(&env);
    free(body);
}

/* ---- errors -------------------------------------------------------------------------------- */

static void expect_error(const char *body, size_t len, const char *msg)
{
    wh_envelope_t env;
    char err[128] = "unset";
    memset(&env, 0x5a, sizeof(env)); /* parse must not rely on a zeroed envelope */
    CHECK_INT(wh_envelope_parse(&env, body, len, NULL, err, sizeof(err)), WH_EINVAL);
    CHECK_STR(err, msg);
    CHECK(env.event == NULL && env.instance == NULL && env.dedup_id == NULL &&
          env.body == NULL && env.body_len == 0 && env.apikey == NULL && env.phone == NULL &&
          env.lid == NULL);
    wh_envelope_clear(&env);
}

#define ERR(lit, msg) expect_error(lit, sizeof(lit) - 1, msg)

static void test_errors(void)
{
    ERR("{", "malformed JSON");
    ERR("", "malformed JSON");
    ERR("   ", "malformed JSON");
    ERR("{\"event\":\"x\"} trailing", "malformed JSON");
    ERR("{\"event\":\"x\",}", "malformed JSON");
    ERR("{\"event\":\"\xff\"}", "malformed JSON"); /* not UTF-8 */
    ERR("{\"event\":\"x\",\"data\":1e999}", "malformed JSON");
    ERR("[]", "body is not a JSON object");
    ERR("[{\"event\":\"x\"}]", "body is not a JSON object");
    ERR("\"messages.upsert\"", "body is not a JSON object");
    ERR("null", "body is not a JSON object");
    ERR("42", "body is not a JSON object");
    ERR("{}", "missing event");
    ERR("{\"event\":1}", "missing event");
    ERR("{\"event\":null}", "missing event");
    ERR("{\"event\":\"\"}", "missing event");
    ERR("{\"event\":{\"name\":\"x\"}}", "missing event");
    ERR("{\"event\":\"messages.upsert\\u0000x\"}", "missing event");
    ERR("{\"event\":\"x\",\"instance\":5}", "invalid instance");
    ERR("{\"event\":\"x\",\"instance\":[]}", "invalid instance");
    ERR("{\"event\":\"x\",\"instance\":\"a\\u0000b\"}", "invalid instance");

    /* NULL body, and a body with a raw NUL byte before the end. */
    expect_error(NULL, 0, "malformed JSON");
    expect_error("{\"event\":\"x\"}\0", 14, "malformed JSON");

    /* Event and instance length limits. */
    char body[1024], name[600];
    memset(name, 'e', WH_EVENT_MAX + 1);
    name[WH_EVENT_MAX + 1] = '\0';
    snprintf(body, sizeof(body), "{\"event\":\"%s\"}", name);
    expect_error(body, strlen(body), "missing event");
    name[WH_EVENT_MAX] = '\0';
    snprintf(body, sizeof(body), "{\"event\":\"%s\"}", name);
    wh_envelope_t env;
    CHECK_INT(parse_str(&env, body, NULL, 0), WH_OK);
    CHECK_INT(strlen(env.event), WH_EVENT_MAX);
    wh_envelope_clear(&env);
    memset(name, 'i', WH_INSTANCE_MAX + 1);
    name[WH_INSTANCE_MAX + 1] = '\0';
    snprintf(body, sizeof(body), "{\"event\":\"x\",\"instance\":\"%s\"}", name);
    expect_error(body, strlen(body), "invalid instance");
    name[WH_INSTANCE_MAX] = '\0';
    snprintf(body, sizeof(body), "{\"event\":\"x\",\"instance\":\"%s\"}", name);
    CHECK_INT(parse_str(&env, body, NULL, 0), WH_OK);
    CHECK_INT(strlen(env.instance), WH_INSTANCE_MAX);
    wh_envelope_clear(&env);

    /* instance absent or null → "". */
    CHECK_INT(parse_str(&env, "{\"event\":\"x\",\"instance\":null}", NULL, 0), WH_OK);
    CHECK_STR(env.instance, "");
    CHECK_STR(env.event, "x");
    wh_envelope_clear(&env);
    CHECK_INT(parse_str(&env, "{\"event\":\"x\"}", NULL, 0), WH_OK);
    CHECK_STR(env.instance, "");
    CHECK(env.phone == NULL && env.lid == NULL && env.apikey == NULL);
    wh_envelope_clear(&env);

    /* Every truncation of a real body is rejected cleanly. */
    size_t len;
    char *fx = read_fixture("messages-upsert-text.json", &len);
    while (len > 0 && (fx[len - 1] == '\n' || fx[len - 1] == ' '))
        len--;
    for (size_t cut = 0; cut < len; cut += 97) {
        char err[64];
        int rc = wh_envelope_parse(&env, fx, cut, NULL, err, sizeof(err));
        CHECK_INT(rc, WH_EINVAL);
        CHECK_STR(err, "malformed JSON");
        CHECK(env.body == NULL);
    }
    CHECK_INT(wh_envelope_parse(&env, fx, len - 1, NULL, NULL, 0), WH_EINVAL);
    CHECK_INT(wh_envelope_parse(&env, fx, len, NULL, NULL, 0), WH_OK);
    wh_envelope_clear(&env);
    free(fx);

    /* Hostile nesting: an error, not a crash. */
    size_t deep = 200000;
    char *nest = malloc(deep);
    memset(nest, '[', deep);
    expect_error(nest, deep, "malformed JSON");
    memcpy(nest, "{\"event\":\"x\",\"d\":", 17);
    for (size_t i = 17; i + 5 < deep; i += 5)
        memcpy(nest + i, "{\"a\":", 5);
    expect_error(nest, deep, "malformed JSON");
    free(nest);

    /* A NULL or too small err buffer is fine. */
    CHECK_INT(wh_envelope_parse(&env, "{", 1, NULL, NULL, 0), WH_EINVAL);
    char tiny[4];
    CHECK_INT(wh_envelope_parse(&env, "{", 1, NULL, tiny, sizeof(tiny)), WH_EINVAL);
    CHECK_STR(tiny, "mal");
    wh_envelope_clear(&env);
    wh_envelope_clear(NULL);
}

/* An integer beyond int64 is valid JSON: accepted (read as a double), not answered 400. */
static void test_big_integer(void)
{
    wh_envelope_t env;
    CHECK_INT(parse_str(&env, "{\"event\":\"messages.upsert\",\"data\":{\"key\":{\"id\":\"Z1\"},\"n\":123456789012345678901234}}", NULL, 0), WH_OK);
    CHECK_STR(env.dedup_id, "Z1");
    CHECK(env.body != NULL && strstr(env.body, "\"n\":1.23456789012345") != NULL);
    wh_envelope_clear(&env);
}

/* ---- wh_contact_key and wh_envelope_contact ------------------------------------------------ */

static void expect_key(const char *phone, const char *lid, const char *alias, const char *want)
{
    char *k = wh_contact_key(phone, lid, alias);
    CHECK_STR(k, want);
    free(k);
}

static void test_contact_key(void)
{
    expect_key("34600111222", "207581245931618@lid", "34600333444", "34600111222");
    expect_key(NULL, "207581245931618@lid", "34600111222", "34600111222");
    expect_key(NULL, "207581245931618@lid", NULL, "207581245931618@lid");
    expect_key("34600111222", NULL, NULL, "34600111222");
    expect_key(NULL, NULL, "34600111222", "34600111222");
    expect_key(NULL, NULL, NULL, NULL);
    expect_key("", "", "", NULL);

    char *phone = (char *)1, *lid = (char *)1;
    wh_envelope_contact(NULL, &phone, &lid);
    CHECK(phone == NULL && lid == NULL);
    json_t *arr = json_array();
    wh_envelope_contact(arr, &phone, &lid);
    CHECK(phone == NULL && lid == NULL);
    json_decref(arr);
    json_t *obj = json_pack("{s:s,s:{s:{s:s,s:b}}}", "event", "messages.upsert", "data", "key",
                            "remoteJid", "34600111222:3@s.whatsapp.net", "fromMe", 0);
    wh_envelope_contact(obj, &phone, &lid);
    CHECK_STR(phone, "34600111222");
    CHECK(lid == NULL);
    free(phone);
    json_decref(obj);
}

int main(void)
{
    test_vectors();
    test_fixtures();
    test_fixture_dedup_values();
    test_base64_media();
    test_base64_decoding();
    test_dedup();
    test_edit_delete_not_duplicates();
    test_apikey();
    test_redaction();
    test_errors();
    test_big_integer();
    test_contact_key();
    WH_TEST_MAIN_END();
}
