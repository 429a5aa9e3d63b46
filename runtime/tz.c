/* Local time from the system's TZif zoneinfo files (versions 1 to 4, with the POSIX TZ footer rule
 * for instants past the last transition), parsed once per zone and cached, never touching TZ. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wahook/common.h"
#include "wahook/tz.h"

#define WH__TZ_NAME_MAX 255
/* Real TZif files are a few KiB; anything this big is not one. */
#define WH__TZ_FILE_MAX (1024 * 1024)
/* RFC 8536 bounds UT offsets to -24:59:59 .. +25:59:59; mktime searches one hour wider. */
#define WH__TZ_OFF_MAX (26 * 3600)
#define WH__TZ_WINDOW (27 * 3600)
#define WH__TZ_DAY 86400

typedef struct wh__ttype {
    int32_t off; /* seconds east of UTC */
    int isdst;
    char abbr[sizeof(((wh_tm_t *)0)->abbr)];
} wh__ttype_t;

/* One end of a POSIX DST rule: Jn (1..365, no Feb 29), n (0..365) or Mm.w.d. */
typedef struct wh__rdate {
    char kind; /* 'J', 'N' or 'M' */
    int a, b, c; /* J/N: a = day; M: a = month, b = week, c = weekday (0 = Sunday) */
    int32_t time; /* local seconds after midnight, may be negative or past 24 h (v3) */
} wh__rdate_t;

typedef struct wh__rule {
    wh__ttype_t std, dst;
    int has_dst;
    wh__rdate_t start, end;
} wh__rule_t;

typedef struct wh__zone {
    struct wh__zone *next;
    char *name;
    size_t ntrans;
    int64_t *trans;   /* ascending UTC instants */
    uint8_t *idx;     /* type in effect from trans[i] on */
    size_t ntypes;
    wh__ttype_t *types;
    int has_rule;     /* the footer applies from the last transition on */
    wh__rule_t rule;
} wh__zone_t;

static pthread_mutex_t wh__tz_lock = PTHREAD_MUTEX_INITIALIZER;
static wh__zone_t *wh__tz_cache;
static char wh__tz_dir[PATH_MAX];

/* ---- calendar arithmetic (proleptic Gregorian, 64-bit) --------------------------------------- */

