/* Tests of runtime/env.c: alias lookups, ${VAR} expansion and dotenv files. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "wahook/config.h"
#include "wh_test.h"

static const char *const wh_vars[] = {
    "WH_T_A", "WH_T_B", "WH_T_EMPTY", "EVOLUTION_API_URL", "NEXT_PUBLIC_EVOLUTION_API_URL",
    "EVOLUTION_API_KEY", "NEXT_EVOLUTION_API_KEY", "WAHOOK_ENV", "NODE_ENV", "WH_D_PLAIN",
    "WH_D_EXPORT", "WH_D_SQ", "WH_D_DQ", "WH_D_ESC", "WH_D_COMMENT", "WH_D_HASH", "WH_D_KEEP",
    "WH_D_EMPTY", "WH_D_CRLF", "WH_D_MULTI", "WH_D_SPACED", "WH_D_TWICE", "WH_D_AFTER",
    "WH_D_BAD1", "WH_D_BAD2", "WH_D_LAST", "WH_D_QHASH",
};

static void reset_env(void)
{
    for (size_t i = 0; i < sizeof(wh_vars) / sizeof(wh_vars[0]); i++)
        unsetenv(wh_vars[i]);
}

/* Writes text to a fresh temporary file; the caller unlinks it. */
static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/wh_test_env_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        exit(2);
    close(fd);
    return path;
}

static void test_get_aliases(void)
{
    reset_env();
    CHECK(wh_env_get("EVOLUTION_API_URL") == NULL);

    setenv("NEXT_PUBLIC_EVOLUTION_API_URL", "http://old", 1);
    CHECK_STR(wh_env_get("EVOLUTION_API_URL"), "http://old");
    setenv("EVOLUTION_API_URL", "http://new", 1);
    CHECK_STR(wh_env_get("EVOLUTION_API_URL"), "http://new"); /* the wahook name wins */
    setenv("EVOLUTION_API_URL", "", 1);
    CHECK_STR(wh_env_get("EVOLUTION_API_URL"), ""); /* set-but-empty is set */

    setenv("NEXT_EVOLUTION_API_KEY", "k1", 1);
    CHECK_STR(wh_env_get("EVOLUTION_API_KEY"), "k1");
    setenv("NODE_ENV", "development", 1);
    CHECK_STR(wh_env_get("WAHOOK_ENV"), "development");
    setenv("WAHOOK_ENV", "production", 1);
    CHECK_STR(wh_env_get("WAHOOK_ENV"), "production");

    /* Aliases are one-way: the old name does not read the new one. */
    reset_env();
    setenv("EVOLUTION_API_KEY", "k2", 1);
    CHECK(wh_env_get("NEXT_EVOLUTION_API_KEY") == NULL);
    CHECK(wh_env_get("WH_T_A") == NULL);
    reset_env();
}

static void check_expand(const char *src, const char *want)
{
    char err[128] = "";
    char *got = wh_env_expand(src, err, sizeof(err));
    CHECK_STR(got, want);
    if (got == NULL)
        fprintf(stderr, "  expanding \"%s\": %s\n", src, err);
    free(got);
}

static void check_expand_error(const char *src, const char *want_err)
{
    char err[128] = "";
    char *got = wh_env_expand(src, err, sizeof(err));
    CHECK(got == NULL);
    CHECK_CONTAINS(err, want_err);
    free(got);
}

static void test_expand(void)
{
    reset_env();
    setenv("WH_T_A", "alpha", 1);
    setenv("WH_T_EMPTY", "", 1);

    check_expand("", "");
    check_expand("plain text", "plain text");
    check_expand("${WH_T_A}", "alpha");
    check_expand("x-${WH_T_A}-${WH_T_A}-y", "x-alpha-alpha-y");
    check_expand("${WH_T_B}", "");
    check_expand("a${WH_T_B}b", "ab");
    check_expand("${WH_T_B:-fallback}", "fallback");
    check_expand("${WH_T_A:-fallback}", "alpha");
    check_expand("${WH_T_EMPTY:-fallback}", "fallback"); /* ":-" also covers set-but-empty */
    check_expand("${WH_T_B:-}", "");
    check_expand("${WH_T_B:-a b:c-d}", "a b:c-d");
    check_expand("${WH_T_B:-${WH_T_A}/data}", "alpha/data");
    check_expand("${WH_T_B:-${WH_T_EMPTY:-deep}}", "deep");
    check_expand("${WH_T_A:-${WH_T_B:-unused}}", "alpha");
    check_expand("$$", "$");
    check_expand("$${WH_T_A}", "${WH_T_A}");
    check_expand("cost $5", "cost $5");
    check_expand("end$", "end$");
    check_expand("{}}", "{}}");

    /* Aliases apply in expansion too. */
    setenv("NEXT_PUBLIC_EVOLUTION_API_URL", "http://evo:8080", 1);
    check_expand("${EVOLUTION_API_URL}/message", "http://evo:8080/message");
    setenv("NODE_ENV", "development", 1);
    check_expand("${WAHOOK_ENV:-production}", "development");

    /* The value is not expanded again: a secret containing "${" stays as it is. */
    setenv("WH_T_A", "p${WH_T_B}q", 1);
    check_expand("${WH_T_A}", "p${WH_T_B}q");

    check_expand_error("${", "unterminated '${' at offset 0");
    check_expand_error("abc${WH_T_A", "unterminated '${' at offset 3");
    check_expand_error("${WH_T_B:-x", "unterminated");
    check_expand_error("${WH_T_B:-${WH_T_A}", "unterminated");
    check_expand_error("${}", "missing variable name");
    check_expand_error("${ WH_T_A}", "missing variable name");
    check_expand_error("${1ABC}", "may not start with a digit");
    check_expand_error("${WH_T_A:?oops}", "unexpected ':'");
    check_expand_error("${WH_T_A-x}", "unexpected '-'");
    /* A syntax error in a default is reported even when the variable is set. */
    check_expand_error("${WH_T_A:-${}}", "missing variable name");
    check_expand_error("${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-x}}}}}}}}}", "nested too deeply");
    reset_env();
}

