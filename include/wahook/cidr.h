/* CIDR lists for the IP allow-list and trusted proxies, and the client-address rule that
 * believes X-Forwarded-For only from trusted proxies. */
#ifndef WAHOOK_CIDR_H
#define WAHOOK_CIDR_H

#include <stddef.h>
#include <sys/socket.h>
#include "wahook/common.h"

typedef struct wh_cidr_list wh_cidr_list_t;

/* Parses "10.0.0.0/8", "::1", "2001:db8::/32", a bare address meaning /32 or /128. IPv4-mapped
 * IPv6 addresses match IPv4 entries. Returns 0 or WH_EINVAL naming the bad entry in err. An
 * empty specs list gives an empty list (matches nothing). */
int wh_cidr_list_parse(wh_cidr_list_t **out, const wh_strlist_t *specs, char *err, size_t errlen);
void wh_cidr_list_free(wh_cidr_list_t *l);
/* Number of entries. */
size_t wh_cidr_list_size(const wh_cidr_list_t *l);

/* 1 when the address matches an entry. */
int wh_cidr_list_match(const wh_cidr_list_t *l, const struct sockaddr *sa);
/* Same for a textual address; 0 for unparsable text. */
int wh_cidr_list_match_str(const wh_cidr_list_t *l, const char *ip, size_t len);

/* The client address of a request: the peer, unless the peer is a trusted proxy, in which case
 * X-Forwarded-For is walked from the right, skipping trusted proxies, and the first untrusted
 * (or the leftmost) valid address is the client. Writes its text into out (INET6_ADDRSTRLEN).
 * xff may be NULL. Returns 0, or WH_EINVAL when the peer family is unknown. */
int wh_client_ip(const struct sockaddr *peer, const char *xff, size_t xfflen,
                 const wh_cidr_list_t *trusted, char *out, size_t outlen);

#endif
