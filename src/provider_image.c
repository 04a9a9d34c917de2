/*-------------------------------------------------------------------------
 *
 * provider_image.c
 *	  Checks of the image bytes a backend returns: the PNG structure and
 *	  base64 decoding.
 *
 * An image is stored and returned as it came, so what gets past here must
 * at least be a whole PNG: every chunk inside the data with a good CRC,
 * IHDR first (its size is what the result reports), an IDAT, and IEND
 * last.  The pixels are not decoded; a PNG can still hold a bad zlib
 * stream, but a cut download, an HTML error page served as image/png or
 * a JPEG where a PNG was asked for are caught.  Both functions are
 * binary-safe: the data need not be NUL-terminated and may contain NULs.
 *
 * src/provider_image.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include "provider.h"

/* Largest width and height accepted (PNG allows 2^31 - 1). */
#define PNG_MAX_SIDE 65535

/* Chunk length, type and CRC around the data. */
#define PNG_CHUNK_OVERHEAD 12

static const unsigned char png_signature[8] = {
	0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'
};

static uint32_t crc_table[256];
static bool crc_table_ready = false;

/* Fill the table of the CRC-32 PNG uses (ISO 3309, reflected 0xEDB88320). */
static void
crc_init(void)
{
	uint32_t	n;

	for (n = 0; n < 256; n++)
	{
		uint32_t	c = n;
		int			k;

		for (k = 0; k < 8; k++)
			c = (c & 1) ? 0xEDB88320 ^ (c >> 1) : c >> 1;
		crc_table[n] = c;
	}
	crc_table_ready = true;
}

/* The CRC-32 of buf[0..len). */
static uint32_t
crc32_of(const unsigned char *buf, size_t len)
{
	uint32_t	c = 0xFFFFFFFF;
	size_t		i;

	if (!crc_table_ready)
		crc_init();
	for (i = 0; i < len; i++)
		c = crc_table[(c ^ buf[i]) & 0xFF] ^ (c >> 8);
	return c ^ 0xFFFFFFFF;
}

/* A big-endian 32-bit number, as PNG writes them. */
static uint32_t
read_be32(const unsigned char *p)
{
	return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
		((uint32_t) p[2] << 8) | (uint32_t) p[3];
}

/* Are bit depth and color type one of the pairs PNG defines? */
static bool
png_depth_valid(int depth, int color_type)
{
	switch (color_type)
	{
		case 0:					/* greyscale */
			return depth == 1 || depth == 2 || depth == 4 || depth == 8 ||
				depth == 16;
		case 3:					/* palette */
			return depth == 1 || depth == 2 || depth == 4 || depth == 8;
		case 2:					/* RGB */
		case 4:					/* greyscale with alpha */
		case 6:					/* RGBA */
			return depth == 8 || depth == 16;
		default:
			return false;
	}
}

/*
 * Check that data[0..len) is a whole PNG (see the top of the file) and
 * report its size.  On failure *error is a short palloc'd reason and
 * *width and *height are 0; on success *error is NULL.
 */
