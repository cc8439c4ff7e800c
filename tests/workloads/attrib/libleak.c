/* Leaks: keeps every chunk it allocates. */
#include <stdlib.h>
#include <sys/mman.h>

static void *kept[4096];
static int nkept;

__attribute__((noinline)) void *leak_one(unsigned long size) {
    void *p = malloc(size);
    kept[nkept++ % 4096] = p;
    return p;
}

void leak_chunks(int count, unsigned long size) {
    for (int i = 0; i < count; i++) leak_one(size);
}

/* A direct mapping made by this library. */
void *leak_map(unsigned long len) {
    void *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? 0 : p;
}
