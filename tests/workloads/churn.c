/* Allocates and frees as fast as it can, from 16 call sites, keeping one block in 64 for a while:
 * the fastest allocator traffic a traced process makes, for the agent's load test.
 *
 *   churn            runs until killed; prints "ready\n" once started
 *
 * It dies with its parent (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

#define KEPT 4096

static void *kept[KEPT];

#define SITE(n)                                                                                    \
    __attribute__((noinline)) static void *site_##n(size_t size) { return malloc(size + n); }

SITE(0) SITE(1) SITE(2) SITE(3) SITE(4) SITE(5) SITE(6) SITE(7)
SITE(8) SITE(9) SITE(10) SITE(11) SITE(12) SITE(13) SITE(14) SITE(15)

static void *(*const sites[16])(size_t) = {
    site_0, site_1, site_2,  site_3,  site_4,  site_5,  site_6,  site_7,
    site_8, site_9, site_10, site_11, site_12, site_13, site_14, site_15,
};

int main(void) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) return 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    for (unsigned long i = 0;; i++) {
        void *p = sites[i % 16](64 + (i % 512));
        if (i % 64 == 0) {
            unsigned long slot = (i / 64) % KEPT;
            free(kept[slot]);
            kept[slot] = p;
        } else {
            free(p);
        }
    }
}
