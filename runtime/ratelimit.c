/* Token-bucket rate limiting keyed by strings, in a mutex-sharded hash table whose size is bounded
 * by evicting each shard's least recently used bucket. */
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include "wahook/ratelimit.h"

#define WH__RL_SHARDS 16
#define WH__RL_MIN_BUCKETS 16
/* Refill arithmetic in floating point can land a hair under a whole token. */
#define WH__RL_EPS 1e-9
/* Retry-After for a limiter that never refills, and the upper bound of any answer. */
#define WH__RL_MAX_RETRY 86400

typedef struct wh__rl_entry {
    struct wh__rl_entry *hnext;         /* hash chain */
    struct wh__rl_entry *lprev, *lnext; /* recency list, most recent first */
    uint64_t hash;
    double tokens;
    double last; /* time of the last refill */
    size_t keylen;
    char key[];
} wh__rl_entry_t;

typedef struct wh__rl_shard {
    pthread_mutex_t mu;
    wh__rl_entry_t **buckets;
    size_t nbuckets, maxbuckets; /* powers of two */
    wh__rl_entry_t *head, *tail;
    size_t count, cap;
    char pad[64]; /* keeps neighbouring shards' locks off one cache line */
} wh__rl_shard_t;

struct wh_ratelimit {
    double rate; /* tokens per second */
    double burst;
    uint64_t k0, k1; /* SipHash key: clients choose the keys, so chains must not be predictable */
    size_t nshards;
    wh__rl_shard_t shard[WH__RL_SHARDS];
};

/* ---- SipHash-2-4 (Aumasson & Bernstein), written from the paper ---- */

#define WH__ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define WH__SIPROUND                                                                           \
    do {                                                                                       \
        v0 += v1; v1 = WH__ROTL(v1, 13); v1 ^= v0; v0 = WH__ROTL(v0, 32);                      \
        v2 += v3; v3 = WH__ROTL(v3, 16); v3 ^= v2;                                             \
        v0 += v3; v3 = WH__ROTL(v3, 21); v3 ^= v0;                                             \
        v2 += v1; v1 = WH__ROTL(v1, 17); v1 ^= v2; v2 = WH__ROTL(v2, 32);                      \
    } while (0)

static uint64_t wh__siphash(uint64_t k0, uint64_t k1, const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t m = 0;
        for (int j = 7; j >= 0; j--)
            m = m << 8 | p[i + (size_t)j];
        v3 ^= m;
        WH__SIPROUND;
        WH__SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t j = 0; i + j < len; j++)
        b |= (uint64_t)p[i + j] << (8 * j);
    v3 ^= b;
    WH__SIPROUND;
    WH__SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    WH__SIPROUND;
    WH__SIPROUND;
    WH__SIPROUND;
    WH__SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static size_t wh__pow2_at_least(size_t n)
{
    size_t p = 1;
    while (p < n && p < ((size_t)1 << (sizeof(size_t) * 8 - 2)))
        p <<= 1;
    return p;
}

wh_ratelimit_t *wh_ratelimit_new(double rate_per_min, double burst, size_t max_keys)
{
    /* A negative or NaN rate never refills; a burst under one token could never allow anything;
     * a table must hold at least one key. */
    if (!(rate_per_min > 0))
        rate_per_min = 0;
    if (!(burst >= 1))
        burst = 1;
    if (max_keys == 0)
        max_keys = 1;
    size_t size = (sizeof(wh_ratelimit_t) + 63) / 64 * 64;
    wh_ratelimit_t *rl = aligned_alloc(64, size);
    if (rl == NULL)
        return NULL;
    memset(rl, 0, size);
    rl->rate = rate_per_min / 60.0;
    rl->burst = burst;
    if (getrandom(&rl->k0, sizeof(rl->k0), 0) != (ssize_t)sizeof(rl->k0) ||
        getrandom(&rl->k1, sizeof(rl->k1), 0) != (ssize_t)sizeof(rl->k1)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        rl->k0 = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)rl;
        rl->k1 = (uint64_t)ts.tv_sec * 0xbf58476d1ce4e5b9ULL ^ (uint64_t)(uintptr_t)&ts;
    }
    rl->nshards = max_keys < WH__RL_SHARDS ? max_keys : WH__RL_SHARDS;
    size_t i;
    for (i = 0; i < rl->nshards; i++) {
        wh__rl_shard_t *s = &rl->shard[i];
        /* The per-shard caps add up to max_keys exactly. */
        s->cap = max_keys / rl->nshards + (i < max_keys % rl->nshards ? 1 : 0);
        s->maxbuckets = wh__pow2_at_least(s->cap);
        s->nbuckets = s->maxbuckets < WH__RL_MIN_BUCKETS ? s->maxbuckets : WH__RL_MIN_BUCKETS;
        s->buckets = calloc(s->nbuckets, sizeof(*s->buckets));
        if (s->buckets == NULL || pthread_mutex_init(&s->mu, NULL) != 0) {
            free(s->buckets);
            goto fail;
        }
    }
    return rl;
fail:
    while (i-- > 0) {
        pthread_mutex_destroy(&rl->shard[i].mu);
        free(rl->shard[i].buckets);
    }
    free(rl);
    return NULL;
}

void wh_ratelimit_free(wh_ratelimit_t *rl)
{
    if (rl == NULL)
        return;
    for (size_t i = 0; i < rl->nshards; i++) {
        wh__rl_shard_t *s = &rl->shard[i];
        for (wh__rl_entry_t *e = s->head, *next; e != NULL; e = next) {
            next = e->lnext;
            free(e);
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->mu);
    }
    free(rl);
}

