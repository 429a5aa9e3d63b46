/* Environment access for the configuration: alias-aware lookups, ${VAR} expansion and dotenv files. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "wahook/config.h"

/* The original system's variable names keep working: when the wahook name is unset, its alias is
 * read instead. */
static const struct {
    const char *name;
    const char *alias;
} wh__env_aliases[] = {
    {"EVOLUTION_API_URL", "NEXT_PUBLIC_EVOLUTION_API_URL"},
    {"EVOLUTION_API_KEY", "NEXT_EVOLUTION_API_KEY"},
    {"WAHOOK_ENV", "NODE_ENV"},
};

/* Defaults may nest (${A:-${B:-x}}); the bound keeps hostile input from recursing deeply. */
#define WH__EXPAND_MAX_DEPTH 8
#define WH__ENV_NAME_MAX 255
/* A dotenv file is a handful of lines; the cap only stops a wrong path from reading a disk image. */
#define WH__ENV_FILE_MAX (4 * 1024 * 1024)

const char *wh_env_get(const char *name)
{
    const char *v = getenv(name);
    if (v != NULL)
        return v;
    for (size_t i = 0; i < WH_ARRAY_SIZE(wh__env_aliases); i++)
        if (strcmp(name, wh__env_aliases[i].name) == 0)
            return getenv(wh__env_aliases[i].alias);
    return NULL;
}

static void wh__seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* A growable output buffer; oom is sticky so callers check once at the end. */
typedef struct wh__buf {
    char *p;
    size_t n, cap;
    int oom;
} wh__buf_t;

static void wh__buf_add(wh__buf_t *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static int wh__is_name_char(int c)
{
    return isalnum((unsigned char)c) || c == '_';
}

/* Expands src from *pos into out. Inside a default (depth > 0) it stops at the '}' closing the
 * enclosing reference and leaves *pos on it; at the top level '}' is an ordinary character. */
static int wh__expand(const char *src, size_t *pos, int depth, wh__buf_t *out, char *err,
                      size_t errlen)
{
    size_t i = *pos;
    while (src[i] != '\0') {
        char c = src[i];
        if (depth > 0 && c == '}')
            break;
        if (c != '$') {
            size_t j = i;
            while (src[j] != '\0' && src[j] != '$' && !(depth > 0 && src[j] == '}'))
                j++;
            wh__buf_add(out, src + i, j - i);
            i = j;
            continue;
        }
        if (src[i + 1] == '$') { /* "$$" is a literal dollar */
            wh__buf_add(out, "$", 1);
            i += 2;
            continue;
        }
        if (src[i + 1] != '{') { /* a lone '$' is literal: values such as prices or regexes */
            wh__buf_add(out, "$", 1);
            i++;
            continue;
        }
        size_t start = i;
        i += 2;
        size_t name_start = i;
        while (wh__is_name_char(src[i]))
            i++;
        size_t nlen = i - name_start;
        if (src[i] == '\0') {
            wh__seterr(err, errlen, "unterminated '${' at offset %zu", start);
            return WH_EINVAL;
        }
        if (nlen == 0) {
            wh__seterr(err, errlen, "missing variable name after '${' at offset %zu", start);
            return WH_EINVAL;
        }
        if (isdigit((unsigned char)src[name_start])) {
            wh__seterr(err, errlen, "variable name may not start with a digit at offset %zu",
                       start);
            return WH_EINVAL;
        }
        if (nlen > WH__ENV_NAME_MAX) {
            wh__seterr(err, errlen, "variable name too long at offset %zu", start);
            return WH_EINVAL;
        }
        char name[WH__ENV_NAME_MAX + 1];
        memcpy(name, src + name_start, nlen);
        name[nlen] = '\0';
        const char *val = wh_env_get(name);
        if (src[i] == '}') {
            if (val != NULL)
                wh__buf_add(out, val, strlen(val));
            i++;
        } else if (src[i] == ':' && src[i + 1] == '-') {
            if (depth + 1 > WH__EXPAND_MAX_DEPTH) {
                wh__seterr(err, errlen, "variable defaults nested too deeply at offset %zu", start);
                return WH_EINVAL;
            }
            i += 2;
            int use_default = val == NULL || val[0] == '\0';
            if (!use_default)
                wh__buf_add(out, val, strlen(val));
            /* The default is always parsed, so a syntax error does not hide behind a set variable. */
            wh__buf_t scratch = {0};
            int rc = wh__expand(src, &i, depth + 1, use_default ? out : &scratch, err, errlen);
            int scratch_oom = scratch.oom;
            free(scratch.p);
            if (rc != 0)
                return rc;
            if (scratch_oom)
                out->oom = 1;
            if (src[i] != '}') {
                wh__seterr(err, errlen, "unterminated '${' at offset %zu", start);
                return WH_EINVAL;
            }
            i++;
        } else {
            wh__seterr(err, errlen,
                       "unexpected '%c' in '${%s' at offset %zu (expected '}' or ':-')", src[i],
                       name, start);
            return WH_EINVAL;
        }
    }
    *pos = i;
    return 0;
}

char *wh_env_expand(const char *src, char *err, size_t errlen)
{
    wh__buf_t out = {0};
    size_t pos = 0;
    wh__buf_add(&out, "", 0);
    if (wh__expand(src, &pos, 0, &out, err, errlen) != 0) {
        free(out.p);
        return NULL;
    }
    if (out.oom) {
        wh__seterr(err, errlen, "out of memory");
        free(out.p);
        return NULL;
    }
    return out.p;
}

/* ---- dotenv files ---- */

typedef struct wh__envpair {
    char *key;
    char *value;
} wh__envpair_t;

/* Reads a whole file into a NUL-terminated buffer. Returns 0, or -errno. */
static int wh__read_all(const char *path, char **out, size_t *outlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -errno;
    wh__buf_t b = {0};
    char chunk[4096];
    size_t n;
    int rc = 0;
    wh__buf_add(&b, "", 0);
    errno = 0;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        wh__buf_add(&b, chunk, n);
        if (b.n > WH__ENV_FILE_MAX) {
            rc = -EFBIG;
            break;
        }
    }
    if (rc == 0 && ferror(f))
        rc = errno != 0 ? -errno : -EIO; /* e.g. EISDIR */
    if (rc == 0 && b.oom)
        rc = -ENOMEM;
    fclose(f);
    if (rc != 0) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    *outlen = b.n;
    return 0;
}

