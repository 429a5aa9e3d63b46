/* Tests for runtime/tz.c: real zones from the system's tzdata, DST edges, the POSIX footer rule,
 * mktime's gap/overlap/normalisation rules, hand-made TZif files, names and the cache. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wahook/common.h"
#include "wahook/tz.h"
#include "wh_test.h"

/* 2026-03-29T01:00:00Z and 2026-10-25T01:00:00Z: Europe/Madrid's 2026 transitions. */
#define T_SPRING_2026 INT64_C(1774746000)
#define T_AUTUMN_2026 INT64_C(1792890000)

static wh_tm_t lt(const char *zone, int64_t t)
{
    wh_tm_t tm;
    memset(&tm, 0x55, sizeof(tm));
    int rc = wh_tz_localtime(zone, t, &tm);
    CHECK_INT(rc, WH_OK);
    return tm;
}

static int64_t mk(const char *zone, int y, int mo, int d, int h, int mi, int s)
{
    wh_tm_t f = {.year = y, .month = mo, .day = d, .hour = h, .min = mi, .sec = s};
    int64_t t = INT64_MIN;
    CHECK_INT(wh_tz_mktime(zone, &f, &t), WH_OK);
    return t;
}

#define CHECK_TM(tm, y, mo, d, h, mi, s, off, dst, ab)                                          \
    do {                                                                                        \
        CHECK_INT((tm).year, y);                                                                \
        CHECK_INT((tm).month, mo);                                                              \
        CHECK_INT((tm).day, d);                                                                 \
        CHECK_INT((tm).hour, h);                                                                \
        CHECK_INT((tm).min, mi);                                                                \
        CHECK_INT((tm).sec, s);                                                                 \
        CHECK_INT((tm).utc_offset, off);                                                        \
        CHECK_INT((tm).isdst, dst);                                                             \
        CHECK_STR((tm).abbr, ab);                                                               \
    } while (0)

static void test_madrid(void)
{
    /* 2026-01-15T12:00Z (a Thursday) and 2026-07-15T12:00Z (a Wednesday). */
    wh_tm_t w = lt("Europe/Madrid", INT64_C(1768478400));
    CHECK_TM(w, 2026, 1, 15, 13, 0, 0, 3600, 0, "CET");
    CHECK_INT(w.wday, 4);
    CHECK_INT(w.yday, 15);
    wh_tm_t s = lt("Europe/Madrid", INT64_C(1784116800));
    CHECK_TM(s, 2026, 7, 15, 14, 0, 0, 7200, 1, "CEST");
    CHECK_INT(s.wday, 3);
    CHECK_INT(s.yday, 196);

    /* The exact instants of the 2026 changes. */
    wh_tm_t a = lt("Europe/Madrid", T_SPRING_2026 - 1);
    CHECK_TM(a, 2026, 3, 29, 1, 59, 59, 3600, 0, "CET");
    wh_tm_t b = lt("Europe/Madrid", T_SPRING_2026);
    CHECK_TM(b, 2026, 3, 29, 3, 0, 0, 7200, 1, "CEST");
    CHECK_INT(b.wday, 7);
    wh_tm_t c = lt("Europe/Madrid", T_AUTUMN_2026 - 1);
    CHECK_TM(c, 2026, 10, 25, 2, 59, 59, 7200, 1, "CEST");
    wh_tm_t d = lt("Europe/Madrid", T_AUTUMN_2026);
    CHECK_TM(d, 2026, 10, 25, 2, 0, 0, 3600, 0, "CET");

    /* 2100 is past the file's transitions: the footer rule CET-1CEST,M3.5.0,M10.5.0/3 answers.
     * Its changes fall on 2100-03-28 and 2100-10-31 at 01:00Z. */
    wh_tm_t f1 = lt("Europe/Madrid", INT64_C(4102488000)); /* 2100-01-01T12:00Z */
    CHECK_TM(f1, 2100, 1, 1, 13, 0, 0, 3600, 0, "CET");
    CHECK_INT(f1.wday, 5);
    wh_tm_t f2 = lt("Europe/Madrid", INT64_C(4118126400)); /* 2100-07-01T12:00Z */
    CHECK_TM(f2, 2100, 7, 1, 14, 0, 0, 7200, 1, "CEST");
    CHECK_TM(lt("Europe/Madrid", INT64_C(4109878800) - 1), 2100, 3, 28, 1, 59, 59, 3600, 0, "CET");
    CHECK_TM(lt("Europe/Madrid", INT64_C(4109878800)), 2100, 3, 28, 3, 0, 0, 7200, 1, "CEST");
    CHECK_TM(lt("Europe/Madrid", INT64_C(4128627600) - 1), 2100, 10, 31, 2, 59, 59, 7200, 1,
             "CEST");
    CHECK_TM(lt("Europe/Madrid", INT64_C(4128627600)), 2100, 10, 31, 2, 0, 0, 3600, 0, "CET");
    CHECK_INT(mk("Europe/Madrid", 2100, 7, 1, 14, 0, 0), INT64_C(4118126400));
}

