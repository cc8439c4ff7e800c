/* attrib_main [exit]: leaks through libleak, cycles through libclean, keeps C++ arrays through
 * libcxx, maps directly through libleak; then prints "done" and waits for a line on stdin (or
 * exits at once with "exit"). The figures the tests expect are in tests/attribution.rs. */
#include <string.h>
#include <unistd.h>

void leak_chunks(int count, unsigned long size);
void *leak_map(unsigned long len);
void clean_cycle(int count, unsigned long size);
void cxx_keep(int count, unsigned long size);

int main(int argc, char **argv) {
    char c;
    /* Wait for the go: the tracer attaches first. */
    write(1, "ready\n", 6);
    if (read(0, &c, 1) != 1) return 1;
    leak_chunks(50, 4096);
    clean_cycle(50, 4096);
    cxx_keep(10, 1000);
    leak_map(16 * 4096);
    write(1, "done\n", 5);
    if (argc > 1 && !strcmp(argv[1], "exit")) return 0;
    while (read(0, &c, 1) == 1 && c != '\n') {}
    return 0;
}
