// Register tiles for the image tower's f32 products, in C, on one core: which MR x NR tile (the
// output block a kernel keeps in registers) gets closest to the FMA peak (bench/fma_peak.c) on
// the tower's shapes at image batch 8 (400 tokens). A and B are packed as tract packs them
// (k-major panels of MR rows and NR columns); tiles run a block of B panels at a time, each
// block against every A panel in turn.
//
//   gcc -O3 -march=x86-64-v4 -mtune=znver3 -mprefer-vector-width=512 bench/tiles.c -o /tmp/tiles && /tmp/tiles
//
// On the Zen 4 of bench/RESULTS.md (row 26), 32x5, tract's pick, is within 2 % of the best
// tile on every shape (107-114 GFLOP/s against the 116.9 peak).
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
// C = A(MxK) * B(KxN). A packed in MR-row panels (k-major: for k, MR floats), B in NR-col panels (for k, NR floats).
#define KERNEL(MR, NR) \
static void ker_##MR##x##NR(int K, const float* a, const float* b, float* c, int ldc) { \
  enum { R = MR/16 }; __m512 acc[R][NR]; \
  for (int i=0;i<R;i++) for (int j=0;j<NR;j++) acc[i][j]=_mm512_setzero_ps(); \
  for (int k=0;k<K;k++) { __m512 av[R]; \
    _Pragma("GCC unroll 8") for (int i=0;i<R;i++) av[i]=_mm512_load_ps(a+16*i); \
    _Pragma("GCC unroll 16") for (int j=0;j<NR;j++) { __m512 bb=_mm512_set1_ps(b[j]); \
      _Pragma("GCC unroll 8") for (int i=0;i<R;i++) acc[i][j]=_mm512_fmadd_ps(av[i],bb,acc[i][j]); } \
    a+=MR; b+=NR; } \
  for (int j=0;j<NR;j++) for (int i=0;i<R;i++) _mm512_storeu_ps(c+j*ldc+16*i, acc[i][j]); }
KERNEL(32,5) KERNEL(32,6) KERNEL(32,12) KERNEL(48,8) KERNEL(64,6) KERNEL(32,8) KERNEL(48,6) KERNEL(16,24)
typedef void (*kf)(int,const float*,const float*,float*,int);
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void run(const char* name, kf f, int MR, int NR, int M, int K, int N, int nblk, int reps) {
  int mp=(M+MR-1)/MR, np=(N+NR-1)/NR;
  float* A=aligned_alloc(64,(size_t)mp*MR*K*4); float* B=aligned_alloc(64,(size_t)np*NR*K*4+64);
  float* C=aligned_alloc(64,(size_t)(np*NR)*(mp*MR)*4);
  for (size_t i=0;i<(size_t)mp*MR*K;i++) A[i]=(i%7)*0.01f; for (size_t i=0;i<(size_t)np*NR*K;i++) B[i]=(i%5)*0.01f;
  double best=1e9;
  for (int r=0;r<reps;r++){ double t0=now();
    for (int nb=0; nb<np; nb+=nblk) for (int im=0; im<mp; im++) for (int in=nb; in<nb+nblk && in<np; in++)
      f(K, A+(size_t)im*MR*K, B+(size_t)in*NR*K, C+(size_t)in*NR*(mp*MR)+im*MR, mp*MR);
    double t=now()-t0; if(t<best)best=t; }
  double fl=2.0*mp*MR*(double)np*NR*K; // padded flops
  double useful=2.0*M*(double)N*K;
  printf("%-6s M=%d K=%d N=%d nblk=%d: %.1f GFLOP/s (useful %.1f)\n",name,M,K,N,nblk,fl/best/1e9,useful/best/1e9);
  free(A);free(B);free(C);
}
int main(int argc,char**argv){
  int shapes[][3]={{3072,768,400},{768,3072,400},{2304,768,400},{768,768,400}};
  for(int s=0;s<4;s++){int M=shapes[s][0],K=shapes[s][1],N=shapes[s][2];
    run("32x5",ker_32x5,32,5,M,K,N,16,5);
    run("32x6",ker_32x6,32,6,M,K,N,16,5);
    run("32x8",ker_32x8,32,8,M,K,N,12,5);
    run("32x12",ker_32x12,32,12,M,K,N,8,5);
    run("48x8",ker_48x8,48,8,M,K,N,12,5);
    run("48x6",ker_48x6,48,6,M,K,N,16,5);
    run("64x6",ker_64x6,64,6,M,K,N,16,5);
    run("16x24",ker_16x24,16,24,M,K,N,4,5);
  }
}
