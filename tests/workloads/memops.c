/* A workload driven line by line on stdin, so that tests can check figures between steps.
 * It never uses stdio (which allocates): commands are read with read(2), replies written with
 * write(2). Each command is answered with "ok <value>\n" once it is done; "ready\n" is printed at
 * start-up. Slots hold pointers between commands.
 *
 *   mallocn <slot> <count> <size>     count mallocs of size into slots slot..slot+count-1
 *   freen <slot> <count>              free those slots
 *   calloc <slot> <nmemb> <size>      ok 1 on success, ok 0 when calloc returned NULL
 *   realloc <slot> <size>             p[slot] = realloc(p[slot], size); ok <moved: 0/1>
 *   posix_memalign <slot> <align> <size>
 *   aligned_alloc <slot> <align> <size>
 *   memalign <slot> <align> <size>
 *   mmap <slot> <len> anon|file       file maps this program's own executable, read-only
 *   munmap <slot> <offset> <len>
 *   mremap <slot> <old_len> <new_len> MREMAP_MAYMOVE; the slot follows the mapping
 *   sbrk <delta>                      ok <new break>
 *   exit <code>
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void *slots[65536];
static char line[512];
static const char *self_path;

static void reply(unsigned long value) {
    char out[64];
    char digits[32];
    int n = 0, len = 0;
    do { digits[n++] = '0' + value % 10; value /= 10; } while (value);
    memcpy(out, "ok ", 3); len = 3;
    while (n) out[len++] = digits[--n];
    out[len++] = '\n';
    write(1, out, len);
}

static int read_line(void) {
    int len = 0;
    while (len < (int)sizeof(line) - 1) {
        char c;
        if (read(0, &c, 1) != 1) return -1;
        if (c == '\n') break;
        line[len++] = c;
    }
    line[len] = 0;
    return len;
}

static unsigned long arg(char **cursor) {
    return strtoul(*cursor, cursor, 0);
}

int main(int argc, char **argv) {
    (void)argc;
    self_path = argv[0];
    write(1, "ready\n", 6);
    while (read_line() >= 0) {
        char *cmd = line;
        char *rest = strchr(line, ' ');
        if (rest) *rest++ = 0; else rest = line + strlen(line);
        char *c = rest;
        if (!strcmp(cmd, "mallocn")) {
            unsigned long slot = arg(&c), count = arg(&c), size = arg(&c);
            for (unsigned long i = 0; i < count; i++) slots[slot + i] = malloc(size);
            reply(count);
        } else if (!strcmp(cmd, "freen")) {
            unsigned long slot = arg(&c), count = arg(&c);
            for (unsigned long i = 0; i < count; i++) { free(slots[slot + i]); slots[slot + i] = 0; }
            reply(count);
        } else if (!strcmp(cmd, "calloc")) {
            unsigned long slot = arg(&c), n = arg(&c), size = arg(&c);
            slots[slot] = calloc(n, size);
            reply(slots[slot] != 0);
        } else if (!strcmp(cmd, "realloc")) {
            unsigned long slot = arg(&c), size = arg(&c);
            void *old = slots[slot];
            slots[slot] = realloc(old, size);
            reply(slots[slot] != old);
        } else if (!strcmp(cmd, "posix_memalign")) {
            unsigned long slot = arg(&c), align = arg(&c), size = arg(&c);
            reply(posix_memalign(&slots[slot], align, size) == 0);
        } else if (!strcmp(cmd, "aligned_alloc")) {
            unsigned long slot = arg(&c), align = arg(&c), size = arg(&c);
            slots[slot] = aligned_alloc(align, size);
            reply(slots[slot] != 0);
        } else if (!strcmp(cmd, "memalign")) {
            unsigned long slot = arg(&c), align = arg(&c), size = arg(&c);
            slots[slot] = memalign(align, size);
            reply(slots[slot] != 0);
        } else if (!strcmp(cmd, "mmap")) {
            unsigned long slot = arg(&c), len = arg(&c);
            while (*c == ' ') c++;
            void *p;
            if (!strcmp(c, "file")) {
                int fd = open(self_path, O_RDONLY);
                p = mmap(0, len, PROT_READ, MAP_PRIVATE, fd, 0);
                close(fd);
            } else {
                p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (p != MAP_FAILED) memset(p, 1, len);
            }
            slots[slot] = p == MAP_FAILED ? 0 : p;
            reply(p != MAP_FAILED);
        } else if (!strcmp(cmd, "munmap")) {
            unsigned long slot = arg(&c), offset = arg(&c), len = arg(&c);
            reply(munmap((char *)slots[slot] + offset, len) == 0);
        } else if (!strcmp(cmd, "mremap")) {
            unsigned long slot = arg(&c), old_len = arg(&c), new_len = arg(&c);
            void *p = mremap(slots[slot], old_len, new_len, MREMAP_MAYMOVE);
            if (p != MAP_FAILED) slots[slot] = p;
            reply(p != MAP_FAILED);
        } else if (!strcmp(cmd, "sbrk")) {
            long delta = strtol(c, &c, 0);
            sbrk(delta);
            reply((unsigned long)sbrk(0));
        } else if (!strcmp(cmd, "exit")) {
            _exit((int)arg(&c));
        } else {
            write(1, "error\n", 6);
        }
    }
    return 0;
}
