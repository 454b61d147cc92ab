// The few-row (2-8 or 2-10 rows of x: F::kMaxRows) streaming kernel of linear_avx512.cc, written once for its weight
// formats F (FewRowBf16, FewRowFp8 there: columns per unit, decode, rows per pass). No include guard:
// linear_avx512.cc includes it once per target region (AVX512-BF16; + VBMI for fp8's byte tables),
// each time inside its own namespace, so that every function here is compiled for that region's ISA
// and the format's decode inlines into it.

// The L1 request's distance (0: none, the L2 request only): the GEMV's at 2 rows and at 3-4 rows
// (gemv_near_prefetch_bytes), none at 5-8 either (512 B / 2 KiB there: within noise alone).
template <int T>
constexpr int64_t fewrow_near_prefetch_bytes() {
  return gemv_near_prefetch_bytes<(T <= 2 ? T : 4), uint16_t>();
}

// out[t * ldo + i] = sum_k x[t][k] W[r + i][k], t < T, i < R (x in F's column order).
template <class F, int T, int R>
void fewrow_rows(const uint16_t* xq, int64_t ldx, const F& f, int64_t r, float* out, int64_t ldo) {
  constexpr int64_t es = F::kElemBytes;
  const int64_t K = f.k, row_bytes = K * es;
  const uint8_t* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = reinterpret_cast<const uint8_t*>(f.w + (r + i) * K);
  __m512 acc[T][R];
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < R; ++i) acc[t][i] = _mm512_setzero_ps();
  const auto step = [&](int64_t k, int64_t n) __attribute__((always_inline)) {
    __m512bh wv[R][F::kVecs];
    for (int i = 0; i < R; ++i) f.decode(r + i, k, n, wv[i]);
    for (int t = 0; t < T; ++t)
      for (int v = 0; v < F::kVecs; ++v) {
        const __m512bh xv = (__m512bh)_mm512_load_si512(xq + t * ldx + k + 32 * v);
        for (int i = 0; i < R; ++i) acc[t][i] = _mm512_dpbf16_ps(acc[t][i], xv, wv[i][v]);
      }
  };
  constexpr int64_t near = fewrow_near_prefetch_bytes<T>();
  for (int64_t b0 = 0; b0 < K; b0 += 128) {
    if constexpr (near > 0) prefetch_rows_ahead<3>(wr, row_bytes, b0 * es + near, 128 * es);
    prefetch_rows_ahead<2>(wr, row_bytes, b0 * es + kGemvFarPrefetchBytes, 128 * es);
    const int64_t bend = K - b0 < 128 ? K : b0 + 128;
    int64_t k = b0;
#pragma GCC unroll 4
    for (; k + F::kCols <= bend; k += F::kCols) step(k, F::kCols);
    if (k < bend) step(k, bend - k);
  }
  const __m512 z = _mm512_setzero_ps();
  if constexpr (R == 1) {  // x rows in the hsum4 slots
    for (int t0 = 0; t0 < T; t0 += 4) {
      alignas(16) float s[4];
      _mm_store_ps(s, simd::Avx512::hsum4(acc[t0][0], t0 + 1 < T ? acc[t0 + 1][0] : z, t0 + 2 < T ? acc[t0 + 2][0] : z,
                                          t0 + 3 < T ? acc[t0 + 3][0] : z));
      for (int j = 0; j < 4 && t0 + j < T; ++j) out[(t0 + j) * ldo] = s[j];
    }
  } else {  // weight rows in the slots
    static_assert(R <= 4, "fewrow_rows: one hsum4 per x row");
    for (int t = 0; t < T; ++t) {
      alignas(16) float s[4];
      // (acc[t][R > 2 ? 2 : 0]: in bounds for every R, used only where R > 2)
      _mm_store_ps(
          s, simd::Avx512::hsum4(acc[t][0], acc[t][1], R > 2 ? acc[t][R > 2 ? 2 : 0] : z, R > 3 ? acc[t][R > 3 ? 3 : 0] : z));
      for (int i = 0; i < R; ++i) out[t * ldo + i] = s[i];
    }
  }
}

// y = x W^T over row groups that never cross an F::kScaleRows block; x_block(g0, &have) gives x in
// F's order for the block of row g0 (have: the block the thread's copy holds, -1 at first).
template <class F, int T, class XBlock>
void fewrow_t(const F& f, const WeightRef& w, int64_t ldx, void* y, DType yt, XBlock&& x_block) {
  constexpr int R = F::template kR<T>;
  const bool one_row = T <= F::kOneRowMaxRows && w.k <= F::kOneRowMaxCols;  // (F's comment)
  const int64_t n = w.n;
  gemv_split<R>(w, F::kElemBytes, [&](int64_t n0, int64_t n1) {
    float part[T][kGemvGroupRows];
    int64_t have = -1;
    for (int64_t g0 = n0, g1; g0 < n1; g0 = g1) {
      const int64_t block_end = (g0 / F::kScaleRows + 1) * F::kScaleRows;
      g1 = std::min(std::min(n1, g0 + kGemvGroupRows), block_end);
      const uint16_t* xq = x_block(g0, &have);
      int64_t r = g0;
      if (!one_row)
        for (; r + R <= g1; r += R) fewrow_rows<F, T, R>(xq, ldx, f, r, &part[0][r - g0], kGemvGroupRows);
      for (; r < g1; ++r) fewrow_rows<F, T, 1>(xq, ldx, f, r, &part[0][r - g0], kGemvGroupRows);
      for (int t = 0; t < T; ++t) {
        if (yt == DType::F32)
          std::memcpy(static_cast<float*>(y) + t * n + g0, part[t], (g1 - g0) * sizeof(float));
        else
          for (int64_t j = g0; j < g1; ++j) store_y(y, yt, t * n + j, part[t][j - g0]);
      }
    }
  });
}

template <class F, class XBlock>
void fewrow_dispatch(int64_t t, const F& f, const WeightRef& w, int64_t ldx, void* y, DType yt, XBlock&& x_block) {
  switch (t) {
    case 2: fewrow_t<F, 2>(f, w, ldx, y, yt, x_block); break;
    case 3: fewrow_t<F, 3>(f, w, ldx, y, yt, x_block); break;
    case 4: fewrow_t<F, 4>(f, w, ldx, y, yt, x_block); break;
    case 5: fewrow_t<F, 5>(f, w, ldx, y, yt, x_block); break;
    case 6: fewrow_t<F, 6>(f, w, ldx, y, yt, x_block); break;
    case 7: fewrow_t<F, 7>(f, w, ldx, y, yt, x_block); break;
    case 8: fewrow_t<F, 8>(f, w, ldx, y, yt, x_block); break;
    default:
      static_assert(F::kMaxRows == 8 || F::kMaxRows == 10, "fewrow_dispatch: 2-8 or 2-10 rows");
      if constexpr (F::kMaxRows == 10) {
        if (t == 9)
          fewrow_t<F, 9>(f, w, ldx, y, yt, x_block);
        else
          fewrow_t<F, 10>(f, w, ldx, y, yt, x_block);
      }
  }
}