size_t wh_ratelimit_size(wh_ratelimit_t *rl)
{
    size_t n = 0;
    for (size_t i = 0; i < rl->nshards; i++) {
        pthread_mutex_lock(&rl->shard[i].mu);
        n += rl->shard[i].count;
        pthread_mutex_unlock(&rl->shard[i].mu);
    }
    return n;
}

static void wh__lru_unlink(wh__rl_shard_t *s, wh__rl_entry_t *e)
{
    if (e->lprev != NULL)
        e->lprev->lnext = e->lnext;
    else
        s->head = e->lnext;
    if (e->lnext != NULL)
        e->lnext->lprev = e->lprev;
    else
        s->tail = e->lprev;
    e->lprev = e->lnext = NULL;
}

static void wh__lru_push_front(wh__rl_shard_t *s, wh__rl_entry_t *e)
{
    e->lprev = NULL;
    e->lnext = s->head;
    if (s->head != NULL)
        s->head->lprev = e;
    s->head = e;
    if (s->tail == NULL)
        s->tail = e;
}

static void wh__hash_remove(wh__rl_shard_t *s, wh__rl_entry_t *e)
{
    wh__rl_entry_t **pp = &s->buckets[e->hash & (s->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
}

/* Doubles the bucket array; on allocation failure the table keeps working with longer chains. */
static void wh__hash_grow(wh__rl_shard_t *s)
{
    size_t n = s->nbuckets * 2;
    wh__rl_entry_t **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (wh__rl_entry_t *e = s->buckets[i], *next; e != NULL; e = next) {
            next = e->hnext;
            e->hnext = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
}

static wh__rl_entry_t *wh__find(wh__rl_shard_t *s, uint64_t h, const char *key, size_t keylen)
{
    for (wh__rl_entry_t *e = s->buckets[h & (s->nbuckets - 1)]; e != NULL; e = e->hnext)
        if (e->hash == h && e->keylen == keylen && memcmp(e->key, key, keylen) == 0)
            return e;
    return NULL;
}

/* Adds a full bucket for key, evicting the least recently used one when the shard is full. */
static wh__rl_entry_t *wh__insert(wh_ratelimit_t *rl, wh__rl_shard_t *s, uint64_t h,
                                  const char *key, size_t keylen, double now)
{
    if (s->count >= s->cap && s->tail != NULL) {
        wh__rl_entry_t *victim = s->tail;
        wh__lru_unlink(s, victim);
        wh__hash_remove(s, victim);
        free(victim);
        s->count--;
    }
    wh__rl_entry_t *e = malloc(sizeof(*e) + keylen);
    if (e == NULL)
        return NULL;
    memset(e, 0, sizeof(*e));
    e->hash = h;
    e->tokens = rl->burst;
    e->last = now;
    e->keylen = keylen;
    memcpy(e->key, key, keylen);
    if (s->count + 1 > s->nbuckets && s->nbuckets < s->maxbuckets)
        wh__hash_grow(s);
    size_t b = h & (s->nbuckets - 1);
    e->hnext = s->buckets[b];
    s->buckets[b] = e;
    wh__lru_push_front(s, e);
    s->count++;
    return e;
}

static int wh__retry_after(const wh_ratelimit_t *rl, double tokens)
{
    if (rl->rate <= 0)
        return WH__RL_MAX_RETRY;
    double secs = ceil((1.0 - tokens) / rl->rate - WH__RL_EPS);
    if (secs < 1)
        return 1;
    return secs > WH__RL_MAX_RETRY ? WH__RL_MAX_RETRY : (int)secs;
}

static int wh__op(wh_ratelimit_t *rl, const char *key, size_t keylen, double now,
                  int *retry_after, int consume)
{
    static const char empty[1];
    if (key == NULL)
        key = empty;
    uint64_t h = wh__siphash(rl->k0, rl->k1, key, keylen);
    wh__rl_shard_t *s = &rl->shard[(h >> 32) % rl->nshards];
    int ok;
    int ra = 0;

    pthread_mutex_lock(&s->mu);
    wh__rl_entry_t *e = wh__find(s, h, key, keylen);
    if (e == NULL) {
        /* An unknown key has a full bucket. Peeking does not store it (a flood of peeks cannot
         * evict anyone); a failed allocation allows the request rather than dropping it. */
        if (consume && (e = wh__insert(rl, s, h, key, keylen, now)) != NULL)
            e->tokens -= 1;
        pthread_mutex_unlock(&s->mu);
        if (retry_after != NULL)
            *retry_after = 0;
        return 1;
    }
    if (now > e->last) {
        e->tokens += (now - e->last) * rl->rate;
        if (e->tokens > rl->burst)
            e->tokens = rl->burst;
        e->last = now;
    }
    if (e->tokens >= 1.0 - WH__RL_EPS) {
        if (consume) {
            e->tokens -= 1.0;
            if (e->tokens < 0)
                e->tokens = 0;
        }
        ok = 1;
    } else {
        ok = 0;
        ra = wh__retry_after(rl, e->tokens);
    }
    if (s->head != e) {
        wh__lru_unlink(s, e);
        wh__lru_push_front(s, e);
    }
    pthread_mutex_unlock(&s->mu);
    if (retry_after != NULL)
        *retry_after = ra;
    return ok;
}

int wh_ratelimit_take(wh_ratelimit_t *rl, const char *key, size_t keylen, double now,
                      int *retry_after)
{
    return wh__op(rl, key, keylen, now, retry_after, 1);
}

int wh_ratelimit_peek(wh_ratelimit_t *rl, const char *key, size_t keylen, double now,
                      int *retry_after)
{
    return wh__op(rl, key, keylen, now, retry_after, 0);
}
