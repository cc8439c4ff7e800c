/* Syscall storm for the event pipeline: PAIRS mmap+munmap pairs of one untouched page, split over
 * THREADS threads. Each pair is two events for memtrace's syscall tracepoints and costs no page
 * fault, so events arrive far faster than allocator uprobes can produce them.
 *
 * usage: mmap_storm PAIRS [THREADS] */
#include "common.h"

#include <pthread.h>
#include <sys/mman.h>

struct job {
    long pairs;
};

static void *work(void *arg) {
    struct job *job = arg;
    for (long i = 0; i < job->pairs; i++) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED || munmap(p, 4096) != 0) {
            perror("mmap_storm");
            exit(1);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    long pairs = bench_arg(argc, argv, 1, 2000000);
    long threads = bench_arg(argc, argv, 2, 2);
    if (threads > 64) {
        threads = 64;
    }
    pthread_t ids[64];
    struct job jobs[64];
    bench_gate();
    double start = bench_now();
    for (long t = 0; t < threads; t++) {
        jobs[t].pairs = pairs / threads + (t < pairs % threads ? 1 : 0);
        if (pthread_create(&ids[t], NULL, work, &jobs[t]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    for (long t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
    }
    /* Two system calls per pair, each one memtrace event. */
    bench_report(bench_now() - start, (unsigned long long)pairs * 2);
    return 0;
}
