/* Unit tests for runtime/cidr.c: parsing and rejecting entries, IPv4/IPv6/mapped matching, and
 * the X-Forwarded-For client rule including spoofing attempts. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>
#include "wahook/cidr.h"
#include "wh_test.h"

static wh_cidr_list_t *list_of(const char *const *specs, size_t n, int *rc, char *err,
                               size_t errlen)
{
    wh_strlist_t sl = {0};
    for (size_t i = 0; i < n; i++)
        wh_strlist_push(&sl, specs[i], strlen(specs[i]));
    wh_cidr_list_t *l = (wh_cidr_list_t *)0x1; /* must be reset by the parser */
    *rc = wh_cidr_list_parse(&l, &sl, err, errlen);
    wh_strlist_clear(&sl);
    return l;
}

/* A socket address for text; IPv4 text gives AF_INET, anything else AF_INET6. */
static const struct sockaddr *sa_of(const char *ip, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(40000);
    } else if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(40000);
    } else {
        fprintf(stderr, "bad test address %s\n", ip);
        exit(2);
    }
    return (const struct sockaddr *)ss;
}

static int match(const wh_cidr_list_t *l, const char *ip)
{
    struct sockaddr_storage ss;
    int a = wh_cidr_list_match(l, sa_of(ip, &ss));
    int b = wh_cidr_list_match_str(l, ip, strlen(ip));
    if (a != b) {
        fprintf(stderr, "sockaddr and text disagree for %s\n", ip);
        return -1;
    }
    return a;
}

static void test_parse_and_match(void)
{
    static const char *const specs[] = {
        "10.0.0.0/8", "192.168.1.7", "::1", "2001:db8::/32", " 172.16.0.0/12\t",
        "::ffff:100.64.0.0/106", "2001:db8:1::ab/128",
    };
    int rc;
    char err[128] = "";
    wh_cidr_list_t *l = list_of(specs, WH_ARRAY_SIZE(specs), &rc, err, sizeof(err));
    CHECK_INT(rc, WH_OK);
    CHECK(l != NULL);
    CHECK_INT(wh_cidr_list_size(l), 7);

    CHECK_INT(match(l, "10.0.0.0"), 1);
    CHECK_INT(match(l, "10.255.255.255"), 1);
    CHECK_INT(match(l, "11.0.0.0"), 0);
    CHECK_INT(match(l, "9.255.255.255"), 0);
    CHECK_INT(match(l, "192.168.1.7"), 1);
    CHECK_INT(match(l, "192.168.1.8"), 0);
    CHECK_INT(match(l, "172.16.0.1"), 1);
    CHECK_INT(match(l, "172.31.255.255"), 1);
    CHECK_INT(match(l, "172.32.0.0"), 0);
    CHECK_INT(match(l, "::1"), 1);
    CHECK_INT(match(l, "::2"), 0);
    CHECK_INT(match(l, "2001:db8::"), 1);
    CHECK_INT(match(l, "2001:db8:ffff:ffff::1"), 1);
    CHECK_INT(match(l, "2001:db9::1"), 0);
    CHECK_INT(match(l, "2001:DB8:1::AB"), 1);
    CHECK_INT(match(l, "2001:db8:1::ac"), 1); /* still inside 2001:db8::/32 */
    /* IPv4-mapped IPv6 addresses match IPv4 entries, and a mapped entry covers plain IPv4. */
    CHECK_INT(match(l, "::ffff:10.9.9.9"), 1);
    CHECK_INT(match(l, "::ffff:192.168.1.7"), 1);
    CHECK_INT(match(l, "::ffff:11.0.0.1"), 0);
    CHECK_INT(match(l, "100.64.0.1"), 1);
    CHECK_INT(match(l, "100.127.255.255"), 1);
    CHECK_INT(match(l, "100.128.0.0"), 0);
    /* The IPv4 10/8 is not the IPv6 0a00::/8. */
    CHECK_INT(match(l, "a00::1"), 0);

    /* Text that is not a bare address never matches; lengths are honoured. */
    CHECK_INT(wh_cidr_list_match_str(l, "10.0.0.1xyz", 8), 1);
    CHECK_INT(wh_cidr_list_match_str(l, "10.0.0.1xyz", 11), 0);
    CHECK_INT(wh_cidr_list_match_str(l, "10.0.0.1/32", 11), 0);
    CHECK_INT(wh_cidr_list_match_str(l, "", 0), 0);
    CHECK_INT(wh_cidr_list_match_str(l, "localhost", 9), 0);
    CHECK_INT(wh_cidr_list_match_str(l, NULL, 0), 0);
    CHECK_INT(wh_cidr_list_match_str(l, "010.0.0.1", 9), 0);

    /* A socket family that is not IP matches nothing. */
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    CHECK_INT(wh_cidr_list_match(l, (struct sockaddr *)&sun), 0);
    CHECK_INT(wh_cidr_list_match(l, NULL), 0);
    wh_cidr_list_free(l);

    /* 0.0.0.0/0 is every IPv4 address (mapped ones too) and no IPv6 one; ::/0 the reverse. */
    static const char *const all4[] = {"0.0.0.0/0"};
    l = list_of(all4, 1, &rc, err, sizeof(err));
    CHECK_INT(match(l, "203.0.113.9"), 1);
    CHECK_INT(match(l, "::ffff:203.0.113.9"), 1);
    CHECK_INT(match(l, "2001:db8::1"), 0);
    wh_cidr_list_free(l);
    static const char *const all6[] = {"::/0"};
    l = list_of(all6, 1, &rc, err, sizeof(err));
    CHECK_INT(match(l, "2001:db8::1"), 1);
    CHECK_INT(match(l, "203.0.113.9"), 0);
    wh_cidr_list_free(l);

    /* Empty and absent lists match nothing. */
    l = list_of(NULL, 0, &rc, err, sizeof(err));
    CHECK_INT(rc, WH_OK);
    CHECK(l != NULL);
    CHECK_INT(wh_cidr_list_size(l), 0);
    CHECK_INT(match(l, "10.0.0.1"), 0);
    wh_cidr_list_free(l);
    CHECK_INT(wh_cidr_list_parse(&l, NULL, err, sizeof(err)), WH_OK);
    CHECK_INT(wh_cidr_list_size(l), 0);
    wh_cidr_list_free(l);
    CHECK_INT(wh_cidr_list_size(NULL), 0);
    CHECK_INT(match(NULL, "10.0.0.1"), 0);
    wh_cidr_list_free(NULL);
}

