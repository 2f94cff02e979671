#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally.h"

static struct tally counts;

int main(int argc, char **argv)
{
	int top = 10;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--version") == 0) {
			puts("tally 0.1.0");
			return 0;
		} else if (strcmp(argv[i], "--top") == 0 && i + 1 < argc) {
			top = atoi(argv[++i]);
		} else {
			fprintf(stderr, "usage: tally [--top N] [--version] < TEXT\n");
			return 2;
		}
	}
	tally_init(&counts);
	char line[4096], word[TALLY_WORD];
	while (fgets(line, sizeof line, stdin)) {
		const char *cursor = line;
		while (text_next_word(&cursor, word, sizeof word))
			tally_add(&counts, word);
	}
	tally_sort(&counts);
	for (size_t i = 0; i < counts.len && (int)i < top; i++)
		printf("%7d %s\n", counts.words[i].count, counts.words[i].text);
	return 0;
}
