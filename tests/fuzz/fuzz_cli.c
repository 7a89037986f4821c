/*
 * fuzz_cli.c - the command line's parsers of untrusted text: numbers,
 * sizes, durations, comma lists and JSON data.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	uint64_t u64;
	uint32_t u32;
	(void)cli_parse_u64(s, 0, UINT64_MAX, &u64);
	(void)cli_parse_u32(s, 1, 1000, &u32);
	(void)cli_parse_size(s, UINT64_MAX, &u64);
	(void)cli_parse_duration(s, &u64);
	char **items = NULL;
	if (cli_split_list(s, &items) > 0)
		cli_list_free(items);
	json_error_t err;
	json_t *j = json_loadb(s, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
	json_decref(j);
	free(s);
	return 0;
}
