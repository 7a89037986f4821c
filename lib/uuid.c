/*
 * uuid.c - event ids: UUIDv7 (RFC 9562) with the bus sequence in the low
 * 62 bits, so an id maps to its position without a lookup, and a 12-bit tag
 * of the bus incarnation in rand_a.
 *
 *   bytes 0..5   unix milliseconds (big endian)
 *   byte  6      0x7 << 4 | incarnation tag bits 8..11
 *   byte  7      incarnation tag bits 0..7
 *   byte  8      0b10 << 6 | seq bits 56..61
 *   bytes 9..15  seq bits 0..55 (big endian)
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "event_encode.h"

void uuid_make_v7(shmbus_uuid_t *out, uint64_t unix_ms, uint64_t seq, uint64_t incarnation)
{
	/* two big-endian words: ms(48) ver(4) tag(12) | var(2) seq(62) */
	id_words_put(out->bytes, uuid_v7_words(unix_ms, incarnation, seq));
}

SHMBUS_API uint64_t shmbus_uuid_seq(const shmbus_uuid_t *id)
{
	const uint8_t *b = id->bytes;
	uint64_t seq = (uint64_t)(b[8] & 0x3F) << 56;
	for (int i = 0; i < 7; i++)
		seq |= (uint64_t)b[9 + i] << (48 - 8 * i);
	return seq;
}

SHMBUS_API void shmbus_uuid_format(const shmbus_uuid_t *id, char out[SHMBUS_UUID_STR])
{
	static const char hex[] = "0123456789abcdef";
	char *p = out;
	for (int i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*p++ = '-';
		*p++ = hex[id->bytes[i] >> 4];
		*p++ = hex[id->bytes[i] & 15];
	}
	*p = '\0';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

SHMBUS_API int shmbus_uuid_parse(const char *text, shmbus_uuid_t *out)
{
	if (!text || !out)
		return shmbus__fail(EINVAL, "uuid: NULL argument");
	if (strlen(text) != 36)
		return shmbus__fail(EINVAL, "uuid: '%.40s' is not 36 characters (8-4-4-4-12 hex)", text);
	shmbus_uuid_t u;
	int j = 0;
	for (int i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (text[i] != '-')
				return shmbus__fail(EINVAL, "uuid: expected '-' at position %d of '%s'", i, text);
			continue;
		}
		int hi = hexval(text[i]), lo = hexval(text[i + 1]);
		if (hi < 0 || lo < 0)
			return shmbus__fail(EINVAL, "uuid: non-hex character near position %d of '%s'", i, text);
		u.bytes[j++] = (uint8_t)(hi << 4 | lo);
		i++;
	}
	*out = u;
	return 0;
}

SHMBUS_API bool shmbus_uuid_is_nil(const shmbus_uuid_t *id)
{
	static const shmbus_uuid_t nil;
	return memcmp(id, &nil, sizeof nil) == 0;
}