static int64_t wh__floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static int wh__leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int wh__mdays(int64_t y, int m)
{
    static const int n[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && wh__leap(y) ? 29 : n[m - 1];
}

/* Days since 1970-01-01 of y-m-d (m 1..12, d 1..31). */
static int64_t wh__days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void wh__civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

/* 0 = Sunday .. 6 = Saturday; 1970-01-01 was a Thursday. */
static int wh__weekday(int64_t days)
{
    return (int)(((days % 7) + 7 + 4) % 7);
}

/* ---- POSIX TZ strings (the TZif footer) ------------------------------------------------------ */

static int wh__isalpha(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int wh__isdigit(char c)
{
    return c >= '0' && c <= '9';
}

/* An abbreviation: three or more letters, or <...> of letters, digits, '+' and '-'. */
static const char *wh__p_name(const char *s, char *out, size_t outlen)
{
    const char *b, *e;
    if (*s == '<') {
        b = ++s;
        while (wh__isalpha(*s) || wh__isdigit(*s) || *s == '+' || *s == '-')
            s++;
        if (*s != '>')
            return NULL;
        e = s++;
    } else {
        b = s;
        while (wh__isalpha(*s))
            s++;
        e = s;
    }
    if (e - b < 3)
        return NULL;
    size_t n = (size_t)(e - b) < outlen - 1 ? (size_t)(e - b) : outlen - 1;
    memcpy(out, b, n);
    out[n] = '\0';
    return s;
}

static const char *wh__p_num(const char *s, int min, int max, int *v)
{
    int n = 0, any = 0;
    while (wh__isdigit(*s)) {
        n = n * 10 + (*s++ - '0');
        any = 1;
        if (n > max)
            return NULL;
    }
    if (!any || n < min)
        return NULL;
    *v = n;
    return s;
}

/* [+-]h[h[h]][:mm[:ss]], hours up to maxh. */
static const char *wh__p_hms(const char *s, int maxh, int32_t *secs)
{
    int sign = 1, h, m = 0, sec = 0;
    if (*s == '+' || *s == '-')
        sign = *s++ == '-' ? -1 : 1;
    if ((s = wh__p_num(s, 0, maxh, &h)) == NULL)
        return NULL;
    if (*s == ':') {
        if ((s = wh__p_num(s + 1, 0, 59, &m)) == NULL)
            return NULL;
        if (*s == ':' && (s = wh__p_num(s + 1, 0, 59, &sec)) == NULL)
            return NULL;
    }
    *secs = sign * (h * 3600 + m * 60 + sec);
    return s;
}

static const char *wh__p_rdate(const char *s, wh__rdate_t *r)
{
    if (*s == 'J') {
        r->kind = 'J';
        s = wh__p_num(s + 1, 1, 365, &r->a);
    } else if (*s == 'M') {
        r->kind = 'M';
        if ((s = wh__p_num(s + 1, 1, 12, &r->a)) == NULL || *s != '.' ||
            (s = wh__p_num(s + 1, 1, 5, &r->b)) == NULL || *s != '.')
            return NULL;
        s = wh__p_num(s + 1, 0, 6, &r->c);
    } else {
        r->kind = 'N';
        s = wh__p_num(s, 0, 365, &r->a);
    }
    if (s == NULL)
        return NULL;
    r->time = 2 * 3600;
    if (*s == '/')
        s = wh__p_hms(s + 1, 167, &r->time); /* RFC 8536 extension: -167..167 hours */
    return s;
}

/* Parses a footer such as "CET-1CEST,M3.5.0,M10.5.0/3". Returns 0 or WH_EINVAL. */
static int wh__parse_rule(const char *s, wh__rule_t *r)
{
    int32_t off;
    memset(r, 0, sizeof(*r));
    if ((s = wh__p_name(s, r->std.abbr, sizeof(r->std.abbr))) == NULL ||
        (s = wh__p_hms(s, 24, &off)) == NULL)
        return WH_EINVAL;
    r->std.off = -off; /* POSIX offsets count west of Greenwich */
    if (*s == '\0')
        return WH_OK;
    if ((s = wh__p_name(s, r->dst.abbr, sizeof(r->dst.abbr))) == NULL)
        return WH_EINVAL;
    r->has_dst = 1;
    r->dst.isdst = 1;
    r->dst.off = r->std.off + 3600;
    if (*s != ',' && *s != '\0') {
        if ((s = wh__p_hms(s, 24, &off)) == NULL)
            return WH_EINVAL;
        r->dst.off = -off;
    }
    if (*s == '\0')
        s = ",M3.2.0,M11.1.0"; /* POSIX leaves it to the implementation; tzcode uses US rules */
    if (*s != ',' || (s = wh__p_rdate(s + 1, &r->start)) == NULL || *s != ',' ||
        (s = wh__p_rdate(s + 1, &r->end)) == NULL || *s != '\0')
        return WH_EINVAL;
    return WH_OK;
}

/* Days since the epoch of the rule date in year y. */
static int64_t wh__rdate_day(const wh__rdate_t *r, int64_t y)
{
    int64_t jan1 = wh__days_from_civil(y, 1, 1);
    switch (r->kind) {
    case 'J':
        return jan1 + r->a - 1 + (wh__leap(y) && r->a >= 60);
    case 'N':
        return jan1 + r->a;
    default: {
        int64_t first = wh__days_from_civil(y, r->a, 1);
        int64_t day = first + (r->c - wh__weekday(first) + 7) % 7 + 7 * (r->b - 1);
        while (day >= first + wh__mdays(y, r->a)) /* week 5 means the last one */
            day -= 7;
        return day;
    }
    }
}

/* UTC instants at which DST starts and ends in year y. Each rule time is in the local time in
 * effect just before it (standard before the start, daylight before the end). */
static void wh__rule_year(const wh__rule_t *r, int64_t y, int64_t *start, int64_t *end)
{
    *start = wh__rdate_day(&r->start, y) * WH__TZ_DAY + r->start.time - r->std.off;
    *end = wh__rdate_day(&r->end, y) * WH__TZ_DAY + r->end.time - r->dst.off;
}

static int64_t wh__year_of(int64_t t)
{
    int64_t y;
    int m, d;
    wh__civil_from_days(wh__floordiv(t, WH__TZ_DAY), &y, &m, &d);
    return y;
}

/* The type in effect at t under the rule: the latest transition at or before t among those of the
 * neighbouring years wins, which also handles rules that straddle New Year and all-year DST. */
static const wh__ttype_t *wh__rule_at(const wh__rule_t *r, int64_t t)
{
    if (!r->has_dst)
        return &r->std;
    int64_t y = wh__year_of(t), best = INT64_MIN;
    const wh__ttype_t *type = &r->std;
    for (int64_t yy = y - 1; yy <= y + 1; yy++) {
        int64_t s, e;
        wh__rule_year(r, yy, &s, &e);
        if (e <= t && e > best) {
            best = e;
            type = &r->std;
        }
        if (s <= t && s >= best) { /* a start that coincides with an end keeps DST going */
            best = s;
            type = &r->dst;
        }
    }
    return type;
}

/* First rule transition strictly after t. */
static int64_t wh__rule_next(const wh__rule_t *r, int64_t t)
{
    int64_t y = wh__year_of(t), best = INT64_MAX;
    for (int64_t yy = y - 1; yy <= y + 2; yy++) {
        int64_t s, e;
        wh__rule_year(r, yy, &s, &e);
        if (s > t && s < best)
            best = s;
        if (e > t && e < best)
            best = e;
    }
    return best;
}

/* ---- zone lookup ---------------------------------------------------------------------------- */

static const wh__ttype_t *wh__zone_at(const wh__zone_t *z, int64_t t)
{
    if (z->ntrans == 0)
        return z->has_rule ? wh__rule_at(&z->rule, t) : &z->types[0];
    if (t < z->trans[0])
        return &z->types[0]; /* RFC 8536: type 0 before the first transition */
    if (t >= z->trans[z->ntrans - 1] && z->has_rule)
        return wh__rule_at(&z->rule, t);
    size_t lo = 0, hi = z->ntrans; /* largest i with trans[i] <= t */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (z->trans[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return &z->types[z->idx[lo]];
}

/* First transition strictly after t, or 0 when there is none. */
static int wh__zone_next(const wh__zone_t *z, int64_t t, int64_t *next)
{
    if (z->ntrans > 0 && t < z->trans[z->ntrans - 1]) {
        size_t lo = 0, hi = z->ntrans - 1; /* smallest i with trans[i] > t */
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (z->trans[mid] > t)
                hi = mid;
            else
                lo = mid + 1;
        }
        *next = z->trans[lo];
        return 1;
    }
    if (!z->has_rule || !z->rule.has_dst)
        return 0;
    *next = wh__rule_next(&z->rule, t);
    return 1;
}

/* ---- TZif files (RFC 8536) ------------------------------------------------------------------ */

typedef struct wh__hdr {
    uint32_t isut, isstd, leap, time, type, chars;
} wh__hdr_t;

static uint32_t wh__be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t wh__be64(const uint8_t *p)
{
    return (int64_t)((uint64_t)wh__be32(p) << 32 | wh__be32(p + 4));
}

/* Reads a header at p; returns its version (1..) or WH_EINVAL. */
static int wh__read_hdr(const uint8_t *p, size_t n, wh__hdr_t *h)
{
    if (n < 44 || memcmp(p, "TZif", 4) != 0)
        return WH_EINVAL;
    int version = p[4] == 0 ? 1 : (p[4] >= '2' && p[4] <= '9') ? p[4] - '0' : -1;
    if (version < 0)
        return WH_EINVAL;
    h->isut = wh__be32(p + 20);
    h->isstd = wh__be32(p + 24);
    h->leap = wh__be32(p + 28);
    h->time = wh__be32(p + 32);
    h->type = wh__be32(p + 36);
    h->chars = wh__be32(p + 40);
    /* Type indexes are bytes, so at most 256 types; the other bounds only keep sizes sane. */
    if (h->type == 0 || h->type > 256 || h->chars == 0 || h->chars > 65536 ||
        h->time > 1000000 || h->leap > 100000 || (h->isut != 0 && h->isut != h->type) ||
        (h->isstd != 0 && h->isstd != h->type))
        return WH_EINVAL;
    return version;
}

static size_t wh__block_len(const wh__hdr_t *h, size_t tsize)
{
    return h->time * tsize + h->time + h->type * 6 + h->chars + h->leap * (tsize + 4) + h->isstd +
           h->isut;
}

/* Fills z's transitions and types from a data block of tsize-byte times. */
static int wh__read_block(wh__zone_t *z, const wh__hdr_t *h, const uint8_t *p, size_t tsize)
{
    z->ntrans = h->time;
    z->ntypes = h->type;
    z->trans = calloc(h->time ? h->time : 1, sizeof(*z->trans));
    z->idx = calloc(h->time ? h->time : 1, 1);
    z->types = calloc(h->type, sizeof(*z->types));
    if (z->trans == NULL || z->idx == NULL || z->types == NULL)
        return WH_ENOMEM;
    for (size_t i = 0; i < h->time; i++, p += tsize) {
        z->trans[i] = tsize == 8 ? wh__be64(p) : (int64_t)(int32_t)wh__be32(p);
        if (i > 0 && z->trans[i] <= z->trans[i - 1])
            return WH_EINVAL;
    }
    for (size_t i = 0; i < h->time; i++) {
        z->idx[i] = *p++;
        if (z->idx[i] >= h->type)
            return WH_EINVAL;
    }
    const uint8_t *chars = p + h->type * 6;
    for (size_t i = 0; i < h->type; i++, p += 6) {
        int32_t off = (int32_t)wh__be32(p);
        uint8_t isdst = p[4], ai = p[5];
        if (off <= -WH__TZ_OFF_MAX || off >= WH__TZ_OFF_MAX || isdst > 1 || ai >= h->chars)
            return WH_EINVAL;
        const uint8_t *nul = memchr(chars + ai, '\0', h->chars - ai);
        if (nul == NULL)
            return WH_EINVAL;
        size_t n = (size_t)(nul - (chars + ai));
        if (n >= sizeof(z->types[i].abbr))
            n = sizeof(z->types[i].abbr) - 1;
        z->types[i].off = off;
        z->types[i].isdst = isdst;
        memcpy(z->types[i].abbr, chars + ai, n);
        z->types[i].abbr[n] = '\0';
    }
    /* Leap-second records and the standard/UT indicators do not change civil time here. */
    return WH_OK;
}

static int wh__parse_tzif(wh__zone_t *z, const uint8_t *buf, size_t n)
{
    wh__hdr_t h;
    int version = wh__read_hdr(buf, n, &h);
    if (version < 0)
        return version;
    size_t len = wh__block_len(&h, 4);
    if (n - 44 < len)
        return WH_EINVAL;
    if (version == 1)
        return wh__read_block(z, &h, buf + 44, 4);
    /* Version 2+: skip the 32-bit block, use the 64-bit one and the footer. */
    const uint8_t *p = buf + 44 + len;
    size_t rest = n - 44 - len;
    if (wh__read_hdr(p, rest, &h) < 2)
        return WH_EINVAL;
    len = wh__block_len(&h, 8);
    if (rest - 44 < len)
        return WH_EINVAL;
    int rc = wh__read_block(z, &h, p + 44, 8);
    if (rc != WH_OK)
        return rc;
    p += 44 + len;
    rest -= 44 + len;
    if (rest < 2 || p[0] != '\n')
        return WH_EINVAL;
    const uint8_t *end = memchr(p + 1, '\n', rest - 1);
    if (end == NULL || end - (p + 1) > 255)
        return WH_EINVAL;
    if (end == p + 1)
        return WH_OK; /* empty footer: the last type holds forever */
    char footer[256];
    memcpy(footer, p + 1, (size_t)(end - (p + 1)));
    footer[end - (p + 1)] = '\0';
    if (wh__parse_rule(footer, &z->rule) != WH_OK)
        return WH_EINVAL;
    z->has_rule = 1;
    return WH_OK;
}

static void wh__zone_free(wh__zone_t *z)
{
    if (z == NULL)
        return;
    free(z->name);
    free(z->trans);
    free(z->idx);
    free(z->types);
    free(z);
}

/* Region/City names only: letters, digits, '_', '+', '-' and single '/' separators, so the path
 * can never leave the zoneinfo directory. */
static int wh__name_ok(const char *name)
{
    if (name == NULL || name[0] == '\0' || name[0] == '/' || strstr(name, "..") != NULL)
        return 0;
    size_t n = strlen(name);
    if (n > WH__TZ_NAME_MAX || name[n - 1] == '/')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!(wh__isalpha(c) || wh__isdigit(c) || c == '_' || c == '+' || c == '-' || c == '/'))
            return 0;
        if (c == '/' && name[i + 1] == '/')
            return 0;
        if (c == '-' && (i == 0 || name[i - 1] == '/'))
            return 0; /* no component that looks like an option */
    }
    return 1;
}

static const char *wh__dir(void)
{
    if (wh__tz_dir[0] == '\0') {
        const char *env = getenv("TZDIR");
        snprintf(wh__tz_dir, sizeof(wh__tz_dir), "%s",
                 env != NULL && env[0] == '/' ? env : "/usr/share/zoneinfo");
    }
    return wh__tz_dir;
}

/* Reads dir/name. Returns 0, WH_ENOTFOUND, WH_EINVAL (not a TZif file), WH_EIO or WH_ENOMEM. */
static int wh__read_file(const char *name, uint8_t **buf, size_t *len)
{
    char path[PATH_MAX];
    int n = snprintf(path, sizeof(path), "%s/%s", wh__dir(), name);
    if (n < 0 || (size_t)n >= sizeof(path))
        return WH_EINVAL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ENOTDIR ? WH_ENOTFOUND : WH_EIO;
    struct stat st;
    int rc = WH_OK;
    *buf = NULL;
    if (fstat(fd, &st) != 0) {
        rc = WH_EIO;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = WH_ENOTFOUND; /* a region directory such as "Europe" names no zone */
        goto out;
    }
    if (st.st_size < 44 || st.st_size > WH__TZ_FILE_MAX) {
        rc = WH_EINVAL;
        goto out;
    }
    *len = (size_t)st.st_size;
    if ((*buf = malloc(*len)) == NULL) {
        rc = WH_ENOMEM;
        goto out;
    }
    for (size_t got = 0; got < *len;) {
        ssize_t r = read(fd, *buf + got, *len - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = WH_EIO;
            goto out;
        }
        got += (size_t)r;
    }
out:
    if (rc != WH_OK) {
        free(*buf);
        *buf = NULL;
    }
    close(fd);
    return rc;
}

static int wh__load(const char *name, wh__zone_t **out)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    wh__zone_t *z = calloc(1, sizeof(*z));
    if (z == NULL || (z->name = strdup(name)) == NULL) {
        wh__zone_free(z);
        return WH_ENOMEM;
    }
    int rc = wh__read_file(name, &buf, &len);
    if (rc == WH_ENOTFOUND && (strcmp(name, "UTC") == 0 || strcmp(name, "Etc/UTC") == 0)) {
        /* UTC works even on a host without tzdata. */
        rc = WH_OK;
        z->ntypes = 1;
        if ((z->types = calloc(1, sizeof(*z->types))) == NULL)
            rc = WH_ENOMEM;
        else
            strcpy(z->types[0].abbr, "UTC");
    } else if (rc == WH_OK) {
        rc = wh__parse_tzif(z, buf, len);
    }
    free(buf);
    if (rc != WH_OK) {
        wh__zone_free(z);
        return rc;
    }
    *out = z;
    return WH_OK;
}

