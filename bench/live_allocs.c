/* A million live allocations: malloc COUNT blocks (16 to 256 bytes), keep them all, report, and
 * exit without freeing them (the tracer's report at exit still has its peak memory).
 *
 * usage: live_allocs COUNT */
#include "common.h"

int main(int argc, char **argv) {
    long count = bench_arg(argc, argv, 1, 1000000);
    static const size_t SIZES[4] = {16, 48, 64, 256};
    bench_gate();
    double start = bench_now();
    char **blocks = malloc((size_t)count * sizeof *blocks);
    if (!blocks) {
        abort();
    }
    unsigned long long bytes = 0;
    for (long i = 0; i < count; i++) {
        size_t size = SIZES[i & 3];
        blocks[i] = malloc(size);
        if (!blocks[i]) {
            abort();
        }
        blocks[i][0] = (char)i;
        bytes += size;
    }
    bench_report(bench_now() - start, (unsigned long long)count + 1);
    printf("live %ld blocks, %llu bytes\n", count, bytes);
    fflush(stdout);
    return 0;
}