static void test_other_zones(void)
{
    /* Sao Paulo: no DST since 2019, but the table still knows the summer of 2018. */
    CHECK_TM(lt("America/Sao_Paulo", INT64_C(1768478400)), 2026, 1, 15, 9, 0, 0, -10800, 0,
             "-03");
    CHECK_TM(lt("America/Sao_Paulo", INT64_C(1784116800)), 2026, 7, 15, 9, 0, 0, -10800, 0,
             "-03");
    CHECK_TM(lt("America/Sao_Paulo", INT64_C(1516017600)), 2018, 1, 15, 10, 0, 0, -7200, 1,
             "-02");
    CHECK_TM(lt("UTC", INT64_C(1768478400)), 2026, 1, 15, 12, 0, 0, 0, 0, "UTC");
    CHECK_TM(lt("UTC", 0), 1970, 1, 1, 0, 0, 0, 0, 0, "UTC");
    CHECK_TM(lt("UTC", -1), 1969, 12, 31, 23, 59, 59, 0, 0, "UTC");
    CHECK_TM(lt("Asia/Kolkata", INT64_C(1784116800)), 2026, 7, 15, 17, 30, 0, 19800, 0, "IST");
    CHECK_TM(lt("Asia/Kolkata", INT64_C(1768478400)), 2026, 1, 15, 17, 30, 0, 19800, 0, "IST");
    CHECK_INT(mk("Asia/Kolkata", 2026, 1, 1, 0, 0, 0), INT64_C(1767205800));
    wh_tm_t leap = lt("UTC", INT64_C(1735603200)); /* 2024-12-31: day 366 of a leap year */
    CHECK_INT(leap.yday, 366);
    CHECK_INT(leap.wday, 2);
}

