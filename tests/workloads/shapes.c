/* Programs whose memory has a known shape over time, for the alert-quality test:
 *
 *   shapes leak KIB MAX_MIB       every 100 ms: malloc KIB KiB, touch it, keep it, up to MAX_MIB
 *   shapes burst MIB SECONDS      at start: grow by MIB MiB over SECONDS (in 100 ms steps), then idle
 *   shapes bigheap MIB            at start: malloc MIB MiB (1 MiB blocks, touched), then idle
 *   shapes sawtooth MIB SECONDS   grow to MIB MiB over SECONDS (100 ms steps), free it all, again
 *   shapes idle                   nothing
 *
 * It prints "ready\n" once started (bigheap: once its heap is allocated) and dies with its parent
 * (PR_SET_PDEATHSIG), so that a test that fails half-way leaves nothing behind.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define MIB (1UL << 20)
#define MAX_BLOCKS 8192

static void *blocks[MAX_BLOCKS];

static void pause_100ms(void) {
    struct timespec t = {0, 100 * 1000 * 1000};
    while (nanosleep(&t, &t) != 0) {
    }
}

/* A touched block the compiler cannot elide. */
static void *take(size_t size, unsigned char fill) {
    char *p = malloc(size);
    if (!p) _exit(2);
    memset(p, fill, size);
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}

static void ready(void) { write(1, "ready\n", 6); }

static void idle(void) {
    for (;;) pause();
}

int main(int argc, char **argv) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) return 1; /* the parent died before prctl */
    const char *mode = argc > 1 ? argv[1] : "idle";
    unsigned long a = argc > 2 ? strtoul(argv[2], NULL, 0) : 0;
    unsigned long b = argc > 3 ? strtoul(argv[3], NULL, 0) : 0;

    if (strcmp(mode, "leak") == 0) {
        ready();
        unsigned long held = 0;
        for (unsigned n = 0;; n++) {
            if ((held + a) <= b * 1024 && n < MAX_BLOCKS) {
                blocks[n] = take(a * 1024, (unsigned char)n);
                held += a;
            }
            pause_100ms();
        }
    }
    if (strcmp(mode, "burst") == 0) {
        ready();
        unsigned long steps = b > 0 ? b * 10 : 1;
        size_t step = a * MIB / steps;
        for (unsigned long i = 0; i < steps && i < MAX_BLOCKS; i++) {
            blocks[i] = take(step, (unsigned char)i);
            pause_100ms();
        }
        idle();
    }
    if (strcmp(mode, "bigheap") == 0) {
        for (unsigned long i = 0; i < a && i < MAX_BLOCKS; i++) blocks[i] = take(MIB, (unsigned char)i);
        ready();
        idle();
    }
    if (strcmp(mode, "sawtooth") == 0) {
        ready();
        unsigned long steps = b > 0 ? b * 10 : 1;
        size_t step = a * MIB / steps;
        for (unsigned round = 0;; round++) {
            for (unsigned long i = 0; i < steps && i < MAX_BLOCKS; i++) {
                blocks[i] = take(step, (unsigned char)round);
                pause_100ms();
            }
            for (unsigned long i = 0; i < steps && i < MAX_BLOCKS; i++) free(blocks[i]);
        }
    }
    ready();
    idle();
}
