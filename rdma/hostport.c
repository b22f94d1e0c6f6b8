/*
 * "host:port" parsing shared by the backends. IPv6 literals come in brackets
 * ("[::1]:7471"); the port must be a decimal number 0..65535.
 */
#include "tp_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int rdmig_split_hostport(const char *hostport, char *host, size_t hostcap, char *port,
                         size_t portcap)
{
	const char *colon, *h = hostport;
	size_t hlen;

	if (!hostport || !*hostport)
		return -EINVAL;
	if (*h == '[') {
		const char *end = strchr(h, ']');

		if (!end || end[1] != ':')
			return -EINVAL;
		h++;
		hlen = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(h, ':');
		if (!colon || memchr(h, ':', (size_t)(colon - h)))
			return -EINVAL; /* unbracketed IPv6, or no port */
		hlen = (size_t)(colon - h);
	}
	if (hlen == 0 || hlen >= hostcap)
		return -EINVAL;

	const char *p = colon + 1;
	size_t plen = strlen(p);
	char *endp;
	unsigned long v;

	if (plen == 0 || plen >= portcap || plen > 5 || strspn(p, "0123456789") != plen)
		return -EINVAL;
	v = strtoul(p, &endp, 10);
	if (v > 65535)
		return -EINVAL;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	memcpy(port, p, plen + 1);
	return 0;
}