static void test_mktime_rules(void)
{
    /* 02:30 on 2026-03-29 does not exist in Madrid: it becomes 03:30 CEST (01:30Z). */
    int64_t gap = mk("Europe/Madrid", 2026, 3, 29, 2, 30, 0);
    CHECK_INT(gap, T_SPRING_2026 + 1800);
    CHECK_TM(lt("Europe/Madrid", gap), 2026, 3, 29, 3, 30, 0, 7200, 1, "CEST");
    CHECK_INT(mk("Europe/Madrid", 2026, 3, 29, 2, 0, 0), T_SPRING_2026);
    CHECK_INT(mk("Europe/Madrid", 2026, 3, 29, 1, 59, 59), T_SPRING_2026 - 1);
    CHECK_INT(mk("Europe/Madrid", 2026, 3, 29, 3, 0, 0), T_SPRING_2026);
    /* 02:30 on 2026-10-25 happens twice: the earlier one, still CEST (00:30Z). */
    int64_t ov = mk("Europe/Madrid", 2026, 10, 25, 2, 30, 0);
    CHECK_INT(ov, T_AUTUMN_2026 - 1800);
    CHECK_TM(lt("Europe/Madrid", ov), 2026, 10, 25, 2, 30, 0, 7200, 1, "CEST");
    CHECK_INT(mk("Europe/Madrid", 2026, 10, 25, 3, 0, 0), T_AUTUMN_2026 + 3600);
    CHECK_INT(mk("Europe/Madrid", 2026, 10, 25, 1, 59, 59), T_AUTUMN_2026 - 3600 - 1);

    /* Normalisation. */
    CHECK_INT(mk("UTC", 2025, 13, 1, 0, 0, 0), mk("UTC", 2026, 1, 1, 0, 0, 0));
    CHECK_INT(mk("UTC", 2026, 3, 0, 0, 0, 0), mk("UTC", 2026, 2, 28, 0, 0, 0));
    CHECK_INT(mk("UTC", 2024, 3, 0, 0, 0, 0), mk("UTC", 2024, 2, 29, 0, 0, 0));
    CHECK_INT(mk("UTC", 2026, 1, 31, 24, 0, 0), mk("UTC", 2026, 2, 1, 0, 0, 0));
    CHECK_INT(mk("UTC", 2026, 1, 1, 0, -1, 0), mk("UTC", 2025, 12, 31, 23, 59, 0));
    CHECK_INT(mk("UTC", 2026, 0, 1, 0, 0, 0), mk("UTC", 2025, 12, 1, 0, 0, 0));
    CHECK_INT(mk("UTC", 2026, -13, 1, 0, 0, 0), mk("UTC", 2024, 11, 1, 0, 0, 0));
    CHECK_INT(mk("UTC", 2026, 2, 31, 0, 0, 0), mk("UTC", 2026, 3, 3, 0, 0, 0));
    CHECK_INT(mk("UTC", 2026, 1, 1, 0, 0, 86400 * 2), mk("UTC", 2026, 1, 3, 0, 0, 0));
    CHECK_INT(mk("UTC", 1970, 1, 1, 0, 0, 0), 0);
    CHECK_INT(mk("UTC", 2026, 1, 15, 12, 0, 0), INT64_C(1768478400));
    /* Normalised fields that land in the gap still follow the gap rule. */
    CHECK_INT(mk("Europe/Madrid", 2026, 3, 28, 26, 30, 0), T_SPRING_2026 + 1800);
    CHECK_INT(mk("Europe/Madrid", 2026, 4, 0, 0, 0, 0), mk("Europe/Madrid", 2026, 3, 31, 0, 0, 0));
    /* Fields and instants too far out are refused, not overflowed. */
    wh_tm_t huge = {.year = 2000000000, .month = 1, .day = 1};
    int64_t t;
    CHECK_INT(wh_tz_mktime("UTC", &huge, &t), WH_EINVAL);
    wh_tm_t tm;
    CHECK_INT(wh_tz_localtime("UTC", INT64_MAX, &tm), WH_EINVAL);
    CHECK_INT(wh_tz_localtime("UTC", INT64_MIN, &tm), WH_EINVAL);
}

/* Every :15 and :45 of 2026 in local time survives localtime(mktime(x)), except the ones a gap
 * skips, which move forward by exactly the gap; and every UTC hour survives mktime(localtime(t)),
 * except the second pass through an overlap, which maps to the first. */
