#include <stdio.h>
#include <string.h>

#include "tally.h"

static struct tally t;
static int checks, failed;

static void check(int ok, const char *what)
{
	checks++;
	if (!ok) {
		failed++;
		printf("FAIL: %s\n", what);
	}
}

int main(void)
{
	const char *text = "The cat, the HAT; the end.";
	char word[TALLY_WORD];
	tally_init(&t);
	while (text_next_word(&text, word, sizeof word))
		tally_add(&t, word);
	tally_sort(&t);
	check(t.len == 4, "four distinct words");
	check(strcmp(t.words[0].text, "the") == 0, "'the' is the most frequent");
	check(t.words[0].count == 3, "'the' three times");
	check(strcmp(t.words[1].text, "cat") == 0, "ties sorted by text");
	printf("selftest: %d checks, %d failed\n", checks, failed);
	return failed != 0;
}
