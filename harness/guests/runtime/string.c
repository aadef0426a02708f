/* String helpers and the command-line parser. */
#include "lunavm.h"

/*
 * gcc may turn these loops back into calls to memset/memcpy (loop
 * distribution), which would recurse: keep them as written.
 */
#define NO_LIBCALL __attribute__((optimize("no-tree-loop-distribute-patterns")))

NO_LIBCALL size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (unsigned char)*a - (unsigned char)*b;
		if (!*a)
			break;
	}
	return 0;
}

char *strchr(const char *s, int c)
{
	for (;; s++) {
		if (*s == (char)c)
			return (char *)s;
		if (!*s)
			return NULL;
	}
}

NO_LIBCALL void *memset(void *d, int c, size_t n)
{
	unsigned char *p = d;
	while (n--)
		*p++ = (unsigned char)c;
	return d;
}

NO_LIBCALL void *memcpy(void *d, const void *s, size_t n)
{
	unsigned char *dp = d;
	const unsigned char *sp = s;
	while (n--)
		*dp++ = *sp++;
	return d;
}

NO_LIBCALL void *memmove(void *d, const void *s, size_t n)
{
	unsigned char *dp = d;
	const unsigned char *sp = s;
	if (dp < sp) {
		while (n--)
			*dp++ = *sp++;
	} else {
		while (n--)
			dp[n] = sp[n];
	}
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *pa = a, *pb = b;
	for (; n; n--, pa++, pb++)
		if (*pa != *pb)
			return *pa - *pb;
	return 0;
}

bool parse_u64(const char *s, size_t len, uint64_t *out)
{
	uint64_t v = 0;
	unsigned base = 10;
	size_t i = 0;

	if (len == (size_t)-1)
		len = strlen(s);
	if (len >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		i = 2;
	}
	if (i == len)
		return false;
	for (; i < len; i++) {
		char c = s[i];
		unsigned d;
		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = (unsigned)(c - 'A' + 10);
		else
			return false;
		/* v * 10 as shifts: no 64-bit multiply helper needed on i386. */
		v = base == 16 ? (v << 4) | d : (v << 3) + (v << 1) + d;
	}
	*out = v;
	return true;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Find the first word "key" or "key=...": returns the value (or NULL). */
static const char *cmdline_find(const char *p, const char *key, size_t *vlen)
{
	size_t klen = strlen(key);

	while (*p) {
		while (is_space(*p))
			p++;
		const char *w = p;
		while (*p && !is_space(*p))
			p++;
		size_t wlen = (size_t)(p - w);
		if (wlen >= klen && strncmp(w, key, klen) == 0) {
			if (wlen == klen) {
				*vlen = 0;
				return w + wlen;
			}
			if (w[klen] == '=') {
				*vlen = wlen - klen - 1;
				return w + klen + 1;
			}
		}
	}
	return NULL;
}

int cmdline_get(const char *cmdline, const char *key, char *buf, size_t len)
{
	size_t vlen;
	const char *v = cmdline ? cmdline_find(cmdline, key, &vlen) : NULL;

	if (!v)
		return -1;
	if (buf && len) {
		size_t n = vlen < len - 1 ? vlen : len - 1;
		memcpy(buf, v, n);
		buf[n] = '\0';
	}
	return (int)vlen;
}

bool cmdline_has(const char *cmdline, const char *key)
{
	return cmdline_get(cmdline, key, NULL, 0) >= 0;
}

uint64_t cmdline_get_u64(const char *cmdline, const char *key, uint64_t def)
{
	size_t vlen;
	uint64_t v;
	const char *s = cmdline ? cmdline_find(cmdline, key, &vlen) : NULL;

	if (!s || !parse_u64(s, vlen, &v))
		return def;
	return v;
}
