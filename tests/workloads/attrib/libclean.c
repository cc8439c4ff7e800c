/* Allocates and frees the same amount: holds nothing. */
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) void *clean_one(unsigned long size) {
    void *p = malloc(size);
    memset(p, 0, size);
    return p;
}

void clean_cycle(int count, unsigned long size) {
    void *blocks[4096];
    for (int i = 0; i < count; i++) blocks[i] = clean_one(size);
    for (int i = 0; i < count; i++) free(blocks[i]);
}
