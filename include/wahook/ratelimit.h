/* Thread-safe token buckets keyed by a string (client IP, instance name), with a bounded key
 * table so that a flood of distinct keys cannot grow memory without limit. */
#ifndef WAHOOK_RATELIMIT_H
#define WAHOOK_RATELIMIT_H

#include <stddef.h>

typedef struct wh_ratelimit wh_ratelimit_t;

/* A limiter refilling rate_per_min tokens per minute up to burst. max_keys bounds the table;
 * when it is full the least recently used buckets are evicted. Returns NULL on ENOMEM. */
wh_ratelimit_t *wh_ratelimit_new(double rate_per_min, double burst, size_t max_keys);
void wh_ratelimit_free(wh_ratelimit_t *rl);

/* Takes one token for key at monotonic time now (seconds). Returns 1 when allowed; 0 when
 * limited, with the seconds until a token is available in *retry_after (rounded up, >= 1). */
int wh_ratelimit_take(wh_ratelimit_t *rl, const char *key, size_t keylen, double now,
                      int *retry_after);
/* Like take without consuming: 1 when a token is available now. */
int wh_ratelimit_peek(wh_ratelimit_t *rl, const char *key, size_t keylen, double now,
                      int *retry_after);
/* Number of keys currently tracked (never more than max_keys). */
size_t wh_ratelimit_size(wh_ratelimit_t *rl);

#endif
