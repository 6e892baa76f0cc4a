// How steady this machine's cores are: the spread a computation of fixed work cannot beat here.
// A register-only loop (AVX-512 FMA chains: no memory traffic, no system calls, no allocation)
// is sized to take about TARGET_MS, then timed REPS times on each of THREADS threads at once.
// Every repetition does the same work, so any spread in its time comes from outside the
// program: the hypervisor, other tenants, frequency changes. bench/run.sh runs it with the
// length of one image inference and 2 threads (a lone image's run uses both cores), and
// bench/report.py sets the p99 of a lone image against it.
//
//   gcc -O2 -mavx512f -pthread bench/jitter.c -o /tmp/jitter && /tmp/jitter 40 300 2
//
// Prints one JSON object: the milliseconds at the median, p90, p95 and p99 over all threads'
// repetitions, and p99 / median.
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long iters;
static int reps;
static double *samples;  // reps per thread, thread after thread

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// `n` rounds of 8 independent FMA chains; returns a value that depends on all of them.
static float work(long n) {
    __m512 acc[8];
    const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
    for (int j = 0; j < 8; j++) acc[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < n; i++) {
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) acc[j] = _mm512_fmadd_ps(acc[j], m, c);
    }
    float sum = 0;
    for (int j = 0; j < 8; j++) sum += _mm512_reduce_add_ps(acc[j]);
    return sum;
}

static volatile float sink;

static void *timed(void *arg) {
    double *out = arg;
    for (int r = 0; r < reps; r++) {
        double t = now();
        sink = work(iters);
        out[r] = (now() - t) * 1e3;
    }
    return NULL;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    double target_ms = argc > 1 ? atof(argv[1]) : 40;
    reps = argc > 2 ? atoi(argv[2]) : 300;
    int threads = argc > 3 ? atoi(argv[3]) : 1;
    if (target_ms <= 0 || reps < 10 || threads < 1 || threads > 64) {
        fprintf(stderr, "usage: %s [TARGET_MS > 0] [REPS >= 10] [THREADS 1-64]\n", argv[0]);
        return 2;
    }
    // Size the loop: the fastest of a few short calibration runs, scaled to the target.
    long probe = 1000000;
    double best = 1e9;
    for (int i = 0; i < 5; i++) {
        double t = now();
        sink = work(probe);
        double dt = (now() - t) * 1e3;
        if (dt < best) best = dt;
    }
    iters = (long)(probe * target_ms / best);
    samples = calloc((size_t)reps * threads, sizeof(double));
    pthread_t ids[64];
    for (int i = 0; i < threads; i++) pthread_create(&ids[i], NULL, timed, samples + (size_t)i * reps);
    for (int i = 0; i < threads; i++) pthread_join(ids[i], NULL);
    int n = reps * threads;
    qsort(samples, n, sizeof(double), by_value);
    double p50 = samples[n / 2], p90 = samples[n * 90 / 100], p95 = samples[n * 95 / 100],
           p99 = samples[n * 99 / 100];
    printf("{\"target_ms\": %.1f, \"reps\": %d, \"threads\": %d, \"median_ms\": %.2f, \"p90_ms\": %.2f, "
           "\"p95_ms\": %.2f, \"p99_ms\": %.2f, \"p99_over_median\": %.3f}\n",
           target_ms, reps, threads, p50, p90, p95, p99, p99 / p50);
    return 0;
}
