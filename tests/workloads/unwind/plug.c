/* A plugin the workload loads and unloads at run time: PLUG_FN keeps `count` blocks. Built twice
 * under two names, with different padding so that the code of the second is not the first's. */
#include <stdlib.h>

static void *kept[256];

#ifdef PAD
__attribute__((noinline)) int plug_padding(int x) {
    volatile int a[64];
    for (int i = 0; i < 64; i++) a[i] = x * i;
    return a[x & 63];
}
#endif

__attribute__((noinline)) int PLUG_FN(int count, unsigned long size) {
    int n = 0;
    for (int i = 0; i < count && i < 256; i++) {
        kept[i] = malloc(size);
        if (!kept[i]) abort();
        ((volatile char *)kept[i])[0] = 1;
        n++;
    }
    return n;
}
