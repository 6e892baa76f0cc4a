// The bf16 dot-product peak of one core (AVX512-BF16 `vdpbf16ps`: 16 lanes of two bf16 products
// added to an f32 accumulator), next to bench/fma_peak.c's fp32 FMA peak: 12 independent chains.
//
//   gcc -O2 -mavx512f -mavx512bf16 bench/bf16_peak.c -o /tmp/bf16_peak && /tmp/bf16_peak
//
// On the AMD EPYC (Zen 4) of bench/RESULTS.md: 234.1 GFLOP/s, twice the fp32 FMA peak (row 28).
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
int main(void) {
    const long n = 200000000L;
    __m512 acc[12];
    __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x33d633d6);
    for (int j = 0; j < 12; j++) acc[j] = _mm512_set1_ps((float)j);
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double t = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    float s = 0; for (int j = 0; j < 12; j++) s += _mm512_reduce_add_ps(acc[j]);
    printf("%.1f GFLOP/s bf16 dot (2 flops per MAC) on one core (checksum %g)\n", n * 12.0 * 64 / t / 1e9, s);
}