static void bad(const char *spec, const char *reason)
{
    const char *const specs[] = {"10.0.0.0/8", spec};
    int rc;
    char err[160] = "";
    wh_cidr_list_t *l = list_of(specs, 2, &rc, err, sizeof(err));
    CHECK_INT(rc, WH_EINVAL);
    CHECK(l == NULL);
    char quoted[80];
    snprintf(quoted, sizeof(quoted), "\"%s\"", spec);
    CHECK_CONTAINS(err, quoted);
    CHECK_CONTAINS(err, reason);
}

static void test_reject(void)
{
    bad("10.0.0.0/33", "out of range");
    bad("::/129", "out of range");
    bad("abc", "not an IP address");
    bad("1.2.3.4/", "prefix");
    bad("", "empty");
    bad("   ", "empty");
    bad("1.2.3", "not an IP");
    bad("1.2.3.4.5", "not an IP");
    bad("256.0.0.1", "not an IP");
    bad("01.2.3.4", "not an IP");
    bad("fe80::1%eth0", "not an IP");
    bad("10.0.0.0/8x", "prefix");
    bad("10.0.0.0/-8", "prefix");
    bad("10.0.0.0/0008", "prefix");
    bad("10.0.0.0/ 8", "prefix");
    bad("10.0.0.0/8/8", "prefix");
    bad("/8", "not an IP");
    bad("10.0.0.1/8", "bits set");
    bad("2001:db8::1/32", "bits set");
    bad("::ffff:10.0.0.0/8", "IPv4-mapped");
    /* A long entry is named, cut short, without overflowing err. */
    const char *const longspec[] = {"1111111111111111111111111111111111111111111111111111111111"
                                    "11111111111111111111111111111111111111111111"};
    int rc;
    char err[40];
    wh_cidr_list_t *l = list_of(longspec, 1, &rc, err, sizeof(err));
    CHECK_INT(rc, WH_EINVAL);
    CHECK(l == NULL);
    CHECK_INT(strlen(err), sizeof(err) - 1);
    CHECK_CONTAINS(err, "bad CIDR \"1111");
}

static int client(const char *peer, const char *xff, const wh_cidr_list_t *trusted, char *out)
{
    struct sockaddr_storage ss;
    return wh_client_ip(sa_of(peer, &ss), xff, xff ? strlen(xff) : 0, trusted, out,
                        INET6_ADDRSTRLEN);
}

