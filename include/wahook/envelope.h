/* The webhook envelope: parses a body with jansson, reads event and instance, computes the dedup
 * id (DESIGN.md rule 2) and the contact candidates (rule 4b), and produces the redacted body that
 * is stored. */
#ifndef WAHOOK_ENVELOPE_H
#define WAHOOK_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#define WH_EVENT_MAX 128
#define WH_INSTANCE_MAX 256

typedef struct wh_envelope_opts {
    int keep_media; /* keep data.message.base64 instead of replacing it by size and SHA-256 */
} wh_envelope_opts_t;

typedef struct wh_envelope {
    char *event;      /* "messages.upsert"; never NULL after a successful parse */
    char *instance;   /* "" when the body has none */
    char *dedup_id;   /* key.id, keyId + ":" + status, or "sha256:<hex of the raw body>" */
    char *phone;      /* contact phone, digits only (E.164 without +), or NULL */
    char *lid;        /* contact LID as "<digits>@lid", or NULL */
    char *apikey;     /* body apikey before redaction; NULL when absent, null or "Apikey not found" */
    char *body;       /* redacted compact JSON to store */
    size_t body_len;
} wh_envelope_t;

/* Parses body. On failure returns WH_EINVAL with a short client-facing message in err
 * ("malformed JSON", "body is not a JSON object", "missing event", …) and leaves env empty.
 * Returns WH_ENOMEM when out of memory. */
int wh_envelope_parse(wh_envelope_t *env, const char *body, size_t len,
                      const wh_envelope_opts_t *opts, char *err, size_t errlen);
/* Frees what env owns and zeroes it. */
void wh_envelope_clear(wh_envelope_t *env);

/* The contact rule for a parsed JSON body (json_t*), exposed for tests and for other stages:
 * fills phone (digits) and lid ("<digits>@lid") as malloc'd strings or NULL. Events without a
 * contact (connection.update, qrcode.updated, arrays of contacts) leave both NULL. */
void wh_envelope_contact(const void *root /* json_t* */, char **phone, char **lid);

/* The contact key given the candidates and a resolved alias: phone when known, else the alias
 * phone for the LID, else the LID itself. Returns a malloc'd string or NULL when there is no
 * contact. */
char *wh_contact_key(const char *phone, const char *lid, const char *alias_phone);

#endif
