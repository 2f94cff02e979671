#!/bin/bash
# A configure-style loop, the worst case for judging executables: compile and run 40 tiny
# C programs, each a fresh executable (`conftest`, rewritten every time, as autoconf does).
# Prints one line per program; run in $WORK.
set -e
for n in $(seq 1 40); do
	printf '#include <stdio.h>\nint main(void) { printf("check %%d: %%d\\n", %d, %d * 3); return 0; }\n' "$n" "$n" > conftest.c
	cc -o conftest conftest.c
	./conftest
done
rm -f conftest conftest.c
