// The INT8 Split-Attention weighted sum's arithmetic, shared by both ways the library registers
// gluon_resnest_sa_sum_u8 (split_attention.cc: MXNet's operator-library interface;
// split_attention_onednn.cc: MXNet's own operator registry, reading oneDNN layouts in place).
//
// For R quantized splits x_r (uint8) and the attention a (float32, N x R*C, radix-major):
//
//     y = u8(sum_r w[n, r, c] * x_r),   w[n, r, c] = a[n, r*C + c] * scale_r,
//
// rounded half up and saturated at 255, optionally followed by the 3x3, stride 2, padding 1
// average pooling (padding counted, divisor 9) of the requantized sum, as MXNet's quantized
// pooling computes it. Both memory layouts give the same bits: the products and sums are formed
// in the same order (build with -ffp-contract=off).
#ifndef GLUON_RESNEST_SPLIT_ATTENTION_U8_H_
#define GLUON_RESNEST_SPLIT_ATTENTION_U8_H_

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

// The elementwise loops are compiled for AVX-512, AVX2 and the baseline; the loader picks one.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GR_MULTIVERSION __attribute__((target_clones("arch=skylake-avx512", "avx2", "default")))
#else
#define GR_MULTIVERSION
#endif

namespace gluon_resnest {

constexpr int kMaxRadix = 64;

struct SaSumU8 {
  int radix = 0;
  const uint8_t* x[kMaxRadix] = {};
  const float* a = nullptr;   // N x R*C
  float scale[kMaxRadix] = {};  // dequantization of split r and requantization of the sum
  int64_t N = 0, C = 0, H = 0, W = 0, Ho = 0, Wo = 0;
  bool pool = false;
  uint8_t* y = nullptr;
};

namespace u8 {

inline uint8_t to_u8(float v) {  // v >= 0: round half up, saturate at 255
  v += 0.5f;
  v = v < 255.f ? v : 255.f;
  return static_cast<uint8_t>(static_cast<int>(v));
}

// ---- N x C x H x W: one plane (n, c) at a time ----

GR_MULTIVERSION
static void sum2(const uint8_t* x0, const uint8_t* x1, float s0, float s1, uint8_t* y,
                 int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = to_u8(s0 * x0[i] + s1 * x1[i]);
}

GR_MULTIVERSION
static void axpy(const uint8_t* x, float s, float* acc, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += s * x[i];
}

GR_MULTIVERSION
static void store(const float* acc, uint8_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = to_u8(acc[i]);
}

// 3x3/2 average of a uint8 plane. col: W ints of scratch.
static void pool_plane(const uint8_t* in, int64_t H, int64_t W, uint8_t* out, int64_t Ho,
                       int64_t Wo, int32_t* col) {
  for (int64_t oh = 0; oh < Ho; ++oh) {
    const int64_t h = 2 * oh;  // rows h - 1, h, h + 1
    const uint8_t* mid = in + h * W;
    const uint8_t* up = h > 0 ? mid - W : nullptr;
    const uint8_t* down = h + 1 < H ? mid + W : nullptr;
    for (int64_t w = 0; w < W; ++w) col[w] = mid[w];
    if (up) for (int64_t w = 0; w < W; ++w) col[w] += up[w];
    if (down) for (int64_t w = 0; w < W; ++w) col[w] += down[w];
    for (int64_t ow = 0; ow < Wo; ++ow) {
      const int64_t w = 2 * ow;
      int32_t sum = col[w];
      if (w > 0) sum += col[w - 1];
      if (w + 1 < W) sum += col[w + 1];
      out[oh * Wo + ow] = to_u8(static_cast<float>(sum) * (1.f / 9.f));
    }
  }
}

// ---- N x H x W x C: one row of W pixels at a time, channels innermost ----

GR_MULTIVERSION
static void row_sum2(const uint8_t* x0, const uint8_t* x1, const float* w0, const float* w1,
                     int64_t C, int64_t W, uint8_t* y) {
  for (int64_t p = 0; p < W; ++p, x0 += C, x1 += C, y += C)
    for (int64_t c = 0; c < C; ++c) y[c] = to_u8(w0[c] * x0[c] + w1[c] * x1[c]);
}

GR_MULTIVERSION
static void row_axpy(const uint8_t* x, const float* w, int64_t C, int64_t W, float* acc) {
  for (int64_t p = 0; p < W; ++p, x += C, acc += C)
    for (int64_t c = 0; c < C; ++c) acc[c] += w[c] * x[c];
}

// One output row of the 3x3/2 pooling from input rows up, mid, down (up/down may be null at
// the border). col: W*C ints of scratch.
GR_MULTIVERSION
static void row_pool(const uint8_t* up, const uint8_t* mid, const uint8_t* down, int64_t C,
                     int64_t W, int64_t Wo, int32_t* col, uint8_t* y) {
  const int64_t n = W * C;
  for (int64_t i = 0; i < n; ++i) col[i] = mid[i];
  if (up) for (int64_t i = 0; i < n; ++i) col[i] += up[i];
  if (down) for (int64_t i = 0; i < n; ++i) col[i] += down[i];
  for (int64_t ow = 0; ow < Wo; ++ow, y += C) {
    const int64_t w = 2 * ow;
    const int32_t* centre = col + w * C;
    const int32_t* left = w > 0 ? centre - C : nullptr;
    const int32_t* right = w + 1 < W ? centre + C : nullptr;
    for (int64_t c = 0; c < C; ++c) {
      int32_t sum = centre[c];
      if (left) sum += left[c];
      if (right) sum += right[c];
      y[c] = to_u8(static_cast<float>(sum) * (1.f / 9.f));
    }
  }
}

}  // namespace u8

// y (N x C x Ho x Wo) from splits x_r (N x C x H x W). Kept apart from sa_sum_u8_nhwc: with
// one weight per plane its loops run over the pixels; sa_sum_u8_nhwc run on this layout as
// images of one channel runs its channel loop once per pixel, 3-14 times slower.
inline void sa_sum_u8_nchw(const SaSumU8& p) {
  const int64_t HW = p.H * p.W;
#pragma omp parallel
  {
    // Per thread: the float sum of one plane (radix > 2), its requantization (pool) and the
    // pooling's column sums.
    std::vector<float> acc(p.radix > 2 ? HW : 0);
    std::vector<uint8_t> plane(p.pool ? HW : 0);
    std::vector<int32_t> col(p.pool ? p.W : 0);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < p.N * p.C; ++nc) {
      const int64_t n = nc / p.C, c = nc % p.C;
      const float* an = p.a + n * p.radix * p.C + c;
      // MXNet's graph quantizes before it pools: the sum is requantized, then pooled.
      uint8_t* sum = p.pool ? plane.data() : p.y + nc * HW;
      if (p.radix == 2) {
        u8::sum2(p.x[0] + nc * HW, p.x[1] + nc * HW, an[0] * p.scale[0], an[p.C] * p.scale[1],
                 sum, HW);
      } else {
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int r = 0; r < p.radix; ++r)
          u8::axpy(p.x[r] + nc * HW, an[r * p.C] * p.scale[r], acc.data(), HW);
        u8::store(acc.data(), sum, HW);
      }
      if (p.pool) u8::pool_plane(plane.data(), p.H, p.W, p.y + nc * p.Ho * p.Wo, p.Ho, p.Wo,
                                 col.data());
    }
  }
}