/* The cached zone for name, loading it on first use. Zones are immutable once cached. */
static int wh__get(const char *name, const wh__zone_t **out)
{
    if (!wh__name_ok(name))
        return WH_EINVAL;
    int rc = WH_OK;
    pthread_mutex_lock(&wh__tz_lock);
    wh__zone_t *z = wh__tz_cache;
    while (z != NULL && strcmp(z->name, name) != 0)
        z = z->next;
    if (z == NULL && (rc = wh__load(name, &z)) == WH_OK) {
        z->next = wh__tz_cache;
        wh__tz_cache = z;
    }
    pthread_mutex_unlock(&wh__tz_lock);
    *out = z;
    return rc;
}

/* ---- public API ----------------------------------------------------------------------------- */

static void wh__fill(int64_t t, const wh__ttype_t *type, wh_tm_t *out)
{
    int64_t local = t + type->off;
    int64_t days = wh__floordiv(local, WH__TZ_DAY);
    int64_t secs = local - days * WH__TZ_DAY;
    int64_t y;
    int m, d;
    wh__civil_from_days(days, &y, &m, &d);
    memset(out, 0, sizeof(*out));
    out->year = (int)y;
    out->month = m;
    out->day = d;
    out->hour = (int)(secs / 3600);
    out->min = (int)(secs / 60 % 60);
    out->sec = (int)(secs % 60);
    out->wday = (wh__weekday(days) + 6) % 7 + 1;
    out->yday = (int)(days - wh__days_from_civil(y, 1, 1)) + 1;
    out->isdst = type->isdst;
    out->utc_offset = type->off;
    memcpy(out->abbr, type->abbr, sizeof(out->abbr));
}

