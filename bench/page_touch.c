/* Page-touching loop: ITERATIONS times, mmap 1 MiB of anonymous memory, write to every page,
 * munmap it. No allocator calls: what it costs is page faults and mmap/munmap system calls.
 *
 * usage: page_touch ITERATIONS */
#include "common.h"

#include <sys/mman.h>
#include <unistd.h>

#define MIB (1024 * 1024)

int main(int argc, char **argv) {
    long iterations = bench_arg(argc, argv, 1, 3000);
    long page = sysconf(_SC_PAGESIZE);
    bench_gate();
    double start = bench_now();
    for (long i = 0; i < iterations; i++) {
        char *p = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        for (long off = 0; off < MIB; off += page) {
            p[off] = (char)i;
        }
        if (munmap(p, MIB) != 0) {
            perror("munmap");
            return 1;
        }
    }
    bench_report(bench_now() - start, 0);
    return 0;
}
