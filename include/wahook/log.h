/* Structured JSON-line logging to stderr (or a configured file). */
#ifndef WAHOOK_LOG_H
#define WAHOOK_LOG_H

enum { WH_LOG_DEBUG = 0, WH_LOG_INFO = 1, WH_LOG_WARN = 2, WH_LOG_ERROR = 3 };

/* Sets the minimum level written (default WH_LOG_INFO). */
void wh_log_set_level(int level);
/* Redirects output to path (append); NULL or "-" means stderr. Returns 0 or a WH_E* code. */
int wh_log_open(const char *path);

/* Writes one line {"ts":…,"level":…,"msg":msg, …fields}. fields_fmt is a jansson json_pack
 * format describing an object ("{s:s,s:i}") or NULL for no fields. Never pass secrets or
 * message bodies. Thread-safe: one write(2) per line. */
void wh_log(int level, const char *msg, const char *fields_fmt, ...);

#endif