int wh_tz_localtime(const char *zone, int64_t t, wh_tm_t *out)
{
    const wh__zone_t *z;
    int rc = wh__get(zone, &z);
    if (rc != WH_OK)
        return rc;
    if (t < -WH_TZ_TIME_MAX || t > WH_TZ_TIME_MAX)
        return WH_EINVAL;
    wh__fill(t, wh__zone_at(z, t), out);
    return WH_OK;
}

/* The UTC instant whose local time in z is local (see wh_tz_mktime for gaps and overlaps). */
static int64_t wh__solve(const wh__zone_t *z, int64_t local)
{
    /* The offsets in force around local, as segments [start_i, start_{i+1}) of UTC time. A UTC
     * solution t = local - off_i must fall inside its own segment. */
    enum { NSEG = 16 };
    int64_t start[NSEG], tn;
    int32_t off[NSEG];
    int64_t hi = local + WH__TZ_WINDOW;
    int nseg = 1;
    start[0] = local - WH__TZ_WINDOW;
    off[0] = wh__zone_at(z, start[0])->off;
    while (nseg < NSEG && wh__zone_next(z, start[nseg - 1], &tn) && tn <= hi) {
        start[nseg] = tn;
        off[nseg] = wh__zone_at(z, tn)->off;
        nseg++;
    }
    for (int i = 0; i < nseg; i++) { /* ascending, so the first hit is the earlier instant */
        int64_t t = local - off[i];
        if (t >= start[i] && (i + 1 == nseg || t < start[i + 1]))
            return t;
    }
    /* In a gap: keep the distance from the gap's start by reading local with the offset before
     * the transition (02:30 in a 02:00-03:00 gap is 03:30). */
    for (int i = 1; i < nseg; i++) {
        if (off[i] > off[i - 1] && local >= start[i] + off[i - 1] && local < start[i] + off[i])
            return local - off[i - 1];
    }
    return local - off[0]; /* unreachable for consistent zone data */
}

