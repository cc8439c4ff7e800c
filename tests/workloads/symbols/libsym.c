/* libsym.so: sym_keep(count, size) keeps `count` blocks of `size` bytes, allocated by a static
 * function through a helper inlined into it. Built with -O1 -g and then split: its DWARF and
 * .symtab in a separate debug file, the library stripped to .dynsym with a .gnu_debuglink.
 * The tests find the lines marked `LINE:` in this file. */
#include <stdlib.h>

void *sym_kept[4096];
static int used;
volatile int sym_calls;

static inline __attribute__((always_inline)) void *sym_inline_alloc(unsigned long size) {
    char *p = malloc(size); /* LINE:malloc */
    if (p) p[0] = 1;
    return p;
}

__attribute__((noipa)) static int sym_static_keep(int count, unsigned long size) {
    int n = 0;
    for (int i = 0; i < count && used < 4096; i++) {
        sym_kept[used++] = sym_inline_alloc(size); /* LINE:inline */
        n++;
    }
    return n;
}

int sym_keep(int count, unsigned long size) {
    int n = sym_static_keep(count, size); /* LINE:static */
    sym_calls++;
    return n;
}
