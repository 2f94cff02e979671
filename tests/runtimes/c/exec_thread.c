/* A multi-threaded agent that runs a tool from a worker thread: two threads keep its log
 * flowing, and once they do, a tool thread (so started a little after the process) execs
 * PROGRAM WORD, which replaces the whole process.
 *
 * Usage: exec-thread PROGRAM WORD
 *
 * The tool thread prints "acting PID TID" (from /proc/thread-self, in that very thread)
 * just before its execv. */

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "logger.h"

static char *const *tool_argv;

/* Says which process and thread is about to act: /proc/thread-self is PID/task/TID. */
static void acting(void) {
    char link[64];
    ssize_t length = readlink("/proc/thread-self", link, sizeof link - 1);
    if (length < 0) {
        perror("readlink /proc/thread-self");
        exit(1);
    }
    link[length] = '\0';
    char *tid = strrchr(link, '/');
    *strchr(link, '/') = '\0';
    printf("acting %s %s\n", link, tid + 1);
    fflush(stdout);
}

static void *tool(void *unused) {
    (void)unused;
    acting();
    execv(tool_argv[0], tool_argv);
    perror("execv");
    exit(127);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PROGRAM WORD\n", argv[0]);
        return 2;
    }
    tool_argv = argv + 1;
    pthread_t loggers[2], runner;
    for (int i = 0; i < 2; i++) {
        if (pthread_create(&loggers[i], NULL, logger, NULL) != 0) {
            return 1;
        }
    }
    const struct timespec moment = {.tv_nsec = 1000 * 1000};
    while (atomic_load(&log_lines) < 8) {
        nanosleep(&moment, NULL);
    }
    if (pthread_create(&runner, NULL, tool, NULL) != 0) {
        return 1;
    }
    /* Returns only if the exec never happens: the tool thread exits the process. */
    pthread_join(runner, NULL);
    return 1;
}
