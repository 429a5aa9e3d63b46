/* Unit tests for runtime/ratelimit.c, all at explicit times: bursts, refill, Retry-After, key
 * independence, bounded eviction and concurrent takes. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "wahook/ratelimit.h"
#include "wh_test.h"

static int take(wh_ratelimit_t *rl, const char *k, double now, int *ra)
{
    return wh_ratelimit_take(rl, k, strlen(k), now, ra);
}

static int peek(wh_ratelimit_t *rl, const char *k, double now, int *ra)
{
    return wh_ratelimit_peek(rl, k, strlen(k), now, ra);
}

static void test_burst_and_refill(void)
{
    wh_ratelimit_t *rl = wh_ratelimit_new(60, 5, 100); /* one token per second */
    CHECK(rl != NULL);
    int ra = -1, allowed = 0;
    for (int i = 0; i < 5; i++)
        allowed += take(rl, "1.2.3.4", 1000, &ra);
    CHECK_INT(allowed, 5);
    CHECK_INT(ra, 0);
    CHECK_INT(take(rl, "1.2.3.4", 1000, &ra), 0);
    CHECK_INT(ra, 1);
    /* Half a token is not enough. */
    CHECK_INT(take(rl, "1.2.3.4", 1000.5, &ra), 0);
    CHECK_INT(ra, 1);
    CHECK_INT(take(rl, "1.2.3.4", 1001, &ra), 1);
    CHECK_INT(take(rl, "1.2.3.4", 1001, &ra), 0);
    /* Two seconds, two tokens. */
    CHECK_INT(take(rl, "1.2.3.4", 1003, &ra), 1);
    CHECK_INT(take(rl, "1.2.3.4", 1003, &ra), 1);
    CHECK_INT(take(rl, "1.2.3.4", 1003, &ra), 0);
    /* A long pause refills up to the burst, not beyond. */
    allowed = 0;
    for (int i = 0; i < 20; i++)
        allowed += take(rl, "1.2.3.4", 5000, &ra);
    CHECK_INT(allowed, 5);
    /* A clock that goes backwards refills nothing and breaks nothing. */
    CHECK_INT(take(rl, "1.2.3.4", 10, &ra), 0);
    CHECK_INT(take(rl, "1.2.3.4", 5001, &ra), 1);
    /* retry_after may be NULL. */
    CHECK_INT(take(rl, "1.2.3.4", 5001, NULL), 0);
    wh_ratelimit_free(rl);
}

static void test_retry_after(void)
{
    int ra = -1;
    /* 6/min: one token per 10 s. */
    wh_ratelimit_t *rl = wh_ratelimit_new(6, 1, 10);
    CHECK_INT(take(rl, "k", 0, &ra), 1);
    CHECK_INT(take(rl, "k", 0, &ra), 0);
    CHECK_INT(ra, 10);
    CHECK_INT(take(rl, "k", 3.5, &ra), 0); /* 0.35 token: 6.5 s more, rounded up */
    CHECK_INT(ra, 7);
    CHECK_INT(take(rl, "k", 9.999, &ra), 0); /* a millisecond short still says 1, never 0 */
    CHECK_INT(ra, 1);
    CHECK_INT(take(rl, "k", 10, &ra), 1);
    CHECK_INT(take(rl, "k", 19, &ra), 0);
    CHECK_INT(ra, 1);
    wh_ratelimit_free(rl);

    /* The original's 100/min: 0.6 s per token rounds up to 1. */
    rl = wh_ratelimit_new(100, 100, 10);
    for (int i = 0; i < 100; i++)
        take(rl, "ip", 50, &ra);
    CHECK_INT(take(rl, "ip", 50, &ra), 0);
    CHECK_INT(ra, 1);
    CHECK_INT(take(rl, "ip", 50.6, &ra), 1); /* 0.6 s is exactly one token */
    wh_ratelimit_free(rl);

    /* 1/min. */
    rl = wh_ratelimit_new(1, 1, 10);
    CHECK_INT(take(rl, "k", 0, &ra), 1);
    CHECK_INT(take(rl, "k", 0, &ra), 0);
    CHECK_INT(ra, 60);
    CHECK_INT(take(rl, "k", 45, &ra), 0);
    CHECK_INT(ra, 15);
    wh_ratelimit_free(rl);

    /* A zero rate never refills; the answer stays bounded. */
    rl = wh_ratelimit_new(0, 2, 10);
    CHECK_INT(take(rl, "k", 0, &ra), 1);
    CHECK_INT(take(rl, "k", 0, &ra), 1);
    CHECK_INT(take(rl, "k", 1e6, &ra), 0);
    CHECK(ra >= 1 && ra <= 86400);
    wh_ratelimit_free(rl);
}

static void test_peek(void)
{
    int ra = -1;
    wh_ratelimit_t *rl = wh_ratelimit_new(60, 2, 10);
    /* Peeking an unknown key says yes and stores nothing. */
    for (int i = 0; i < 10; i++)
        CHECK_INT(peek(rl, "new", 0, &ra), 1);
    CHECK_INT(wh_ratelimit_size(rl), 0);
    CHECK_INT(take(rl, "k", 0, &ra), 1);
    CHECK_INT(wh_ratelimit_size(rl), 1);
    for (int i = 0; i < 10; i++)
        CHECK_INT(peek(rl, "k", 0, &ra), 1); /* peeking does not consume */
    CHECK_INT(take(rl, "k", 0, &ra), 1);
    CHECK_INT(peek(rl, "k", 0, &ra), 0);
    CHECK_INT(ra, 1);
    CHECK_INT(peek(rl, "k", 0.5, &ra), 0);
    CHECK_INT(peek(rl, "k", 1, &ra), 1);
    CHECK_INT(take(rl, "k", 1, &ra), 1);
    CHECK_INT(take(rl, "k", 1, &ra), 0);
    wh_ratelimit_free(rl);
}

