// OpenBLAS sgemm reference for bench/cpu-linear.mjs: C[m, n] = A[m, k] @ B[n, k]^T (the linear
// layer's layout), f32. Usage: sgemm_ref m n k iters. Prints one JSON line with the median GFLOP/s.
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

char* openblas_get_corename(void);
int openblas_get_num_threads(void);

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s m n k iters\n", argv[0]);
    return 2;
  }
  int m = atoi(argv[1]), n = atoi(argv[2]), k = atoi(argv[3]), iters = atoi(argv[4]);
  float* a = malloc(sizeof(float) * (size_t)m * k);
  float* b = malloc(sizeof(float) * (size_t)n * k);
  float* c = malloc(sizeof(float) * (size_t)m * n);
  srand(1);
  for (size_t i = 0; i < (size_t)m * k; ++i) a[i] = (float)rand() / RAND_MAX - 0.5f;
  for (size_t i = 0; i < (size_t)n * k; ++i) b[i] = (float)rand() / RAND_MAX - 0.5f;
  for (int i = 0; i < 3; ++i)  // warm-up
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
  double* g = malloc(sizeof(double) * iters);
  for (int i = 0; i < iters; ++i) {
    double t0 = now_s();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
    g[i] = 2.0 * m * n * k / (now_s() - t0) / 1e9;
  }
  qsort(g, iters, sizeof(double), cmp);
  double med = iters % 2 ? g[iters / 2] : 0.5 * (g[iters / 2 - 1] + g[iters / 2]);
  printf("{\"gflops\": %.3f, \"core\": \"%s\", \"threads\": %d, \"check\": %g}\n", med, openblas_get_corename(),
         openblas_get_num_threads(), (double)c[0]);
  return 0;
}