static int wh__is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* At the end of a line: "\n", "\r\n" or the end of the buffer. */
static int wh__at_eol(const char *p, const char *end)
{
    return p >= end || *p == '\n' || (*p == '\r' && (p + 1 >= end || p[1] == '\n'));
}

static const char *wh__skip_eol(const char *p, const char *end, unsigned *line)
{
    if (p < end && *p == '\r')
        p++;
    if (p < end && *p == '\n') {
        p++;
        (*line)++;
    }
    return p;
}

/* Stores key=value, a later line for the same key replacing an earlier one. */
static int wh__pairs_put(wh__envpair_t **pairs, size_t *n, const char *key, size_t klen,
                         wh__buf_t *value)
{
    char *v = value->p != NULL ? value->p : strdup("");
    value->p = NULL;
    if (v == NULL)
        return WH_ENOMEM;
    for (size_t i = 0; i < *n; i++) {
        if (strlen((*pairs)[i].key) == klen && memcmp((*pairs)[i].key, key, klen) == 0) {
            free((*pairs)[i].value);
            (*pairs)[i].value = v;
            return 0;
        }
    }
    char *k = strndup(key, klen);
    wh__envpair_t *np = realloc(*pairs, (*n + 1) * sizeof(**pairs));
    if (k == NULL || np == NULL) {
        free(k);
        free(v);
        if (np != NULL)
            *pairs = np;
        return WH_ENOMEM;
    }
    *pairs = np;
    np[*n].key = k;
    np[*n].value = v;
    (*n)++;
    return 0;
}