static void test_client_ip(void)
{
    static const char *const specs[] = {"10.0.0.0/8", "127.0.0.1", "fd00::/8"};
    int rc;
    char err[128], out[INET6_ADDRSTRLEN];
    wh_cidr_list_t *t = list_of(specs, WH_ARRAY_SIZE(specs), &rc, err, sizeof(err));
    CHECK_INT(rc, WH_OK);

    /* Untrusted peer: its own address, whatever the header claims. */
    CHECK_INT(client("198.51.100.1", NULL, t, out), WH_OK);
    CHECK_STR(out, "198.51.100.1");
    CHECK_INT(client("198.51.100.1", "10.0.0.1", t, out), WH_OK);
    CHECK_STR(out, "198.51.100.1");
    CHECK_INT(client("198.51.100.1", "203.0.113.7", t, out), WH_OK);
    CHECK_STR(out, "198.51.100.1");

    /* Trusted peer without a header: the peer. */
    CHECK_INT(client("10.0.0.5", NULL, t, out), WH_OK);
    CHECK_STR(out, "10.0.0.5");
    CHECK_INT(client("10.0.0.5", "", t, out), WH_OK);
    CHECK_STR(out, "10.0.0.5");
    CHECK_INT(client("10.0.0.5", " , ", t, out), WH_OK);
    CHECK_STR(out, "10.0.0.5");

    /* Trusted peer: the address its proxy appended. */
    CHECK_INT(client("10.0.0.5", "203.0.113.7", t, out), WH_OK);
    CHECK_STR(out, "203.0.113.7");
    /* Spoofing: the client sends its own header; the proxy appends the real address. */
    CHECK_INT(client("10.0.0.5", "6.6.6.6, 203.0.113.7", t, out), WH_OK);
    CHECK_STR(out, "203.0.113.7");
    CHECK_INT(client("10.0.0.5", "10.0.0.9, 203.0.113.7", t, out), WH_OK);
    CHECK_STR(out, "203.0.113.7");
    CHECK_INT(client("10.0.0.5", "127.0.0.1,203.0.113.7", t, out), WH_OK);
    CHECK_STR(out, "203.0.113.7");
    CHECK_INT(client("10.0.0.5", "garbage, 203.0.113.7", t, out), WH_OK);
    CHECK_STR(out, "203.0.113.7");
    /* Two trusted hops: skip the inner proxy. */
    CHECK_INT(client("10.0.0.5", "6.6.6.6, 203.0.113.7, 10.1.1.1", t, out), WH_OK);
    CHECK_STR(out, "203.0.113.7");
    /* Several headers joined with ", " and odd spacing. */
    CHECK_INT(client("10.0.0.5", "1.1.1.1 ,\t203.0.113.8 , 10.2.2.2", t, out), WH_OK);
    CHECK_STR(out, "203.0.113.8");
    /* Every element trusted: the leftmost. */
    CHECK_INT(client("10.0.0.5", "10.0.0.1, 10.0.0.2", t, out), WH_OK);
    CHECK_STR(out, "10.0.0.1");
    /* An unreadable element stops the walk at the last trusted address. */
    CHECK_INT(client("10.0.0.5", "203.0.113.7, unknown", t, out), WH_OK);
    CHECK_STR(out, "10.0.0.5");
    CHECK_INT(client("10.0.0.5", "203.0.113.7, bogus, 10.0.0.3", t, out), WH_OK);
    CHECK_STR(out, "10.0.0.3");
    CHECK_INT(client("10.0.0.5", "203.0.113.7, 10.0.0.0/8", t, out), WH_OK);
    CHECK_STR(out, "10.0.0.5");
    /* Empty elements carry no claim and are skipped. */
    CHECK_INT(client("10.0.0.5", "203.0.113.7,, ,10.0.0.3,", t, out), WH_OK);
    CHECK_STR(out, "203.0.113.7");
    /* Ports appended by some balancers. */
    CHECK_INT(client("10.0.0.5", "203.0.113.7:51234", t, out), WH_OK);
    CHECK_STR(out, "203.0.113.7");
    CHECK_INT(client("10.0.0.5", "[2001:db8::7]:443", t, out), WH_OK);
    CHECK_STR(out, "2001:db8::7");
    CHECK_INT(client("10.0.0.5", "[2001:db8::7]", t, out), WH_OK);
    CHECK_STR(out, "2001:db8::7");
    CHECK_INT(client("10.0.0.5", "203.0.113.7:", t, out), WH_OK);
    CHECK_STR(out, "10.0.0.5");
    CHECK_INT(client("10.0.0.5", "[2001:db8::7", t, out), WH_OK);
    CHECK_STR(out, "10.0.0.5");

    /* IPv6: canonical text; an IPv4-mapped peer or element prints as plain IPv4. */
    CHECK_INT(client("2001:DB8:0:0::1", NULL, t, out), WH_OK);
    CHECK_STR(out, "2001:db8::1");
    CHECK_INT(client("::ffff:198.51.100.4", NULL, t, out), WH_OK);
    CHECK_STR(out, "198.51.100.4");
    CHECK_INT(client("::ffff:10.0.0.5", "::ffff:203.0.113.7", t, out), WH_OK);
    CHECK_STR(out, "203.0.113.7");
    CHECK_INT(client("fd00::1", "2001:db8::99, fd12::2", t, out), WH_OK);
    CHECK_STR(out, "2001:db8::99");

    /* No trusted list: never believe the header. */
    CHECK_INT(client("10.0.0.5", "203.0.113.7", NULL, out), WH_OK);
    CHECK_STR(out, "10.0.0.5");

    /* The length is honoured: the text after it is not part of the header. */
    struct sockaddr_storage ss;
    const char *hdr = "6.6.6.6, 203.0.113.7, 1.2.3.4";
    CHECK_INT(wh_client_ip(sa_of("10.0.0.5", &ss), hdr, 20, t, out, sizeof(out)), WH_OK);
    CHECK_STR(out, "203.0.113.7");

    /* Unknown peer family. */
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    CHECK_INT(wh_client_ip((struct sockaddr *)&sun, NULL, 0, t, out, sizeof(out)), WH_EINVAL);
    CHECK_INT(wh_client_ip(NULL, NULL, 0, t, out, sizeof(out)), WH_EINVAL);
    wh_cidr_list_free(t);
}

int main(void)
{
    test_parse_and_match();
    test_reject();
    test_client_ip();
    WH_TEST_MAIN_END();
}
