#include <stdlib.h>
#include <string.h>

#include "tally.h"

void tally_init(struct tally *t)
{
	t->len = 0;
}

int tally_add(struct tally *t, const char *word)
{
	for (size_t i = 0; i < t->len; i++) {
		if (strcmp(t->words[i].text, word) == 0)
			return ++t->words[i].count;
	}
	if (t->len == TALLY_MAX)
		return -1;
	strncpy(t->words[t->len].text, word, TALLY_WORD - 1);
	t->words[t->len].text[TALLY_WORD - 1] = '\0';
	t->words[t->len].count = 1;
	t->len++;
	return 1;
}

static int by_count(const void *a, const void *b)
{
	const struct word *x = a, *y = b;
	if (x->count != y->count)
		return y->count - x->count;
	return strcmp(x->text, y->text);
}

void tally_sort(struct tally *t)
{
	qsort(t->words, t->len, sizeof t->words[0], by_count);
}
