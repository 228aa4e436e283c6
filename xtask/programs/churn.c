/*
 * Benchmark workload: N malloc+free pairs of mixed sizes; prints nanoseconds per pair.
 * Usage: churn N [wait]
 * With "wait" it prints "ready" and starts the loop when a line arrives on stdin (a tracer
 * that attaches to a running pid has attached by then).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const size_t sizes[8] = {16, 24, 48, 64, 128, 256, 1024, 4000};

__attribute__((noinline)) static void *work(size_t size) {
    void *p = malloc(size);
    /* Touch the block so the pair cannot be optimized away. */
    ((volatile char *)p)[0] = 1;
    return p;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    if (argc > 2 && strcmp(argv[2], "wait") == 0) {
        char line[16];
        printf("ready\n");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin)) {
            return 1;
        }
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        free(work(sizes[i & 7]));
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
    printf("%.1f ns per malloc+free pair (%ld pairs)\n", ns / (double)n, n);
    return 0;
}
