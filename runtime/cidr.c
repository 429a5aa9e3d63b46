/* CIDR lists (IPv4 and IPv6, IPv4-mapped addresses folded into IPv4) and the client-address rule
 * that believes X-Forwarded-For only as far as it was written by trusted proxies. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "wahook/cidr.h"

/* An address in one canonical form: IPv4 in b[0..3], IPv6 in b[0..15]. */
typedef struct wh__ip {
    int v6;
    uint8_t b[16];
} wh__ip_t;

typedef struct wh__cidr {
    wh__ip_t net;
    unsigned prefix;
} wh__cidr_t;

struct wh_cidr_list {
    size_t n;
    wh__cidr_t e[];
};

static const uint8_t wh__mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Folds ::ffff:a.b.c.d into a.b.c.d so that one IPv4 entry covers both spellings. */
static void wh__from_in6(const uint8_t a[16], wh__ip_t *ip)
{
    memset(ip, 0, sizeof(*ip));
    if (memcmp(a, wh__mapped_prefix, 12) == 0) {
        memcpy(ip->b, a + 12, 4);
    } else {
        ip->v6 = 1;
        memcpy(ip->b, a, 16);
    }
}

static int wh__ws(char c) { return c == ' ' || c == '\t'; }

/* Parses a bare address of len bytes (no brackets, port or zone). Returns 1 on success. */
static int wh__parse_ip(const char *s, size_t len, wh__ip_t *ip)
{
    char buf[INET6_ADDRSTRLEN + 1];
    if (len == 0 || len >= sizeof(buf))
        return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (memchr(buf, ':', len) != NULL) {
        uint8_t a[16];
        if (inet_pton(AF_INET6, buf, a) != 1)
            return 0;
        wh__from_in6(a, ip);
        return 1;
    }
    memset(ip, 0, sizeof(*ip));
    return inet_pton(AF_INET, buf, ip->b) == 1; /* glibc: dotted quad only, no octal */
}

static int wh__from_sockaddr(const struct sockaddr *sa, wh__ip_t *ip)
{
    if (sa == NULL)
        return 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        memset(ip, 0, sizeof(*ip));
        memcpy(ip->b, &sin->sin_addr, 4);
        return 1;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        wh__from_in6(sin6->sin6_addr.s6_addr, ip);
        return 1;
    }
    return 0;
}