int wh_tz_mktime(const char *zone, const wh_tm_t *f, int64_t *out)
{
    const wh__zone_t *z;
    int rc = wh__get(zone, &z);
    if (rc != WH_OK)
        return rc;
    /* Local seconds as if the zone were UTC; normalises every field at once. */
    int64_t m0 = (int64_t)f->month - 1;
    int64_t y = f->year + wh__floordiv(m0, 12);
    int m = (int)(m0 - wh__floordiv(m0, 12) * 12) + 1;
    if (y < -40000000 || y > 40000000)
        return WH_EINVAL;
    int64_t local = (wh__days_from_civil(y, m, 1) + f->day - 1) * WH__TZ_DAY +
                    (int64_t)f->hour * 3600 + (int64_t)f->min * 60 + f->sec;
    if (local < -WH_TZ_TIME_MAX || local > WH_TZ_TIME_MAX)
        return WH_EINVAL;
    int64_t t = wh__solve(z, local);
    if (t < -WH_TZ_TIME_MAX || t > WH_TZ_TIME_MAX)
        return WH_EINVAL; /* so that localtime can always read the result back */
    *out = t;
    return WH_OK;
}

void wh_tz_set_dir(const char *dir)
{
    pthread_mutex_lock(&wh__tz_lock);
    snprintf(wh__tz_dir, sizeof(wh__tz_dir), "%s", dir != NULL ? dir : "");
    /* Cached zones came from the old directory. */
    while (wh__tz_cache != NULL) {
        wh__zone_t *next = wh__tz_cache->next;
        wh__zone_free(wh__tz_cache);
        wh__tz_cache = next;
    }
    pthread_mutex_unlock(&wh__tz_lock);
}
