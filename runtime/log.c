/* Structured logging: one JSON object per line, written with a single write(2). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "wahook/common.h"
#include "wahook/log.h"

static int wh__log_level = WH_LOG_INFO;
static int wh__log_fd = 2;

static const char *const wh__level_names[] = {"debug", "info", "warn", "error"};

void wh_log_set_level(int level)
{
    wh__log_level = level;
}

int wh_log_open(const char *path)
{
    if (path == NULL || strcmp(path, "-") == 0 || strcmp(path, "/dev/stderr") == 0) {
        wh__log_fd = 2;
        return WH_OK;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return WH_EIO;
    wh__log_fd = fd;
    return WH_OK;
}

void wh_log(int level, const char *msg, const char *fields_fmt, ...)
{
    if (level < wh__log_level)
        return;
    if (level < WH_LOG_DEBUG || level > WH_LOG_ERROR)
        level = WH_LOG_ERROR;

    json_t *obj = NULL;
    if (fields_fmt != NULL) {
        va_list ap;
        va_start(ap, fields_fmt);
        json_error_t jerr;
        obj = json_vpack_ex(&jerr, 0, fields_fmt, ap);
        va_end(ap);
    }
    if (obj == NULL || !json_is_object(obj)) {
        json_decref(obj);
        obj = json_object();
        if (obj == NULL)
            return;
    }

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char tsbuf[64];
    snprintf(tsbuf, sizeof(tsbuf), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);

    /* Put ts, level and msg first for readability. */
    json_t *line = json_object();
    if (line == NULL) {
        json_decref(obj);
        return;
    }
    json_object_set_new(line, "ts", json_string(tsbuf));
    json_object_set_new(line, "level", json_string(wh__level_names[level]));
    json_object_set_new(line, "msg", json_string(msg != NULL ? msg : ""));
    json_object_update_missing(line, obj);
    json_decref(obj);

    char *text = json_dumps(line, JSON_COMPACT);
    json_decref(line);
    if (text == NULL)
        return;
    size_t n = strlen(text);
    text[n] = '\n'; /* json_dumps leaves room only for the NUL; overwrite it, write n+1 */
    ssize_t off = 0, want = (ssize_t)n + 1;
    while (off < want) {
        ssize_t w = write(wh__log_fd, text + off, (size_t)(want - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += w;
    }
    free(text);
}
