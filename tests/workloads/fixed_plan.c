/* A fixed allocation plan for `memtrace trace -- fixed_plan`: the figures it must report are
 * written in tests/cli.rs. No stdio (it allocates). */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* Results are stored where the compiler must keep them, or it may drop unused allocations. */
void *volatile keep[4];

int main(void) {
    static void *blocks[200];
    for (int i = 0; i < 200; i++) blocks[i] = malloc(4000);      /* 800000 */
    for (int i = 0; i < 50; i++) free(blocks[i]);               /* -200000 */
    void *c = calloc(100, 30);                                  /* +3000 */
    void *r = realloc(NULL, 1000);                              /* +1000 */
    r = realloc(r, 9000);                                       /* +8000 */
    void *a = aligned_alloc(64, 640);                           /* +640 */
    keep[0] = c; keep[1] = r; keep[2] = a;
    /* 10 pages mapped, 3 unmapped: 7 pages of anonymous mappings remain. */
    char *m = mmap(0, 10 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(m + 2 * 4096, 3 * 4096);
    sbrk(3 * 4096);
    sbrk(-4096);
    write(1, "done\n", 5);
    return 0;
}
