/* Error strings, string lists, clocks and constant-time comparison shared by all modules. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "wahook/common.h"

const char *wh_strerror(int err)
{
    switch (err) {
    case WH_OK: return "ok";
    case WH_ENOMEM: return "out of memory";
    case WH_EINVAL: return "invalid input";
    case WH_EIO: return "i/o error";
    case WH_EFULL: return "full";
    case WH_EBUSY: return "busy";
    case WH_ENOTFOUND: return "not found";
    case WH_ESHUTDOWN: return "shutting down";
    case WH_ETIMEDOUT: return "timed out";
    default: return "error";
    }
}

int wh_strlist_push(wh_strlist_t *l, const char *s, size_t len)
{
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return WH_ENOMEM;
    memcpy(copy, s, len);
    copy[len] = '\0';
    char **v = realloc(l->v, (l->n + 1) * sizeof(*v));
    if (v == NULL) {
        free(copy);
        return WH_ENOMEM;
    }
    v[l->n++] = copy;
    l->v = v;
    return WH_OK;
}

void wh_strlist_clear(wh_strlist_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

int64_t wh_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double wh_mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int wh_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    /* Walk the longer input in full so the time does not reveal a common prefix. */
    const volatile unsigned char *pa = a, *pb = b;
    size_t n = alen > blen ? alen : blen;
    unsigned char diff = (unsigned char)(alen != blen);
    for (size_t i = 0; i < n; i++) {
        unsigned char ca = i < alen ? pa[i] : 0;
        unsigned char cb = i < blen ? pb[i] : 0;
        diff |= (unsigned char)(ca ^ cb);
    }
    return diff == 0;
}