// y (N x Ho x Wo x C) from splits x_r (N x H x W x C). With pooling the requantized sum goes
// through `plane` (N*H*W*C bytes, the caller's scratch).
inline void sa_sum_u8_nhwc(const SaSumU8& p, uint8_t* plane) {
  const int64_t R = p.radix, C = p.C, W = p.W, H = p.H, row = W * C;
  std::vector<float> w(p.N * R * C);  // w[n, r, c] = a[n, r*C + c] * scale_r
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c)
        w[(n * R + r) * C + c] = p.a[(n * R + r) * C + c] * p.scale[r];
  uint8_t* sum = p.pool ? plane : p.y;
#pragma omp parallel
  {
    std::vector<float> acc(R > 2 ? row : 0);
    std::vector<int32_t> col(p.pool ? row : 0);
#pragma omp for schedule(static)
    for (int64_t nh = 0; nh < p.N * H; ++nh) {
      const float* wn = w.data() + nh / H * R * C;
      const int64_t at = nh * row;
      if (R == 2) {
        u8::row_sum2(p.x[0] + at, p.x[1] + at, wn, wn + C, C, W, sum + at);
      } else {
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t r = 0; r < R; ++r) u8::row_axpy(p.x[r] + at, wn + r * C, C, W, acc.data());
        u8::store(acc.data(), sum + at, row);
      }
    }
    if (p.pool) {
#pragma omp for schedule(static)
      for (int64_t no = 0; no < p.N * p.Ho; ++no) {
        const int64_t n = no / p.Ho, h = 2 * (no % p.Ho);
        const uint8_t* mid = plane + (n * H + h) * row;
        u8::row_pool(h > 0 ? mid - row : nullptr, mid, h + 1 < H ? mid + row : nullptr, C, W,
                     p.Wo, col.data(), p.y + no * p.Wo * C);
      }
    }
  }
}

// GLUON_RESNEST_NATIVE_SELFTEST_PERTURB=NAME makes the operator NAME (its backward operator is
// _backward_NAME) add one (128 to a uint8) to the first element of its first output, and
// NAME:crash makes it abort: the package's self-check (selfcheck.py) must then reject it.
// 0: no fault, 1: perturb, 2: crash.
inline int selftest_fault(const char* op) {
  static const char* const v = std::getenv("GLUON_RESNEST_NATIVE_SELFTEST_PERTURB");
  if (v == nullptr) return 0;
  const size_t n = std::strlen(op);
  if (std::strncmp(v, op, n) != 0) return 0;
  if (v[n] == '\0') return 1;
  return std::strcmp(v + n, ":crash") == 0 ? 2 : 0;
}

}  // namespace gluon_resnest

#endif  // GLUON_RESNEST_SPLIT_ATTENTION_U8_H_
