/* symbols_main: reads one-letter commands on stdin and answers "ok" to each:
 *   k: sym_keep(25, 6000) (libsym.so)
 * The figures the tests expect are in tests/unwind.rs. */
#include <unistd.h>

int sym_keep(int count, unsigned long size);

int main(void) {
    char c;
    int total = 0;
    write(1, "ready\n", 6);
    while (read(0, &c, 1) == 1) {
        switch (c) {
        case 'k': total += sym_keep(25, 6000); break;
        case '\n': continue;
        default: return 2;
        }
        write(1, "ok\n", 3);
    }
    return total > 0 ? 0 : 1;
}
