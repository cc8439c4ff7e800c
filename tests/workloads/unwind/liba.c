/* lib_a_fn keeps `count` blocks of `size` bytes, lib_a_other as many again from another site;
 * both through the wrapper in libwrap. */
void *uw_xalloc(unsigned long size);

static void *kept[1024];
static int used;

__attribute__((noinline)) int lib_a_fn(int count, unsigned long size) {
    int n = 0;
    for (int i = 0; i < count && used < 1024; i++) {
        kept[used++] = uw_xalloc(size);
        n++;
    }
    return n;
}

__attribute__((noinline)) int lib_a_other(int count, unsigned long size) {
    int n = 0;
    for (int i = 0; i < count && used < 1024; i++) {
        kept[used++] = uw_xalloc(size + (unsigned long)i % 1);
        n += 2;
    }
    return n / 2;
}
