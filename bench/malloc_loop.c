/* malloc/free-heavy loop: PAIRS malloc+free pairs (mostly 64 bytes, a few other sizes), split
 * over THREADS threads. A ring of live blocks keeps the compiler from pairing each malloc with
 * its free and eliding both.
 *
 * usage: malloc_loop PAIRS [THREADS] */
#include "common.h"

#include <pthread.h>

#define RING 32

static const size_t SIZES[8] = {64, 64, 64, 64, 16, 128, 512, 64};

struct job {
    long pairs;
    unsigned long long calls;
};

static void *work(void *arg) {
    struct job *job = arg;
    void *ring[RING] = {0};
    unsigned long long calls = 0;
    for (long i = 0; i < job->pairs; i++) {
        unsigned slot = (unsigned)i & (RING - 1);
        free(ring[slot]);
        char *p = malloc(SIZES[i & 7]);
        if (!p) {
            abort();
        }
        *(volatile char *)p = (char)i;
        ring[slot] = p;
        calls += 2;
    }
    for (unsigned slot = 0; slot < RING; slot++) {
        free(ring[slot]);
        calls++;
    }
    job->calls = calls;
    return NULL;
}

int main(int argc, char **argv) {
    long pairs = bench_arg(argc, argv, 1, 3000000);
    long threads = bench_arg(argc, argv, 2, 1);
    if (threads > 64) {
        threads = 64;
    }
    pthread_t ids[64];
    struct job jobs[64];
    bench_gate();
    double start = bench_now();
    for (long t = 0; t < threads; t++) {
        jobs[t].pairs = pairs / threads + (t < pairs % threads ? 1 : 0);
        jobs[t].calls = 0;
        if (threads == 1) {
            work(&jobs[t]);
        } else if (pthread_create(&ids[t], NULL, work, &jobs[t]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    unsigned long long calls = 0;
    for (long t = 0; t < threads; t++) {
        if (threads > 1) {
            pthread_join(ids[t], NULL);
        }
        calls += jobs[t].calls;
    }
    bench_report(bench_now() - start, calls);
    return 0;
}
