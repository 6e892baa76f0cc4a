// The int8 dot-product peak of one core (AVX512-VNNI `vpdpbusd`: 16 lanes of four u8 x s8
// products added to an i32 accumulator), next to bench/fma_peak.c's fp32 FMA peak: 12
// independent chains.
//
//   gcc -O2 -mavx512f -mavx512vnni bench/vnni_peak.c -o /tmp/vnni_peak && /tmp/vnni_peak
//
// On the Intel Xeon (family 6 model 207) of bench/RESULTS.md: 538.5 G operations/s against
// fma_peak's 172.4 GFLOP/s, 3.1x (row 62).
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
int main(void) {
    const long n = 200000000L;
    __m512i acc[12];
    __m512i a = _mm512_set1_epi32(0x01020304), b = _mm512_set1_epi32(0x01010101);
    for (int j = 0; j < 12; j++) acc[j] = _mm512_set1_epi32(j);
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) acc[j] = _mm512_dpbusd_epi32(acc[j], a, b);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double t = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    long s = 0; for (int j = 0; j < 12; j++) s += _mm512_reduce_add_epi32(acc[j]);
    printf("%.1f GOP/s int8 dot (2 ops per MAC) on one core (checksum %ld)\n", n * 12.0 * 128 / t / 1e9, s);
}
