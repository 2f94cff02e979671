#ifndef TALLY_H
#define TALLY_H

#include <stddef.h>

#define TALLY_WORD 64
#define TALLY_MAX 4096

struct word {
	char text[TALLY_WORD];
	int count;
};

struct tally {
	struct word words[TALLY_MAX];
	size_t len;
};

void tally_init(struct tally *t);
int tally_add(struct tally *t, const char *word);
void tally_sort(struct tally *t);
/* Copies the next word after *cursor into out (lower case), advances *cursor; 0 at the end. */
size_t text_next_word(const char **cursor, char *out, size_t size);

#endif
