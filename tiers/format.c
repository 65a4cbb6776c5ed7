/*
 * The block file format (tier.h): names, footer, chunk table, and the checks
 * of what is read back. Pure functions, no I/O.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "tiers/tier_int.h"

#define TIER_MAGIC 0x314b4c4253525a4cULL /* "LZRSBLK1" little endian */
#define TIER_VERSION 2u   /* 2: chunk checksum table */

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the block footer is stored in host order; add byte swapping for big endian"
#endif

uint64_t tier_block_key(const char *file_key, size_t file_key_len, uint64_t index)
{
	XXH3_state_t st;
	uint64_t le = index;

	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, file_key, file_key_len);
	XXH3_64bits_update(&st, &le, sizeof(le));
	return XXH3_64bits_digest(&st);
}

const char *tier_medium_name(enum tier_medium m)
{
	switch (m) {
	case TIER_MEM: return "MEM";
	case TIER_SSD: return "SSD";
	case TIER_HDD: return "HDD";
	}
	return "?";
}

int tier_medium_parse(const char *s, enum tier_medium *out)
{
	if (!strcasecmp(s, "MEM"))
		*out = TIER_MEM;
	else if (!strcasecmp(s, "SSD"))
		*out = TIER_SSD;
	else if (!strcasecmp(s, "HDD"))
		*out = TIER_HDD;
	else
		return -EINVAL;
	return 0;
}

void block_name(char *buf, size_t len, uint64_t key, uint64_t seq, const char *suffix)
{
	snprintf(buf, len, "%02x/%016" PRIx64 "-%016" PRIx64 "%s",
		 (unsigned)(key >> 56), key, seq, suffix);
}

int block_name_parse(const char *name, uint64_t *key, uint64_t *seq)
{
	char *end;

	if (strlen(name) != 33 || name[16] != '-')
		return -1;
	for (int i = 0; i < 33; i++)
		if (i != 16 && !strchr("0123456789abcdef", name[i]))
			return -1;
	*key = strtoull(name, &end, 16);
	*seq = strtoull(name + 17, &end, 16);
	return 0;
}

void footer_fill(struct footer *f, const struct tier_block *b)
{
	memset(f, 0, sizeof(*f));
	f->magic = TIER_MAGIC;
	f->version = TIER_VERSION;
	f->len = b->len;
	f->key = b->key;
	f->seq = b->seq;
	f->index = b->index;
	f->file_size = b->file_size;
	f->file_mtime_ns = b->file_mtime_ns;
	f->checksum = b->checksum;
	f->key_len = b->file_key_len;
	f->block_size = b->block_size;
	f->footer_sum = XXH3_64bits(f, offsetof(struct footer, footer_sum));
}

int footer_valid(const struct footer *f)
{
	return f->magic == TIER_MAGIC && f->version == TIER_VERSION &&
	       f->footer_sum == XXH3_64bits(f, offsetof(struct footer, footer_sum)) &&
	       f->key_len > 0 && f->key_len <= TIER_KEY_MAX;
}

size_t table_bytes(uint32_t len)
{
	return (size_t)tier_block_nchunks(len) * 8;
}

void table_fill(uint64_t *table, const void *data, uint32_t len)
{
	uint32_t nchunks = tier_block_nchunks(len);

	for (uint32_t i = 0; i < nchunks; i++) {
		uint32_t pos = i * TIER_CHUNK;

		table[i] = XXH3_64bits((const char *)data + pos,
				       len - pos < TIER_CHUNK ? len - pos : TIER_CHUNK);
	}
}

size_t tail_bytes(const struct tier_block *b)
{
	return table_bytes(b->len) + b->file_key_len + TIER_FOOTER_SIZE;
}

int tail_check(const struct tier_block *b, const char *tail)
{
	size_t tlen = table_bytes(b->len);
	struct footer f;

	memcpy(&f, tail + tlen + b->file_key_len, sizeof(f));   /* may be unaligned */
	if (!footer_valid(&f) || f.key != b->key || f.seq != b->seq || f.len != b->len ||
	    f.index != b->index || f.key_len != b->file_key_len ||
	    memcmp(tail + tlen, b->file_key, b->file_key_len) != 0 ||
	    XXH3_64bits(tail, tlen) != f.checksum)
		return -EBADMSG;
	return 0;
}

/* A chunk may straddle two segments, hence the streaming hash. */
int chunks_check(const char *table, uint32_t start, uint32_t end, const struct iovec *seg)
{
	const char *p = seg->iov_base;
	size_t left = seg->iov_len;
	XXH3_state_t st;

	for (uint32_t pos = start; pos < end; pos += TIER_CHUNK) {
		size_t clen = end - pos < TIER_CHUNK ? end - pos : TIER_CHUNK;
		uint64_t want;

		XXH3_64bits_reset(&st);
		while (clen > 0) {
			size_t k;

			if (left == 0) {
				seg++;
				p = seg->iov_base;
				left = seg->iov_len;
			}
			k = left < clen ? left : clen;
			XXH3_64bits_update(&st, p, k);
			p += k;
			left -= k;
			clen -= k;
		}
		memcpy(&want, table + (size_t)(pos / TIER_CHUNK) * 8, sizeof(want));
		if (XXH3_64bits_digest(&st) != want)
			return -EBADMSG;
	}
	return 0;
}