/* Parses the whole buffer before touching the environment, so a broken file changes nothing. */
static int wh__dotenv_parse(const char *path, const char *text, size_t len, wh__envpair_t **pairs,
                            size_t *npairs, char *err, size_t errlen)
{
    const char *p = text, *end = text + len;
    unsigned line = 1;

    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) /* editors on some systems add a BOM */
        p += 3;
    if (memchr(text, '\0', len) != NULL) {
        const char *z = memchr(text, '\0', len);
        unsigned zl = 1;
        for (const char *q = text; q < z; q++)
            zl += *q == '\n';
        wh__seterr(err, errlen, "%s:%u: NUL byte in file", path, zl);
        return WH_EINVAL;
    }

    while (p < end) {
        while (p < end && wh__is_blank(*p))
            p++;
        if (wh__at_eol(p, end)) {
            p = wh__skip_eol(p, end, &line);
            continue;
        }
        if (*p == '#') {
            while (!wh__at_eol(p, end))
                p++;
            p = wh__skip_eol(p, end, &line);
            continue;
        }
        if (end - p > 7 && memcmp(p, "export", 6) == 0 && wh__is_blank(p[6])) {
            p += 6;
            while (p < end && wh__is_blank(*p))
                p++;
        }
        const char *key = p;
        if (p < end && (isalpha((unsigned char)*p) || *p == '_')) {
            while (p < end && wh__is_name_char(*p))
                p++;
        }
        size_t klen = (size_t)(p - key);
        if (klen == 0) {
            wh__seterr(err, errlen, "%s:%u: expected a variable name", path, line);
            return WH_EINVAL;
        }
        while (p < end && wh__is_blank(*p))
            p++;
        if (p >= end || *p != '=') {
            wh__seterr(err, errlen, "%s:%u: expected '=' after %.*s", path, line, (int)klen, key);
            return WH_EINVAL;
        }
        p++;
        while (p < end && wh__is_blank(*p))
            p++;

        wh__buf_t value = {0};
        wh__buf_add(&value, "", 0);
        unsigned start_line = line;
        if (p < end && (*p == '"' || *p == '\'')) {
            char q = *p++;
            for (;;) {
                if (p >= end) {
                    free(value.p);
                    wh__seterr(err, errlen, "%s:%u: unterminated %s-quoted value", path,
                               start_line, q == '"' ? "double" : "single");
                    return WH_EINVAL;
                }
                if (*p == q) {
                    p++;
                    break;
                }
                if (*p == '\n')
                    line++;
                if (q == '"' && *p == '\\' && p + 1 < end) {
                    char e = p[1];
                    const char *rep = NULL;
                    switch (e) {
                    case 'n': rep = "\n"; break;
                    case 'r': rep = "\r"; break;
                    case 't': rep = "\t"; break;
                    case '\\': rep = "\\"; break;
                    case '"': rep = "\""; break;
                    case '$': rep = "$"; break;
                    }
                    if (rep != NULL) {
                        wh__buf_add(&value, rep, 1);
                        p += 2;
                        continue;
                    }
                }
                /* Multi-line quoted values (PEM keys) keep their line breaks, minus any CR. */
                if (!(*p == '\r' && p + 1 < end && p[1] == '\n'))
                    wh__buf_add(&value, p, 1);
                p++;
            }
            while (p < end && wh__is_blank(*p))
                p++;
            if (!wh__at_eol(p, end) && *p != '#') {
                free(value.p);
                wh__seterr(err, errlen, "%s:%u: unexpected text after the closing quote", path,
                           line);
                return WH_EINVAL;
            }
        } else {
            /* Unquoted: up to the end of the line or a " #" comment, trailing blanks trimmed. */
            const char *v = p, *vend = p;
            while (!wh__at_eol(p, end)) {
                /* "KEY=#x" keeps the '#'; "KEY=x #note" and "KEY= #note" are comments. */
                if (*p == '#' && wh__is_blank(p[-1]))
                    break;
                if (!wh__is_blank(*p))
                    vend = p + 1;
                p++;
            }
            wh__buf_add(&value, v, (size_t)(vend - v));
        }
        while (!wh__at_eol(p, end))
            p++;
        p = wh__skip_eol(p, end, &line);
        if (value.oom) {
            free(value.p);
            wh__seterr(err, errlen, "out of memory");
            return WH_ENOMEM;
        }
        if (wh__pairs_put(pairs, npairs, key, klen, &value) != 0) {
            wh__seterr(err, errlen, "out of memory");
            return WH_ENOMEM;
        }
    }
    return 0;
}

int wh_env_load_file(const char *path, int required, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    wh__envpair_t *pairs = NULL;
    size_t npairs = 0;
    int rc = wh__read_all(path, &text, &len);

    if (rc != 0) {
        if (rc == -ENOENT && !required)
            return 0;
        wh__seterr(err, errlen, "%s: %s", path, strerror(-rc));
        return rc == -ENOMEM ? WH_ENOMEM : WH_EIO;
    }
    rc = wh__dotenv_parse(path, text, len, &pairs, &npairs, err, errlen);
    if (rc != 0)
        goto exit;
    for (size_t i = 0; i < npairs; i++) {
        /* overwrite=0: the real environment (systemd, docker) wins over the file. */
        if (setenv(pairs[i].key, pairs[i].value, 0) != 0) {
            wh__seterr(err, errlen, "%s: cannot set %s: %s", path, pairs[i].key, strerror(errno));
            rc = errno == ENOMEM ? WH_ENOMEM : WH_EINVAL;
            goto exit;
        }
    }

exit:
    for (size_t i = 0; i < npairs; i++) {
        free(pairs[i].key);
        free(pairs[i].value);
    }
    free(pairs);
    free(text);
    return rc;
}
