/* What the C agents share: threads that keep an agent's log flowing, as an agent's logger
 * or heartbeat does, and the count of lines they wrote. */

#include <stdatomic.h>
#include <time.h>

static atomic_ulong log_lines;

/* Keeps a thread alive and working. */
static void *logger(void *unused) {
    (void)unused;
    const struct timespec tick = {.tv_nsec = 5 * 1000 * 1000};
    for (;;) {
        atomic_fetch_add(&log_lines, 1);
        nanosleep(&tick, NULL);
    }
    return NULL;
}
