/* Process churn: COUNT times, fork, exec /bin/true in the child, wait for it.
 *
 * usage: spawn COUNT */
#include "common.h"

#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long count = bench_arg(argc, argv, 1, 500);
    bench_gate();
    double start = bench_now();
    for (long i = 0; i < count; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            execl("/bin/true", "true", (char *)NULL);
            _exit(127);
        }
        int status = 0;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "spawn: child %ld failed\n", i);
            return 1;
        }
    }
    bench_report(bench_now() - start, 0);
    return 0;
}
