/* Grows steadily: grow_leak() keeps 1 MiB (touched) every 50 ms, up to 512 MiB, until a line
 * arrives on stdin. Used by the drill-down test. */
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <unistd.h>

static void *kept[512];

__attribute__((noinline)) void *grow_leak(unsigned long size) {
    void *p = malloc(size);
    if (p) memset(p, 7, size);
    return p;
}

int main(void) {
    write(1, "ready\n", 6);
    for (int i = 0; i < 512; i++) {
        struct pollfd in = { .fd = 0, .events = POLLIN };
        if (poll(&in, 1, 50) > 0) break;
        kept[i] = grow_leak(1 << 20);
    }
    return 0;
}
