/* Time zones from the system's zoneinfo (TZif) files, read per zone and cached, so scripts get
 * local time with real DST rules without ever touching the process-wide TZ. */
#ifndef WAHOOK_TZ_H
#define WAHOOK_TZ_H

#include <stdint.h>

typedef struct wh_tm {
    int year;       /* e.g. 2026 */
    int month;      /* 1..12 */
    int day;        /* 1..31 */
    int hour;       /* 0..23 */
    int min;        /* 0..59 */
    int sec;        /* 0..60 */
    int wday;       /* 1 = Monday .. 7 = Sunday (ISO 8601) */
    int yday;       /* 1..366 */
    int isdst;      /* 1 when daylight saving time is in effect */
    int utc_offset; /* seconds east of UTC */
    char abbr[16];  /* "CET", "CEST", … */
} wh_tm_t;

/* Instants further than this from the epoch (about 31 million years) are refused with WH_EINVAL,
 * so every year fits an int. */
#define WH_TZ_TIME_MAX INT64_C(1000000000000000)

/* Local time in zone (e.g. "Europe/Madrid", "UTC") at epoch second t. Returns 0, WH_ENOTFOUND
 * for an unknown zone, WH_EINVAL for a malformed name or file (names with ".." or a leading "/"
 * are refused). Thread-safe. */
int wh_tz_localtime(const char *zone, int64_t t, wh_tm_t *out);

/* The epoch second of local fields year..sec in zone (wday, yday, isdst, offset ignored).
 * Out-of-range fields are normalised (month 13 → next January, day 0 → last day of the previous
 * month). A local time skipped by a DST gap maps to the instant after the gap with the same
 * distance from its start (02:30 on a spring-forward day → 03:30); an ambiguous time in an
 * overlap maps to the earlier instant. Returns 0 or like wh_tz_localtime. */
int wh_tz_mktime(const char *zone, const wh_tm_t *fields, int64_t *out);

/* Directory of zoneinfo files; default $TZDIR or /usr/share/zoneinfo. Call before threads
 * start. */
void wh_tz_set_dir(const char *dir);

#endif