static void round_trip(const char *zone, int want_gaps, int want_overlaps)
{
    int gaps = 0, overlaps = 0, bad = 0;
    for (int i = 0; i < 365 * 48; i++) { /* day, hour and :15/:45 of the year */
        wh_tm_t x = {.year = 2026, .month = 1, .day = 1 + i / 48, .hour = i / 2 % 24,
                     .min = 15 + 30 * (i % 2)};
        int64_t local = 0, t = 0;
        wh_tm_t y, norm;
        if (wh_tz_mktime("UTC", &x, &local) != WH_OK || wh_tz_mktime(zone, &x, &t) != WH_OK ||
            wh_tz_localtime(zone, t, &y) != WH_OK || wh_tz_localtime("UTC", local, &norm) != 0) {
            bad++;
            continue;
        }
        int64_t ylocal = t + y.utc_offset;
        if (ylocal == local) {
            bad += y.year != norm.year || y.month != norm.month || y.day != norm.day ||
                   y.hour != norm.hour || y.min != norm.min || y.sec != norm.sec ||
                   y.wday != norm.wday || y.yday != norm.yday;
        } else {
            wh_tm_t before;
            bad += wh_tz_localtime(zone, t - 7200, &before) != WH_OK;
            int64_t shift = y.utc_offset - before.utc_offset;
            bad += !(shift > 0 && shift <= 3600 && ylocal - local == shift);
            gaps++;
        }
    }
    int64_t t0 = mk("UTC", 2026, 1, 1, 0, 0, 0);
    for (int64_t t = t0; t < t0 + 365 * 86400; t += 1800) {
        wh_tm_t a, b;
        int64_t back = 0;
        if (wh_tz_localtime(zone, t, &a) != WH_OK || wh_tz_mktime(zone, &a, &back) != WH_OK) {
            bad++;
            continue;
        }
        if (back != t) {
            overlaps++;
            bad += back > t || wh_tz_localtime(zone, back, &b) != WH_OK || b.hour != a.hour ||
                   b.min != a.min || b.day != a.day || b.utc_offset <= a.utc_offset;
        }
    }
    if (bad != 0)
        fprintf(stderr, "round trip %s: %d bad\n", zone, bad);
    CHECK_INT(bad, 0);
    CHECK_INT(gaps, want_gaps);
    CHECK_INT(overlaps, want_overlaps);
}

static void test_round_trips(void)
{
    round_trip("Europe/Madrid", 2, 2);       /* 02:15, 02:45 skipped; UTC 01:00, 01:30 repeat */
    round_trip("America/New_York", 2, 2);
    round_trip("Australia/Sydney", 2, 2);    /* southern hemisphere */
    round_trip("Australia/Lord_Howe", 1, 1); /* 30-minute DST: 02:15 skipped, one repeat */
    round_trip("America/Sao_Paulo", 0, 0);
    round_trip("Asia/Kolkata", 0, 0);
    round_trip("UTC", 0, 0);
}

