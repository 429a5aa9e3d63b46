/* libFuzzer target for the webhook envelope: any body must parse or fail cleanly, and a parsed
 * body must leave valid, redacted JSON and a well-formed dedup id behind. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "wahook/common.h"
#include "wahook/envelope.h"

/* Aborts if any apikey/api_key member of the stored body still holds a value. */
static void check_redacted(json_t *root)
{
    size_t cap = 256, n = 0;
    json_t **stack = malloc(cap * sizeof(*stack));
    if (stack == NULL)
        return;
    stack[n++] = root;
    while (n > 0) {
        json_t *v = stack[--n];
        size_t count = json_is_array(v) ? json_array_size(v) : json_object_size(v);
        if (n + count > cap) {
            while (n + count > cap)
                cap *= 2;
            json_t **ns = realloc(stack, cap * sizeof(*stack));
            if (ns == NULL)
                break;
            stack = ns;
        }
        if (json_is_array(v)) {
            for (size_t i = 0; i < count; i++)
                stack[n++] = json_array_get(v, i);
        } else if (json_is_object(v)) {
            const char *k;
            json_t *m;
            json_object_foreach(v, k, m) {
                if ((strcasecmp(k, "apikey") == 0 || strcasecmp(k, "api_key") == 0) &&
                    !json_is_null(m) &&
                    !(json_is_string(m) && strcmp(json_string_value(m), "[redacted]") == 0))
                    abort();
                stack[n++] = m;
            }
        }
    }
    free(stack);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const wh_envelope_opts_t opts = {0};
    wh_envelope_t env;
    char err[128];
    int rc = wh_envelope_parse(&env, (const char *)data, size, &opts, err, sizeof(err));
    if (rc == WH_OK) {
        if (env.event == NULL || env.instance == NULL || env.dedup_id == NULL ||
            env.body == NULL || env.body_len != strlen(env.body) || env.event[0] == '\0' ||
            strlen(env.event) > WH_EVENT_MAX || strlen(env.instance) > WH_INSTANCE_MAX ||
            env.dedup_id[0] == '\0')
            abort();
        if (env.lid != NULL && (strlen(env.lid) < 5 || strcmp(env.lid + strlen(env.lid) - 4, "@lid") != 0))
            abort();
        if (env.phone != NULL && strspn(env.phone, "0123456789") != strlen(env.phone))
            abort();
        json_error_t jerr;
        json_t *stored = json_loadb(env.body, env.body_len, JSON_ALLOW_NUL, &jerr);
        if (stored == NULL || !json_is_object(stored))
            abort();
        check_redacted(stored);
        json_decref(stored);
    } else if (rc != WH_EINVAL && rc != WH_ENOMEM) {
        abort();
    } else if (env.body != NULL || env.event != NULL) {
        abort();
    }
    wh_envelope_clear(&env);
    return 0;
}
