/* A minimal unit-test harness: CHECK macros that count and report, and a closing line in the
 * plain "N passed, N failed" form that CI reads. */
#ifndef WH_TEST_H
#define WH_TEST_H

#include <stdio.h>
#include <string.h>
#include <stdlib.h>

static int wh_test_passed, wh_test_failed;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (cond) {                                                                            \
            wh_test_passed++;                                                                  \
        } else {                                                                               \
            wh_test_failed++;                                                                  \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);           \
        }                                                                                      \
    } while (0)

#define CHECK_INT(a, b)                                                                        \
    do {                                                                                       \
        long long wh_a_ = (long long)(a), wh_b_ = (long long)(b);                              \
        if (wh_a_ == wh_b_) {                                                                  \
            wh_test_passed++;                                                                  \
        } else {                                                                               \
            wh_test_failed++;                                                                  \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a,  \
                    #b, wh_a_, wh_b_);                                                         \
        }                                                                                      \
    } while (0)

#define CHECK_STR(a, b)                                                                        \
    do {                                                                                       \
        const char *wh_a_ = (a), *wh_b_ = (b);                                                 \
        if ((wh_a_ == NULL && wh_b_ == NULL) ||                                                \
            (wh_a_ != NULL && wh_b_ != NULL && strcmp(wh_a_, wh_b_) == 0)) {                   \
            wh_test_passed++;                                                                  \
        } else {                                                                               \
            wh_test_failed++;                                                                  \
            fprintf(stderr, "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__,  \
                    #a, #b, wh_a_ ? wh_a_ : "(null)", wh_b_ ? wh_b_ : "(null)");               \
        }                                                                                      \
    } while (0)

/* Substring check, for error messages. */
#define CHECK_CONTAINS(hay, needle)                                                            \
    do {                                                                                       \
        const char *wh_h_ = (hay), *wh_n_ = (needle);                                          \
        if (wh_h_ != NULL && strstr(wh_h_, wh_n_) != NULL) {                                   \
            wh_test_passed++;                                                                  \
        } else {                                                                               \
            wh_test_failed++;                                                                  \
            fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__,     \
                    wh_h_ ? wh_h_ : "(null)", wh_n_);                                          \
        }                                                                                      \
    } while (0)

#define WH_TEST_MAIN_END()                                                                     \
    do {                                                                                       \
        printf("%d passed, %d failed\n", wh_test_passed, wh_test_failed);                      \
        return wh_test_failed == 0 && wh_test_passed > 0 ? 0 : 1;                              \
    } while (0)

/* Path of the shared fixtures directory (set by CMake), for tests that read them. */
#ifndef WH_FIXTURES_DIR
#define WH_FIXTURES_DIR "../shared/fixtures"
#endif
#ifndef WH_SOURCE_DIR
#define WH_SOURCE_DIR "."
#endif

/* Reads a whole file into a malloc'd NUL-terminated buffer; aborts the test on failure. */
static inline char *wh_test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n)
        exit(2);
    buf[n] = '\0';
    fclose(f);
    if (len != NULL)
        *len = (size_t)n;
    return buf;
}

#endif