static void test_names(void)
{
    static const char *const bad[] = {
        "", "/etc/passwd", "../etc/passwd", "Europe/../UTC", "Europe/..", "..", "Europe//Madrid",
        "Europe/Madrid/", "Europe/Madrid ", "Europe/Madrid;rm", "Europe/Mad\\rid", "-rf",
        "Europe/.Madrid", "Europe/Madrid\n", "Europe/Madrid%00", "Europe/Madrid.gz",
    };
    wh_tm_t tm;
    int64_t t;
    wh_tm_t f = {.year = 2026, .month = 1, .day = 1};
    for (size_t i = 0; i < WH_ARRAY_SIZE(bad); i++) {
        int rc = wh_tz_localtime(bad[i], 0, &tm);
        if (rc != WH_EINVAL)
            fprintf(stderr, "name \"%s\" gave %d\n", bad[i], rc);
        CHECK_INT(rc, WH_EINVAL);
        CHECK_INT(wh_tz_mktime(bad[i], &f, &t), WH_EINVAL);
    }
    CHECK_INT(wh_tz_localtime(NULL, 0, &tm), WH_EINVAL);
    char longname[300];
    memset(longname, 'A', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    CHECK_INT(wh_tz_localtime(longname, 0, &tm), WH_EINVAL);
    CHECK_INT(wh_tz_localtime("Mars/Olympus_Mons", 0, &tm), WH_ENOTFOUND);
    CHECK_INT(wh_tz_mktime("Mars/Olympus_Mons", &f, &t), WH_ENOTFOUND);
    CHECK_INT(wh_tz_localtime("Europe", 0, &tm), WH_ENOTFOUND); /* a directory, not a zone */
    CHECK_INT(wh_tz_localtime("Etc/GMT+3", 0, &tm), WH_OK);     /* '+' and '-' are legal */
    CHECK_INT(tm.utc_offset, -10800);
    CHECK_INT(wh_tz_localtime("America/Port-au-Prince", 0, &tm), WH_OK);
}

/* ---- hand-made TZif files --------------------------------------------------------------------- */

static void put32(FILE *f, uint32_t v)
{
    fputc((int)(v >> 24), f);
    fputc((int)(v >> 16 & 255), f);
    fputc((int)(v >> 8 & 255), f);
    fputc((int)(v & 255), f);
}

typedef struct {
    int32_t off;
    uint8_t isdst, ai;
} tt_t;

/* One data block; tsize 4 or 8. */
static void put_block(FILE *f, char version, int tsize, int n, const int64_t *trans,
                      const uint8_t *idx, int ntypes, const tt_t *types, const char *chars,
                      int nchars)
{
    fputs("TZif", f);
    fputc(version, f);
    for (int i = 0; i < 15; i++)
        fputc(0, f);
    put32(f, 0);
    put32(f, 0);
    put32(f, 0);
    put32(f, (uint32_t)n);
    put32(f, (uint32_t)ntypes);
    put32(f, (uint32_t)nchars);
    for (int i = 0; i < n; i++) {
        if (tsize == 8)
            put32(f, (uint32_t)((uint64_t)trans[i] >> 32));
        put32(f, (uint32_t)trans[i]);
    }
    for (int i = 0; i < n; i++)
        fputc(idx[i], f);
    for (int i = 0; i < ntypes; i++) {
        put32(f, (uint32_t)types[i].off);
        fputc(types[i].isdst, f);
        fputc(types[i].ai, f);
    }
    fwrite(chars, 1, (size_t)nchars, f);
}

/* version 0 writes a v1 file; otherwise v1 block + 64-bit block + "\nfooter\n". */
static void write_tzif(const char *dir, const char *name, char version, int n,
                       const int64_t *trans, const uint8_t *idx, int ntypes, const tt_t *types,
                       const char *chars, int nchars, const char *footer)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    put_block(f, version, 4, n, trans, idx, ntypes, types, chars, nchars);
    if (version != 0) {
        put_block(f, version, 8, n, trans, idx, ntypes, types, chars, nchars);
        fprintf(f, "\n%s\n", footer);
    }
    fclose(f);
}

static void write_raw(const char *dir, const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, len, f) != len)
        exit(2);
    fclose(f);
}