static void test_keys_independent(void)
{
    int ra;
    wh_ratelimit_t *rl = wh_ratelimit_new(60, 3, 100);
    for (int i = 0; i < 3; i++)
        CHECK_INT(take(rl, "10.0.0.1", 0, &ra), 1);
    CHECK_INT(take(rl, "10.0.0.1", 0, &ra), 0);
    for (int i = 0; i < 3; i++)
        CHECK_INT(take(rl, "10.0.0.2", 0, &ra), 1);
    CHECK_INT(take(rl, "10.0.0.2", 0, &ra), 0);
    /* Keys are byte strings of a given length: a prefix or an embedded NUL is another key. */
    CHECK_INT(wh_ratelimit_take(rl, "10.0.0.1", 7, 0, &ra), 1);
    CHECK_INT(wh_ratelimit_take(rl, "ab\0c", 4, 0, &ra), 1);
    CHECK_INT(wh_ratelimit_take(rl, "ab\0d", 4, 0, &ra), 1);
    CHECK_INT(wh_ratelimit_take(rl, "", 0, 0, &ra), 1);
    CHECK_INT(wh_ratelimit_size(rl), 6);
    wh_ratelimit_free(rl);
}

static void test_eviction(void)
{
    int ra;
    char key[32];
    const size_t max = 64;
    wh_ratelimit_t *rl = wh_ratelimit_new(60, 2, max);
    /* "hot" is exhausted and kept busy; "cold" is exhausted and then left alone. */
    CHECK_INT(take(rl, "hot", 0, &ra), 1);
    CHECK_INT(take(rl, "hot", 0, &ra), 1);
    CHECK_INT(take(rl, "cold", 0, &ra), 1);
    CHECK_INT(take(rl, "cold", 0, &ra), 1);
    CHECK_INT(take(rl, "cold", 0, &ra), 0);
    size_t peak = 0;
    for (size_t i = 0; i < 10 * max; i++) {
        snprintf(key, sizeof(key), "203.0.113.%zu", i);
        take(rl, key, 0, &ra);
        CHECK_INT(take(rl, "hot", 0, &ra), 0); /* still limited: never evicted while in use */
        size_t n = wh_ratelimit_size(rl);
        if (n > peak)
            peak = n;
    }
    CHECK(peak <= max);
    CHECK_INT(wh_ratelimit_size(rl), max);
    /* The idle bucket was evicted, so it starts full again. */
    CHECK_INT(take(rl, "cold", 0, &ra), 1);
    wh_ratelimit_free(rl);

    /* Fewer keys than shards, and a single key. */
    rl = wh_ratelimit_new(60, 1, 3);
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        take(rl, key, 0, &ra);
        CHECK(wh_ratelimit_size(rl) <= 3);
    }
    CHECK_INT(wh_ratelimit_size(rl), 3);
    wh_ratelimit_free(rl);
    rl = wh_ratelimit_new(60, 1, 1);
    CHECK_INT(take(rl, "a", 0, &ra), 1);
    CHECK_INT(take(rl, "a", 0, &ra), 0);
    CHECK_INT(take(rl, "b", 0, &ra), 1); /* evicts "a" */
    CHECK_INT(wh_ratelimit_size(rl), 1);
    CHECK_INT(take(rl, "a", 0, &ra), 1);
    wh_ratelimit_free(rl);

    /* A large table grows its hash buckets and still finds every key. The bound is kept per
     * shard (approximate LRU), so stay well under max_keys for an exact count. */
    rl = wh_ratelimit_new(60, 1, 5000);
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof(key), "2001:db8::%x", i);
        take(rl, key, 0, &ra);
    }
    CHECK_INT(wh_ratelimit_size(rl), 2000);
    int limited = 0;
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof(key), "2001:db8::%x", i);
        limited += !take(rl, key, 0, &ra);
    }
    CHECK_INT(limited, 2000);
    wh_ratelimit_free(rl);
}

typedef struct {
    wh_ratelimit_t *rl;
    int allowed[3];
} worker_arg_t;

static void *worker(void *p)
{
    worker_arg_t *a = p;
    static const char *keys[3] = {"instance-a", "instance-b", "instance-c"};
    int ra;
    for (int i = 0; i < 3000; i++) {
        int k = i % 3;
        a->allowed[k] += wh_ratelimit_take(a->rl, keys[k], strlen(keys[k]), 42.0, &ra);
    }
    return NULL;
}

static void test_concurrent(void)
{
    wh_ratelimit_t *rl = wh_ratelimit_new(6000, 100, 1000);
    worker_arg_t args[4];
    pthread_t t[4];
    memset(args, 0, sizeof(args));
    for (int i = 0; i < 4; i++) {
        args[i].rl = rl;
        CHECK_INT(pthread_create(&t[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    /* 4000 attempts per key at one instant: exactly the burst gets through. */
    for (int k = 0; k < 3; k++) {
        int total = 0;
        for (int i = 0; i < 4; i++)
            total += args[i].allowed[k];
        CHECK_INT(total, 100);
    }
    wh_ratelimit_free(rl);
}

int main(void)
{
    test_burst_and_refill();
    test_retry_after();
    test_peek();
    test_keys_independent();
    test_eviction();
    test_concurrent();
    wh_ratelimit_free(NULL);
    WH_TEST_MAIN_END();
}
