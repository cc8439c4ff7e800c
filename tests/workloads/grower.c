/* Grows steadily until a line arrives on stdin. Used by the drill-down tests.
 *
 *   grower          grow_leak() keeps 1 MiB (touched) every 50 ms, up to 512 MiB (25 s); sleeps
 *                   between the steps
 *   grower busy     keeps 256 KiB every 50 ms, up to 512 MiB (100 s), and mallocs and frees 64
 *                   bytes as fast as it can between the steps (busy_churn): an allocator call
 *                   rate far over a drill-down's CPU budget
 *   grower steady   as busy, but one malloc/free pair every 10 us (~100,000 a second): busy in
 *                   its allocator at any moment, at a rate a reader keeps up with
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void *kept[2048];

__attribute__((noinline)) void *grow_leak(unsigned long size) {
    void *p = malloc(size);
    if (p) memset(p, 7, size);
    return p;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Until `until_ns`: malloc and free, checking the clock every 256 pairs, or one pair every
 * `gap_ns`. */
__attribute__((noinline)) void busy_churn(long long until_ns, long long gap_ns) {
    long long next = now_ns();
    while (next < until_ns) {
        for (int i = 0; i < (gap_ns ? 1 : 256); i++) {
            void *volatile p = malloc(64);
            free(p);
        }
        if (gap_ns) {
            next += gap_ns;
            while (now_ns() < next) {
            }
        } else {
            next = now_ns();
        }
    }
}

int main(int argc, char **argv) {
    int steady = argc > 1 && strcmp(argv[1], "steady") == 0;
    int busy = steady || (argc > 1 && strcmp(argv[1], "busy") == 0);
    unsigned long step = busy ? 256 << 10 : 1 << 20;
    int steps = (512 << 20) / step;
    write(1, "ready\n", 6);
    for (int i = 0; i < steps; i++) {
        struct pollfd in = { .fd = 0, .events = POLLIN };
        if (busy) {
            if (poll(&in, 1, 0) > 0) break;
            busy_churn(now_ns() + 50000000LL, steady ? 10000 : 0);
        } else if (poll(&in, 1, 50) > 0) {
            break;
        }
        kept[i] = grow_leak(step);
    }
    return 0;
}
