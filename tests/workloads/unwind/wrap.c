/* The allocation wrapper (configured as a wrapper in the tests): its frame sits between malloc
 * and the code that keeps the memory. Not a tail call, so the frame stays on the stack. */
#include <stdlib.h>

__attribute__((noinline)) void *uw_xalloc(unsigned long size) {
    void *p = malloc(size);
    if (!p) abort();
    ((volatile char *)p)[0] = 1;
    return p;
}
