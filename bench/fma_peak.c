// The fp32 FMA peak of one core, the ceiling every figure in RESULTS.md is read against:
// 12 independent AVX-512 FMA chains (enough to hide the FMA latency), timed.
//
//   gcc -O2 -mavx512f bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
//
// On the AMD EPYC (Zen 4) of bench/RESULTS.md: 116.9 GFLOP/s, i.e. 32 flops per cycle at
// ~3.6 GHz (Zen 4 runs a 512-bit FMA as two 256-bit halves).
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

int main(void) {
    const long n = 200000000L;
    __m512 acc[12];
    const __m512 m = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
    for (int j = 0; j < 12; j++) acc[j] = _mm512_set1_ps((float)j);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) acc[j] = _mm512_fmadd_ps(acc[j], m, c);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double t = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
    float sum = 0;  // keeps the chains live
    for (int j = 0; j < 12; j++) sum += _mm512_reduce_add_ps(acc[j]);
    printf("%.1f GFLOP/s on one core (checksum %g)\n", n * 12.0 * 32 / t / 1e9, sum);
    return 0;
}