static void test_dotenv_parse(void)
{
    char err[256] = "";
    reset_env();
    setenv("WH_D_KEEP", "from-environment", 1);
    char *path = write_tmp("# a comment\n"
                           "\n"
                           "   \n"
                           "WH_D_PLAIN=hello world\n"
                           "export WH_D_EXPORT=exported\n"
                           "WH_D_SQ='single $quoted # not a comment \\n'\n"
                           "WH_D_DQ=\"double quoted\"  # trailing comment\n"
                           "WH_D_ESC=\"a\\nb\\t\\\"c\\\\\"\n"
                           "WH_D_COMMENT=value # a comment\n"
                           "WH_D_HASH=abc#def\n"
                           "WH_D_QHASH=#starts-with-hash\n"
                           "WH_D_KEEP=from-file\n"
                           "WH_D_EMPTY=\n"
                           "WH_D_CRLF=crlf\r\n"
                           "WH_D_SPACED = spaced  \n"
                           "WH_D_MULTI=\"-----BEGIN KEY-----\n"
                           "line2\n"
                           "-----END KEY-----\"\n"
                           "WH_D_TWICE=first\n"
                           "WH_D_TWICE=second\n"
                           "WH_D_LAST=no-newline-at-end");
    CHECK_INT(wh_env_load_file(path, 1, err, sizeof(err)), 0);
    CHECK_STR(getenv("WH_D_PLAIN"), "hello world");
    CHECK_STR(getenv("WH_D_EXPORT"), "exported");
    CHECK_STR(getenv("WH_D_SQ"), "single $quoted # not a comment \\n");
    CHECK_STR(getenv("WH_D_DQ"), "double quoted");
    CHECK_STR(getenv("WH_D_ESC"), "a\nb\t\"c\\");
    CHECK_STR(getenv("WH_D_COMMENT"), "value");
    CHECK_STR(getenv("WH_D_HASH"), "abc#def");
    CHECK_STR(getenv("WH_D_QHASH"), "#starts-with-hash");
    CHECK_STR(getenv("WH_D_KEEP"), "from-environment"); /* never overrides */
    CHECK_STR(getenv("WH_D_EMPTY"), "");
    CHECK_STR(getenv("WH_D_CRLF"), "crlf");
    CHECK_STR(getenv("WH_D_SPACED"), "spaced");
    CHECK_STR(getenv("WH_D_MULTI"), "-----BEGIN KEY-----\nline2\n-----END KEY-----");
    CHECK_STR(getenv("WH_D_TWICE"), "second");
    CHECK_STR(getenv("WH_D_LAST"), "no-newline-at-end");
    unlink(path);
    free(path);

    /* Loaded values feed expansion, aliases included. */
    path = write_tmp("NEXT_EVOLUTION_API_KEY=legacy-key\n");
    CHECK_INT(wh_env_load_file(path, 0, err, sizeof(err)), 0);
    char *v = wh_env_expand("${EVOLUTION_API_KEY}", err, sizeof(err));
    CHECK_STR(v, "legacy-key");
    free(v);
    unlink(path);
    free(path);
    reset_env();
}

static void check_dotenv_error(const char *text, int want_line, const char *want)
{
    char err[256] = "", prefix[128];
    char *path = write_tmp(text);
    CHECK_INT(wh_env_load_file(path, 1, err, sizeof(err)), WH_EINVAL);
    snprintf(prefix, sizeof(prefix), "%s:%d: ", path, want_line);
    CHECK(strncmp(err, prefix, strlen(prefix)) == 0);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fprintf(stderr, "  got \"%s\", want prefix \"%s\"\n", err, prefix);
    CHECK_CONTAINS(err, want);
    unlink(path);
    free(path);
}

static void test_dotenv_errors(void)
{
    reset_env();
    check_dotenv_error("WH_D_BAD1=1\n# ok\nnot a line\n", 3, "expected '=' after not");
    check_dotenv_error("\n\n\n=value\n", 4, "expected a variable name");
    check_dotenv_error("1ABC=x\n", 1, "expected a variable name");
    check_dotenv_error("A=1\nWH_D_BAD2=\"never closed\nB=2\n", 2, "unterminated double-quoted");
    check_dotenv_error("WH_D_BAD2='never closed\n", 1, "unterminated single-quoted");
    check_dotenv_error("\nWH_D_BAD2=\"a\" b\n", 2, "unexpected text after the closing quote");
    check_dotenv_error("export\n", 1, "expected '='");
    /* A broken file changes nothing, not even the lines before the error. */
    CHECK(getenv("WH_D_BAD1") == NULL);
    CHECK(getenv("WH_D_BAD2") == NULL);

    char err[256] = "";
    CHECK_INT(wh_env_load_file("/nonexistent/wahook/.env", 0, err, sizeof(err)), 0);
    CHECK_INT(wh_env_load_file("/nonexistent/wahook/.env", 1, err, sizeof(err)), WH_EIO);
    CHECK_CONTAINS(err, "/nonexistent/wahook/.env: ");
    /* An unreadable path (a directory) is an error even when the file is optional. */
    CHECK(wh_env_load_file("/tmp", 0, err, sizeof(err)) != 0);
    CHECK_CONTAINS(err, "/tmp: ");
    reset_env();
}

int main(void)
{
    test_get_aliases();
    test_expand();
    test_dotenv_parse();
    test_dotenv_errors();
    WH_TEST_MAIN_END();
}
