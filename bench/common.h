/* Shared by the benchmark workloads: a start gate and a monotonic clock.
 *
 * Every workload prints "ready", then waits for a line on standard input before its work loop,
 * so that a tracer can attach first (bpftrace -p) and its start-up is never timed. It prints the
 * elapsed seconds of the work loop alone as "elapsed <seconds>", the CPU seconds it used meanwhile
 * (user + system, its own and its waited-for children's) as "cpu <seconds>", and the allocator
 * calls it made as "calls <n>". */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline double bench_cpu(void) {
    struct rusage self, children;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &children);
    double t = 0;
    struct timeval tv[4] = {self.ru_utime, self.ru_stime, children.ru_utime, children.ru_stime};
    for (int i = 0; i < 4; i++) {
        t += (double)tv[i].tv_sec + (double)tv[i].tv_usec / 1e6;
    }
    return t;
}

static double bench_cpu_start;

static inline void bench_gate(void) {
    char line[64];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) {
        fprintf(stderr, "bench: no start line on standard input\n");
        exit(2);
    }
    bench_cpu_start = bench_cpu();
}

static inline void bench_report(double elapsed, unsigned long long calls) {
    double cpu = bench_cpu() - bench_cpu_start;
    printf("elapsed %.6f\ncpu %.6f\ncalls %llu\n", elapsed, cpu, calls);
    fflush(stdout);
}

static inline long bench_arg(int argc, char **argv, int index, long fallback) {
    if (argc <= index) {
        return fallback;
    }
    char *end = NULL;
    long value = strtol(argv[index], &end, 10);
    if (!end || *end || value <= 0) {
        fprintf(stderr, "bench: argument %d (%s) must be a positive number\n", index, argv[index]);
        exit(2);
    }
    return value;
}

#endif