static void test_files(void)
{
    char dir[] = "/tmp/wh-test-tz-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        exit(2);
    }
    wh_tz_set_dir(dir);
    wh_tm_t tm;

    /* v1 only: LMT until 1990, then AAA+1, then BBB+2 (DST) from 2000; no footer, so the last
     * type holds forever. */
    int64_t tr[] = {631152000, 946684800};
    uint8_t idx[] = {1, 2};
    tt_t types[] = {{-1234, 0, 0}, {3600, 0, 4}, {7200, 1, 8}};
    write_tzif(dir, "V1", 0, 2, tr, idx, 3, types, "LMT\0AAA\0BBB", 12, "");
    CHECK_TM(lt("V1", 631152000 - 1), 1989, 12, 31, 23, 39, 25, -1234, 0, "LMT");
    CHECK_TM(lt("V1", 631152000), 1990, 1, 1, 1, 0, 0, 3600, 0, "AAA");
    CHECK_TM(lt("V1", 946684800), 2000, 1, 1, 2, 0, 0, 7200, 1, "BBB");
    CHECK_TM(lt("V1", INT64_C(4102488000)), 2100, 1, 1, 14, 0, 0, 7200, 1, "BBB");

    /* v2, no transitions, footer with Julian J rules (Feb 29 never counted): DST from J60 = 1 March
     * 02:00 local to J300 = 27 October 03:00 local, every year. */
    tt_t one[] = {{7200, 0, 0}};
    write_tzif(dir, "J", '2', 0, NULL, NULL, 1, one, "XST", 4, "XST-2XDT,J60/2,J300/3");
    CHECK_TM(lt("J", INT64_C(1803859200) - 1), 2027, 3, 1, 1, 59, 59, 7200, 0, "XST");
    CHECK_TM(lt("J", INT64_C(1803859200)), 2027, 3, 1, 3, 0, 0, 10800, 1, "XDT");
    CHECK_TM(lt("J", INT64_C(1824595200) - 1), 2027, 10, 27, 2, 59, 59, 10800, 1, "XDT");
    CHECK_TM(lt("J", INT64_C(1824595200)), 2027, 10, 27, 2, 0, 0, 7200, 0, "XST");
    CHECK_TM(lt("J", INT64_C(1835438400)), 2028, 2, 29, 14, 0, 0, 7200, 0, "XST");
    /* The zero-based n form counts Feb 29: day 59 is 29 February in 2028. */
    write_tzif(dir, "N", '2', 0, NULL, NULL, 1, one, "XST", 4, "XST-2XDT,59/2,299/3");
    CHECK_TM(lt("N", INT64_C(1835395200) - 1), 2028, 2, 29, 1, 59, 59, 7200, 0, "XST");
    CHECK_TM(lt("N", INT64_C(1835395200)), 2028, 2, 29, 3, 0, 0, 10800, 1, "XDT");
    CHECK_TM(lt("N", INT64_C(1803859200)), 2027, 3, 1, 3, 0, 0, 10800, 1, "XDT");

    /* v3 rule times: negative hours and quoted numeric abbreviations (America/Nuuk's footer). One
     * transition in 2000 so that the footer takes over after a table. */
    int64_t tr3[] = {946684800};
    uint8_t idx3[] = {0};
    tt_t t3[] = {{-7200, 0, 0}};
    write_tzif(dir, "V3", '3', 1, tr3, idx3, 1, t3, "-02", 4, "<-02>2<-01>,M3.5.0/-1,M10.5.0/0");
    CHECK_TM(lt("V3", INT64_C(1901149200) - 1), 2030, 3, 30, 22, 59, 59, -7200, 0, "-02");
    CHECK_TM(lt("V3", INT64_C(1901149200)), 2030, 3, 31, 0, 0, 0, -3600, 1, "-01");
    CHECK_TM(lt("V3", INT64_C(1919293200) - 1), 2030, 10, 26, 23, 59, 59, -3600, 1, "-01");
    CHECK_TM(lt("V3", INT64_C(1919293200)), 2030, 10, 26, 23, 0, 0, -7200, 0, "-02");
    CHECK_INT(mk("V3", 2030, 3, 30, 23, 30, 0), INT64_C(1901149200) + 1800); /* gap 23:00-24:00 */
    CHECK_INT(mk("V3", 2030, 10, 26, 23, 30, 0), INT64_C(1919293200) - 1800); /* earlier pass */

    /* DST all year (RFC 8536 3.3.1): never falls back to standard time around New Year. */
    write_tzif(dir, "ALLYEAR", '3', 0, NULL, NULL, 1, one, "XST", 4, "XXX3XDT,0/0,J365/25");
    CHECK_TM(lt("ALLYEAR", INT64_C(1767225600)), 2025, 12, 31, 22, 0, 0, -7200, 1, "XDT");
    CHECK_TM(lt("ALLYEAR", INT64_C(1784116800)), 2026, 7, 15, 10, 0, 0, -7200, 1, "XDT");

    /* Broken files are WH_EINVAL; a bad footer is not silently ignored. */
    char junk[64] = "TZjf2";
    write_raw(dir, "BADMAGIC", junk, sizeof(junk));
    CHECK_INT(wh_tz_localtime("BADMAGIC", 0, &tm), WH_EINVAL);
    write_raw(dir, "SHORT", "TZif", 4);
    CHECK_INT(wh_tz_localtime("SHORT", 0, &tm), WH_EINVAL);
    write_tzif(dir, "BADFOOTER", '2', 0, NULL, NULL, 1, one, "XST", 4, "XST-2XDT,M13.1.0,J300");
    CHECK_INT(wh_tz_localtime("BADFOOTER", 0, &tm), WH_EINVAL);
    uint8_t badidx[] = {7};
    write_tzif(dir, "BADIDX", 0, 1, tr3, badidx, 1, one, "XST", 4, "");
    CHECK_INT(wh_tz_localtime("BADIDX", 0, &tm), WH_EINVAL);
    int64_t unsorted[] = {946684800, 631152000};
    write_tzif(dir, "UNSORTED", 0, 2, unsorted, idx, 3, types, "LMT\0AAA\0BBB", 12, "");
    CHECK_INT(wh_tz_localtime("UNSORTED", 0, &tm), WH_EINVAL);
    { /* A valid v2 file cut short inside its 64-bit block. */
        char path[512];
        write_tzif(dir, "CUT", '2', 2, tr, idx, 3, types, "LMT\0AAA\0BBB", 12, "AAA-1");
        snprintf(path, sizeof(path), "%s/CUT", dir);
        CHECK_INT(truncate(path, 44 + 2 * 5 + 18 + 12 + 44 + 8), 0);
        CHECK_INT(wh_tz_localtime("CUT", 0, &tm), WH_EINVAL);
    }

    /* Parsed once: the zone keeps working after its file is gone. */
    char path[512];
    snprintf(path, sizeof(path), "%s/J", dir);
    CHECK_INT(unlink(path), 0);
    CHECK_TM(lt("J", INT64_C(1803859200)), 2027, 3, 1, 3, 0, 0, 10800, 1, "XDT");
    /* UTC is built in when the directory has none. */
    CHECK_TM(lt("UTC", 0), 1970, 1, 1, 0, 0, 0, 0, 0, "UTC");
    CHECK_INT(wh_tz_localtime("Europe/Madrid", 0, &tm), WH_ENOTFOUND);

    /* Changing the directory drops the cache. */
    wh_tz_set_dir(NULL);
    CHECK_INT(wh_tz_localtime("J", 0, &tm), WH_ENOTFOUND);
    CHECK_INT(wh_tz_localtime("Europe/Madrid", 0, &tm), WH_OK);

    static const char *const files[] = {"V1", "N", "V3", "ALLYEAR", "BADMAGIC", "SHORT",
                                        "BADFOOTER", "BADIDX", "UNSORTED", "CUT"};
    for (size_t i = 0; i < WH_ARRAY_SIZE(files); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Several threads load and read the same zones at once; every answer must be the same. */
static void *thread_main(void *arg)
{
    long bad = 0;
    static const char *const zones[] = {"Asia/Tokyo", "Europe/Lisbon", "America/Chicago"};
    static const int32_t offs[] = {32400, 3600, -18000}; /* at 2026-07-15T12:00Z */
    for (int i = 0; i < 2000; i++) {
        wh_tm_t tm;
        int z = i % 3;
        bad += wh_tz_localtime(zones[z], INT64_C(1784116800), &tm) != WH_OK ||
               tm.utc_offset != offs[z];
    }
    *(long *)arg = bad;
    return NULL;
}

static void test_threads(void)
{
    pthread_t th[8];
    long bad[8] = {0};
    for (int i = 0; i < 8; i++)
        CHECK_INT(pthread_create(&th[i], NULL, thread_main, &bad[i]), 0);
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        CHECK_INT(bad[i], 0);
    }
}

int main(void)
{
    test_madrid();
    test_other_zones();
    test_mktime_rules();
    test_round_trips();
    test_names();
    test_files();
    test_threads();
    wh_tz_set_dir(NULL); /* frees the cache, so leak checking sees nothing */
    WH_TEST_MAIN_END();
}