static int wh__prefix_eq(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned full = bits / 8, rest = bits % 8;
    if (memcmp(a, b, full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (b[full] & mask);
}

static int wh__match(const wh_cidr_list_t *l, const wh__ip_t *ip)
{
    if (l == NULL)
        return 0;
    for (size_t i = 0; i < l->n; i++)
        if (l->e[i].net.v6 == ip->v6 && wh__prefix_eq(l->e[i].net.b, ip->b, l->e[i].prefix))
            return 1;
    return 0;
}

/* Parses one entry; on failure writes the reason (without the entry) into why. */
static int wh__parse_cidr(const char *spec, wh__cidr_t *c, const char **why)
{
    size_t len = strlen(spec);
    while (len > 0 && wh__ws(spec[0])) {
        spec++;
        len--;
    }
    while (len > 0 && wh__ws(spec[len - 1]))
        len--;
    if (len == 0) {
        *why = "empty entry";
        return 0;
    }
    const char *slash = memchr(spec, '/', len);
    size_t alen = slash != NULL ? (size_t)(slash - spec) : len;
    if (!wh__parse_ip(spec, alen, &c->net)) {
        *why = "not an IP address";
        return 0;
    }
    /* A mapped IPv6 spelling of an IPv4 range was folded to IPv4 above: shift its prefix too. */
    int was_v6_text = memchr(spec, ':', alen) != NULL;
    unsigned max = c->net.v6 ? 128 : 32;
    unsigned prefix = max;
    if (slash != NULL) {
        const char *p = slash + 1;
        size_t plen = len - alen - 1;
        if (plen == 0 || plen > 3) {
            *why = "bad prefix length";
            return 0;
        }
        prefix = 0;
        for (size_t i = 0; i < plen; i++) {
            if (p[i] < '0' || p[i] > '9') {
                *why = "bad prefix length";
                return 0;
            }
            prefix = prefix * 10 + (unsigned)(p[i] - '0');
        }
        if (was_v6_text && !c->net.v6) {
            if (prefix < 96 || prefix > 128) {
                *why = "prefix length out of range for an IPv4-mapped address (96-128)";
                return 0;
            }
            prefix -= 96;
        }
        if (prefix > max) {
            *why = c->net.v6 ? "prefix length out of range (0-128)"
                             : "prefix length out of range (0-32)";
            return 0;
        }
    }
    /* Bits set past the prefix usually mean a typo ("10.0.0.1/8" for "/32"); in a trust list
     * it is safer to ask than to widen the range silently. */
    unsigned nbytes = c->net.v6 ? 16 : 4;
    for (unsigned bit = prefix; bit < nbytes * 8; bit++) {
        if (c->net.b[bit / 8] & (0x80 >> (bit % 8))) {
            *why = "address has bits set beyond the prefix length";
            return 0;
        }
    }
    c->prefix = prefix;
    return 1;
}

int wh_cidr_list_parse(wh_cidr_list_t **out, const wh_strlist_t *specs, char *err, size_t errlen)
{
    size_t n = specs != NULL ? specs->n : 0;
    *out = NULL;
    wh_cidr_list_t *l = calloc(1, sizeof(*l) + n * sizeof(l->e[0]));
    if (l == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "out of memory");
        return WH_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const char *why = NULL;
        const char *spec = specs->v[i] != NULL ? specs->v[i] : "";
        if (!wh__parse_cidr(spec, &l->e[i], &why)) {
            if (err != NULL && errlen > 0)
                snprintf(err, errlen, "bad CIDR \"%.64s\": %s", spec, why);
            free(l);
            return WH_EINVAL;
        }
        l->n++;
    }
    *out = l;
    return WH_OK;
}

void wh_cidr_list_free(wh_cidr_list_t *l)
{
    free(l);
}

size_t wh_cidr_list_size(const wh_cidr_list_t *l)
{
    return l != NULL ? l->n : 0;
}

int wh_cidr_list_match(const wh_cidr_list_t *l, const struct sockaddr *sa)
{
    wh__ip_t ip;
    return wh__from_sockaddr(sa, &ip) && wh__match(l, &ip);
}

int wh_cidr_list_match_str(const wh_cidr_list_t *l, const char *ip, size_t len)
{
    wh__ip_t a;
    return ip != NULL && wh__parse_ip(ip, len, &a) && wh__match(l, &a);
}

/* One X-Forwarded-For element: an address, optionally "[v6]", "[v6]:port" or "v4:port" (some
 * load balancers append the port). Returns 1 on success. */
static int wh__parse_xff_item(const char *s, size_t len, wh__ip_t *ip)
{
    if (len > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL)
            return 0;
        size_t rest = len - (size_t)(close + 1 - s);
        const char *r = close + 1;
        if (rest > 0) {
            if (r[0] != ':' || rest < 2 || rest > 6)
                return 0;
            for (size_t i = 1; i < rest; i++)
                if (r[i] < '0' || r[i] > '9')
                    return 0;
        }
        return wh__parse_ip(s + 1, (size_t)(close - s - 1), ip);
    }
    const char *colon = memchr(s, ':', len);
    if (colon != NULL && memchr(colon + 1, ':', len - (size_t)(colon + 1 - s)) == NULL) {
        /* Exactly one colon: IPv4 with a port (no IPv6 text has a single colon). */
        size_t plen = len - (size_t)(colon + 1 - s);
        if (plen == 0 || plen > 5)
            return 0;
        for (size_t i = 0; i < plen; i++)
            if (colon[1 + i] < '0' || colon[1 + i] > '9')
                return 0;
        return wh__parse_ip(s, (size_t)(colon - s), ip) && !ip->v6;
    }
    return wh__parse_ip(s, len, ip);
}

int wh_client_ip(const struct sockaddr *peer, const char *xff, size_t xfflen,
                 const wh_cidr_list_t *trusted, char *out, size_t outlen)
{
    wh__ip_t cur;
    if (out != NULL && outlen > 0)
        out[0] = '\0';
    if (!wh__from_sockaddr(peer, &cur))
        return WH_EINVAL;

    /* Only a trusted peer's header is read, right to left: each trusted hop vouches for the
     * element to its left, and the first element no trusted hop wrote is the client. Anything
     * further left was written by the client and is ignored. */
    if (xff != NULL && xfflen > 0 && wh__match(trusted, &cur)) {
        size_t end = xfflen;
        for (;;) {
            size_t start = end;
            while (start > 0 && xff[start - 1] != ',')
                start--;
            size_t a = start, b = end;
            while (a < b && wh__ws(xff[a]))
                a++;
            while (b > a && wh__ws(xff[b - 1]))
                b--;
            if (b > a) {
                wh__ip_t ip;
                if (!wh__parse_xff_item(xff + a, b - a, &ip))
                    break; /* unreadable: keep the last address a trusted hop vouched for */
                cur = ip;
                if (!wh__match(trusted, &ip))
                    break;
            }
            if (start == 0)
                break;
            end = start - 1;
        }
    }

    if (out == NULL ||
        inet_ntop(cur.v6 ? AF_INET6 : AF_INET, cur.b, out, (socklen_t)outlen) == NULL) {
        if (out != NULL && outlen > 0)
            out[0] = '\0';
        return WH_EINVAL;
    }
    return WH_OK;
}