bool
igny8_png_check(const char *data, size_t len, int *width, int *height,
				char **error)
{
	const unsigned char *p = (const unsigned char *) data;
	const unsigned char *ihdr;
	size_t		pos;
	uint32_t	w;
	uint32_t	h;
	bool		seen_idat = false;
	bool		seen_iend = false;
	const char *problem = NULL;

	*width = 0;
	*height = 0;
	*error = NULL;

	if (data == NULL || len < sizeof(png_signature) ||
		memcmp(p, png_signature, sizeof(png_signature)) != 0)
	{
		*error = pstrdup("not a PNG image");
		return false;
	}
	pos = sizeof(png_signature);
	if (len - pos < PNG_CHUNK_OVERHEAD + 13)
	{
		*error = pstrdup("truncated PNG image");
		return false;
	}

	/* IHDR: width, height, depth, color type, compression, filter, interlace */
	ihdr = p + pos;
	if (memcmp(ihdr + 4, "IHDR", 4) != 0)
	{
		*error = pstrdup("PNG does not start with an IHDR chunk");
		return false;
	}
	if (read_be32(ihdr) != 13)
	{
		*error = pstrdup("PNG IHDR length is not 13");
		return false;
	}
	if (crc32_of(ihdr + 4, 4 + 13) != read_be32(ihdr + 8 + 13))
	{
		*error = pstrdup("PNG IHDR CRC mismatch");
		return false;
	}
	w = read_be32(ihdr + 8);
	h = read_be32(ihdr + 12);
	if (w < 1 || w > PNG_MAX_SIDE || h < 1 || h > PNG_MAX_SIDE)
	{
		*error = psprintf("PNG size %ux%u out of range", (unsigned int) w,
						  (unsigned int) h);
		return false;
	}
	if (!png_depth_valid(ihdr[16], ihdr[17]) || ihdr[18] != 0 ||
		ihdr[19] != 0 || ihdr[20] > 1)
	{
		*error = pstrdup("PNG IHDR has invalid fields");
		return false;
	}

	/* every chunk after it, through IEND */
	pos += PNG_CHUNK_OVERHEAD + 13;
	while (problem == NULL && !seen_iend)
	{
		const unsigned char *chunk = p + pos;
		uint32_t	clen;

		if (len - pos < PNG_CHUNK_OVERHEAD)
		{
			problem = "truncated PNG image";
			break;
		}
		clen = read_be32(chunk);
		/* a length above 2^31 - 1 is invalid, whatever the data */
		if (clen > 0x7FFFFFFF)
			problem = "PNG chunk length out of range";
		else if (len - pos - PNG_CHUNK_OVERHEAD < clen)
			problem = "truncated PNG image";
		else if (crc32_of(chunk + 4, 4 + (size_t) clen) !=
				 read_be32(chunk + 8 + clen))
			problem = "PNG chunk CRC mismatch";
		else if (memcmp(chunk + 4, "IHDR", 4) == 0)
			problem = "PNG has a second IHDR chunk";
		else if (memcmp(chunk + 4, "IDAT", 4) == 0)
			seen_idat = true;
		else if (memcmp(chunk + 4, "IEND", 4) == 0)
			seen_iend = true;
		pos += PNG_CHUNK_OVERHEAD + (size_t) clen;
	}
	if (problem == NULL && !seen_idat)
		problem = "PNG has no IDAT chunk";
	if (problem == NULL && pos != len)
		problem = "data after the PNG IEND chunk";
	if (problem != NULL)
	{
		*error = pstrdup(problem);
		return false;
	}

	*width = (int) w;
	*height = (int) h;
	return true;
}

/*
 * The number of bytes that in[0..len) decodes to as padded base64, or
 * SIZE_MAX when len cannot be base64 with padding (not a multiple of 4).
 * Only the length and the trailing '=' are looked at.
 */
size_t
igny8_base64_decoded_len(const char *in, size_t len)
{
	size_t		n;

	if (len % 4 != 0)
		return SIZE_MAX;
	n = len / 4 * 3;
	if (len > 0 && in[len - 1] == '=')
		n--;
	if (len > 1 && in[len - 2] == '=')
		n--;
	return n;
}

/* Value of a base64 character (standard alphabet), or -1. */
static int
base64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/*
 * Decode padded standard base64 (RFC 4648 section 4) into one palloc'd
 * buffer, *outlen bytes (plus a NUL that is not counted).  False, with
 * nothing allocated, when the length is not a multiple of 4, a character
 * is outside the alphabet (whitespace included), '=' stands anywhere but
 * in the last two places, or the result would be more than max bytes.
 */
bool
igny8_base64_decode(const char *in, size_t len, size_t max, char **out,
					size_t *outlen)
{
	const unsigned char *s = (const unsigned char *) in;
	size_t		size;
	size_t		pad;
	size_t		i;
	unsigned char *buf;
	unsigned char *o;

	*out = NULL;
	*outlen = 0;
	if (in == NULL && len > 0)
		return false;
	size = igny8_base64_decoded_len(in, len);
	if (size == SIZE_MAX || size > max)
		return false;
	pad = len / 4 * 3 - size;

	/* check every character first, so that nothing is allocated in vain */
	for (i = 0; i < len - pad; i++)
	{
		if (base64_value(s[i]) < 0)
			return false;
	}

	buf = palloc_extended(size + 1, MCXT_ALLOC_HUGE);
	o = buf;
	for (i = 0; i < len; i += 4)
	{
		uint32_t	v;

		v = (uint32_t) base64_value(s[i]) << 18 |
			(uint32_t) base64_value(s[i + 1]) << 12;
		*o++ = (unsigned char) (v >> 16);
		if (s[i + 2] == '=')
			break;				/* the last group: "xx==" */
		v |= (uint32_t) base64_value(s[i + 2]) << 6;
		*o++ = (unsigned char) (v >> 8);
		if (s[i + 3] == '=')
			break;				/* the last group: "xxx=" */
		v |= (uint32_t) base64_value(s[i + 3]);
		*o++ = (unsigned char) v;
	}
	*o = '\0';
	*out = (char *) buf;
	*outlen = size;
	return true;
}
