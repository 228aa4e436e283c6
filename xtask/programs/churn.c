/*
 * Benchmark workload: N malloc+free pairs of mixed sizes; prints nanoseconds per pair.
 * Usage: churn N
 */
#include <stdio.h>
#include <stdlib.h>
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
