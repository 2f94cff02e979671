/* A multi-threaded agent that starts a tool as a child process, the way language runtimes
 * and shells do: posix_spawn (glibc: a clone with CLONE_VM | CLONE_VFORK) or vfork then
 * execv. Two threads keep its log flowing meanwhile; the agent waits for the tool and ends
 * as it ended, as a shell does.
 *
 * Usage: spawn posix_spawn|vfork PROGRAM WORD
 *
 * Prints "parent PID" at once, and "child PID exited CODE" or "child PID killed by signal
 * SIGNAL" once the tool is done; exits with CODE, or 128 + SIGNAL. */

#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "logger.h"

extern char **environ;

static pid_t start_tool(const char *how, char *const *tool_argv) {
    if (strcmp(how, "posix_spawn") == 0) {
        pid_t child;
        int error = posix_spawn(&child, tool_argv[0], NULL, NULL, tool_argv, environ);
        if (error != 0) {
            fprintf(stderr, "posix_spawn: %s\n", strerror(error));
            return -1;
        }
        return child;
    }
    if (strcmp(how, "vfork") == 0) {
        pid_t child = vfork();
        if (child == 0) {
            execv(tool_argv[0], tool_argv);
            _exit(127);
        }
        if (child < 0) {
            perror("vfork");
        }
        return child;
    }
    fprintf(stderr, "unknown way to start a tool: %s\n", how);
    return -1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s posix_spawn|vfork PROGRAM WORD\n", argv[0]);
        return 2;
    }
    printf("parent %d\n", (int)getpid());
    fflush(stdout);
    pthread_t loggers[2];
    for (int i = 0; i < 2; i++) {
        if (pthread_create(&loggers[i], NULL, logger, NULL) != 0) {
            return 1;
        }
    }
    pid_t child = start_tool(argv[1], argv + 2);
    int status;
    if (child < 0 || waitpid(child, &status, 0) != child) {
        return 1;
    }
    if (WIFSIGNALED(status)) {
        printf("child %d killed by signal %d\n", (int)child, WTERMSIG(status));
        return 128 + WTERMSIG(status);
    }
    printf("child %d exited %d\n", (int)child, WEXITSTATUS(status));
    return WEXITSTATUS(status);
}
