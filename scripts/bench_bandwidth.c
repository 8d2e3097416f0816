/* Streaming-read memory bandwidth: sum a large array with T OpenMP threads, best of R runs.
 *
 *   gcc -O3 -march=native -fopenmp scripts/bench_bandwidth.c -o bw && ./bw THREADS [MIB] [RUNS]
 *
 * Prints one line: "<GB/s> <threads> <MiB>" (GB = 1e9 bytes). Default 2048 MiB, 3 runs.
 * The array is first written by the same threads and schedule (first touch), so on a NUMA box
 * each thread reads its own pages. A decode step of a GPT-2 streams every weight once, so this
 * read rate is the floor for seconds per token: weight bytes / bandwidth.
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    long mib = argc > 2 ? atol(argv[2]) : 2048;
    int runs = argc > 3 ? atoi(argv[3]) : 3;
    if (threads < 1 || mib < 1 || runs < 1) {
        fprintf(stderr, "usage: %s THREADS [MIB] [RUNS]\n", argv[0]);
        return 2;
    }
    size_t n = (size_t)mib * 1024 * 1024 / sizeof(uint64_t);
    uint64_t *a = malloc(n * sizeof(uint64_t));
    if (!a) {
        fprintf(stderr, "error: cannot allocate %ld MiB\n", mib);
        return 2;
    }
    omp_set_num_threads(threads);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = i;
    double best = 1e30;
    uint64_t keep = 0;
    for (int r = 0; r < runs; r++) {
        uint64_t s = 0;
        double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static) reduction(+ : s)
        for (size_t i = 0; i < n; i++) s += a[i];
        double t = omp_get_wtime() - t0;
        keep ^= s; /* the sum is used, so the loop is not optimised away */
        if (t < best) best = t;
    }
    printf("%.2f %d %ld\n", (double)(n * sizeof(uint64_t)) / best / 1e9, threads, mib);
    fprintf(stderr, "checksum %llu\n", (unsigned long long)keep);
    free(a);
    return 0;
}
