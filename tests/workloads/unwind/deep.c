/* deep [depth] [calls]: recurses `depth` frames, then waits for a byte on stdin and makes `calls`
 * malloc/free pairs from there; prints "done". The unwinding benchmark traces it. */
#include <stdlib.h>
#include <unistd.h>

__attribute__((noinline)) static long work(long calls) {
    long sum = 0;
    for (long i = 0; i < calls; i++) {
        volatile char *p = malloc(64);
        p[0] = (char)i;
        sum += p[0];
        free((void *)p);
    }
    return sum;
}

__attribute__((noinline)) static long recurse(int depth, long calls) {
    volatile char pad[32];
    pad[depth & 31] = 1;
    if (depth <= 0) {
        char c;
        write(1, "ready\n", 6);
        if (read(0, &c, 1) != 1) return -1;
        long r = work(calls);
        write(1, "done\n", 5);
        return r + pad[0];
    }
    return recurse(depth - 1, calls) + pad[depth & 31];
}

int main(int argc, char **argv) {
    int depth = argc > 1 ? atoi(argv[1]) : 28;
    long calls = argc > 2 ? atol(argv[2]) : 200000;
    return recurse(depth, calls) == -1;
}
