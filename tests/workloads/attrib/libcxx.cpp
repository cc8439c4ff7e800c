// Allocates through C++ operator new: memory belongs to the caller, not libstdc++.
#include <vector>

static std::vector<char *> kept;

extern "C" __attribute__((noinline)) void cxx_keep(int count, unsigned long size) {
    kept.reserve(4096);
    for (int i = 0; i < count; i++) kept.push_back(new char[size]);
}
