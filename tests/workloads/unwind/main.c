/* unwind_main [plugin1 plugin2]: reads one-letter commands on stdin and answers "ok" to each:
 *   a: lib_a_fn(40, 5000)   b: lib_a_other(30, 3000)
 *   1: dlopen plugin1 and call its plug_one(20, 7000)   c: dlclose it
 *   2: dlopen plugin2 and call its plug_two(10, 9000)
 * Built with -O2 -fomit-frame-pointer (CFI only) and without unwind tables but with frame
 * pointers (the fallback). The figures the tests expect are in tests/unwind.rs. */
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

int lib_a_fn(int count, unsigned long size);
int lib_a_other(int count, unsigned long size);

static void *plugin;

__attribute__((noinline)) static int call_plugin(const char *path, const char *fn, int count,
                                                 unsigned long size) {
    plugin = dlopen(path, RTLD_NOW);
    if (!plugin) return -1;
    int (*f)(int, unsigned long) = (int (*)(int, unsigned long))dlsym(plugin, fn);
    if (!f) return -1;
    /* Stop here until the tracer has seen the new code. */
    write(1, "loaded\n", 7);
    char c;
    if (read(0, &c, 1) != 1) return -1;
    return f(count, size);
}

int main(int argc, char **argv) {
    char c;
    int total = 0;
    write(1, "ready\n", 6);
    while (read(0, &c, 1) == 1) {
        switch (c) {
        case 'a': total += lib_a_fn(40, 5000); break;
        case 'b': total += lib_a_other(30, 3000); break;
        case '1': total += argc > 1 ? call_plugin(argv[1], "plug_one", 20, 7000) : -1; break;
        case '2': total += argc > 2 ? call_plugin(argv[2], "plug_two", 10, 9000) : -1; break;
        case 'c': if (plugin) dlclose(plugin); plugin = 0; break;
        case '\n': continue;
        default: return 2;
        }
        write(1, "ok\n", 3);
    }
    return total > 0 ? 0 : 1;
}
