#include <ctype.h>

#include "tally.h"

size_t text_next_word(const char **cursor, char *out, size_t size)
{
	const char *p = *cursor;
	size_t n = 0;
	while (*p && !isalpha((unsigned char)*p))
		p++;
	while (*p && isalpha((unsigned char)*p)) {
		if (n + 1 < size)
			out[n++] = (char)tolower((unsigned char)*p);
		p++;
	}
	out[n] = '\0';
	*cursor = p;
	return n;
}
