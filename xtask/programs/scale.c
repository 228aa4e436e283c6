/*
 * Benchmark workload for scale: N_STACKS distinct allocation stacks (14-deep paths through a
 * and b, chosen by the bits of the stack's number), PER_STACK blocks of 16 bytes at each,
 * never freed. Prints "done" and exits.
 * Usage: scale N_STACKS PER_STACK
 */
#include <stdio.h>
#include <stdlib.h>
static void *volatile sink;
__attribute__((noinline)) void alloc_at(long n) { for (long i = 0; i < n; i++) sink = malloc(16); }
__attribute__((noinline)) void a(int bits, int depth, long n);
__attribute__((noinline)) void b(int bits, int depth, long n);
__attribute__((noinline)) void a(int bits, int depth, long n) {
    if (depth == 0) { alloc_at(n); return; }
    if (bits & 1) b(bits >> 1, depth - 1, n); else a(bits >> 1, depth - 1, n);
    sink = 0;
}
__attribute__((noinline)) void b(int bits, int depth, long n) {
    if (depth == 0) { alloc_at(n); return; }
    if (bits & 1) b(bits >> 1, depth - 1, n); else a(bits >> 1, depth - 1, n);
    sink = 0;
}
int main(int argc, char **argv) {
    int stacks = atoi(argv[1]);
    long per = atol(argv[2]);
    for (int i = 0; i < stacks; i++) a(i, 14, per);
    printf("done\n");
    return 0;
}
