/* A process whose memory grows (or does not) at a steady pace, for the agent's alert tests.
 *
 *   leaker leak [max_mib]    every 100 ms: malloc 2 MiB, touch every byte, keep it; once max_mib
 *                            (default 768) are held, stop growing and just wait
 *   leaker cycle             every 100 ms: malloc 2 MiB, touch every byte, free it (flat RSS)
 *
 * It prints "ready\n" once started and dies with its parent (PR_SET_PDEATHSIG), so that a test
 * that fails half-way leaves nothing behind.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (2UL << 20)

static void pause_100ms(void) {
    struct timespec t = {0, 100 * 1000 * 1000};
    while (nanosleep(&t, &t) != 0) {
    }
}

int main(int argc, char **argv) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) return 1; /* the parent died before prctl */
    int cycle = argc > 1 && strcmp(argv[1], "cycle") == 0;
    unsigned long max_mib = argc > 2 ? strtoul(argv[2], NULL, 0) : 768;
    unsigned long held = 0;
    write(1, "ready\n", 6);
    for (unsigned char round = 1;; round++) {
        if (cycle || held + (CHUNK >> 20) <= max_mib) {
            char *p = malloc(CHUNK);
            if (!p) return 2;
            memset(p, round, CHUNK);
            /* The compiler must not elide the allocation, the stores or the free. */
            __asm__ volatile("" : : "r"(p) : "memory");
            if (cycle) {
                free(p);
            } else {
                held += CHUNK >> 20;
            }
        }
        pause_100ms();
    }
}
