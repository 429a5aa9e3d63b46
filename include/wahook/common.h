/* Shared error codes, small string lists and helpers used by every wahook module. */
#ifndef WAHOOK_COMMON_H
#define WAHOOK_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define WH_VERSION "0.1.0"

/* Error codes: 0 is success, failures are negative. */
enum {
    WH_OK = 0,
    WH_ERR = -1,       /* generic failure, detail in the caller's err buffer */
    WH_ENOMEM = -2,
    WH_EINVAL = -3,    /* bad input */
    WH_EIO = -4,       /* storage or socket failure */
    WH_EFULL = -5,     /* queue full or disk full: retry later */
    WH_EBUSY = -6,     /* resource temporarily unavailable */
    WH_ENOTFOUND = -7,
    WH_ESHUTDOWN = -8, /* the component is stopping */
    WH_ETIMEDOUT = -9,
};

/* Returns a static description of a WH_E* code. */
const char *wh_strerror(int err);

#define WH_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* A growable list of owned NUL-terminated strings (secrets, CIDRs, ...). */
typedef struct wh_strlist {
    size_t n;
    char **v;
} wh_strlist_t;

/* Appends a copy of s (len bytes). Returns 0 or WH_ENOMEM. */
int wh_strlist_push(wh_strlist_t *l, const char *s, size_t len);
/* Frees every string and the array; leaves an empty list. */
void wh_strlist_clear(wh_strlist_t *l);

/* Wall clock in milliseconds since the epoch. */
int64_t wh_now_ms(void);
/* Monotonic clock in seconds, for rate limits and deadlines. */
double wh_mono_now(void);

/* Constant-time comparison of two byte strings. Returns 1 when equal. The time depends only on
 * the lengths, never on where the contents differ. */
int wh_ct_equal(const void *a, size_t alen, const void *b, size_t blen);

#endif
