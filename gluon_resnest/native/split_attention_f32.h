// The float32 Split-Attention kernels shared by both libraries (split_attention.cc through
// MXNet's operator-library interface, split_attention_onednn.cc in MXNet's registry).
//
// For R splits of C channels each, radix-major along the channels:
//
//     sum: y[n, c] = sum_r a[n, r*C + c] * x[n, r*C + c], optionally followed by the 3x3,
//          stride 2, padding 1 average pooling (padding counted, divisor 9);
//     gap: g[n, c] = mean over the feature map of sum_r x[n, r*C + c].
#ifndef GLUON_RESNEST_SPLIT_ATTENTION_F32_H_
#define GLUON_RESNEST_SPLIT_ATTENTION_F32_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "split_attention_u8.h"  // GR_MULTIVERSION

namespace gluon_resnest {
namespace f32 {

GR_MULTIVERSION
static void axpy(const float* x, float s, float* acc, int64_t n, bool first) {
  if (first) {
    for (int64_t i = 0; i < n; ++i) acc[i] = s * x[i];
  } else {
    for (int64_t i = 0; i < n; ++i) acc[i] += s * x[i];
  }
}

GR_MULTIVERSION
static double sum(const float* x, int64_t n) {
  float part[16] = {0.f};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) part[j] += x[i + j];
  double total = 0.0;
  for (int j = 0; j < 16; ++j) total += part[j];
  for (; i < n; ++i) total += x[i];
  return total;
}

// 3x3 average, stride 2, padding 1, divisor 9, of one H x W plane; col: W floats of scratch.
static void avg_pool_3s2(const float* in, int64_t H, int64_t W, float* out, int64_t Ho,
                         int64_t Wo, float* col) {
  for (int64_t oh = 0; oh < Ho; ++oh) {
    const int64_t h = 2 * oh;
    const float* mid = in + h * W;
    for (int64_t w = 0; w < W; ++w) col[w] = mid[w];
    if (h > 0) for (int64_t w = 0; w < W; ++w) col[w] += mid[w - W];
    if (h + 1 < H) for (int64_t w = 0; w < W; ++w) col[w] += mid[w + W];
    for (int64_t ow = 0; ow < Wo; ++ow) {
      const int64_t w = 2 * ow;
      float sum = col[w];
      if (w > 0) sum += col[w - 1];
      if (w + 1 < W) sum += col[w + 1];
      out[oh * Wo + ow] = sum * (1.f / 9.f);
    }
  }
}

template <int kC>
__attribute__((always_inline)) inline void weighted_pixels_t(
    const float* __restrict__ x, int64_t x_split, int64_t x_pixel, const float* __restrict__ a,
    int64_t a_split, int radix, int64_t pixels, int64_t channels, float* __restrict__ y,
    int64_t y_pixel) {
  if (kC > 0) {  // a block of kC channels: accumulated in registers
    for (int64_t p = 0; p < pixels; ++p, x += x_pixel, y += y_pixel) {
      float o[kC > 0 ? kC : 1];
      for (int c = 0; c < kC; ++c) o[c] = a[c] * x[c];
      for (int r = 1; r < radix; ++r)
        for (int c = 0; c < kC; ++c) o[c] += a[r * a_split + c] * x[r * x_split + c];
      for (int c = 0; c < kC; ++c) y[c] = o[c];
    }
    return;
  }
  for (int64_t p = 0; p < pixels; ++p, x += x_pixel, y += y_pixel) {
    for (int64_t c = 0; c < channels; ++c) y[c] = a[c] * x[c];
    for (int r = 1; r < radix; ++r)
      for (int64_t c = 0; c < channels; ++c) y[c] += a[r * a_split + c] * x[r * x_split + c];
  }
}

// The weighted sum where the channels are innermost: for each of `pixels` pixels,
// y[c] = sum_r a[r * a_split + c] * x[r * x_split + c] over `channels` channels, the pixels
// x_pixel (y_pixel) floats apart. N x H x W x C: one row of W pixels of R*C channels;
// nChw16c: the pixels of one block of 16 channels, the splits' blocks x_split apart.
// The uint8 kernels (split_attention_u8.h) stay apart: they fold each split's scale into the
// weights and round and saturate every sum to uint8 in the same pass.
GR_MULTIVERSION
static void weighted_pixels(const float* x, int64_t x_split, int64_t x_pixel, const float* a,
                            int64_t a_split, int radix, int64_t pixels, int64_t channels,
                            float* y, int64_t y_pixel) {
  if (channels == 16) {
    weighted_pixels_t<16>(x, x_split, x_pixel, a, a_split, radix, pixels, 16, y, y_pixel);
  } else {
    weighted_pixels_t<0>(x, x_split, x_pixel, a, a_split, radix, pixels, channels, y, y_pixel);
  }
}

template <int kC>
__attribute__((always_inline)) inline void avg_pool_pixels_t(
    const float* __restrict__ in, int64_t H, int64_t W, int64_t channels,
    float* __restrict__ out, int64_t oh_begin, int64_t oh_end, int64_t Wo) {
  if (kC > 0) {  // a block of kC channels: summed in registers
    for (int64_t oh = oh_begin; oh < oh_end; ++oh)
      for (int64_t ow = 0; ow < Wo; ++ow) {
        float s[kC > 0 ? kC : 1] = {};
        for (int64_t h = std::max<int64_t>(2 * oh - 1, 0); h <= std::min(2 * oh + 1, H - 1); ++h)
          for (int64_t w = std::max<int64_t>(2 * ow - 1, 0); w <= std::min(2 * ow + 1, W - 1);
               ++w)
            for (int c = 0; c < kC; ++c) s[c] += in[(h * W + w) * kC + c];
        for (int c = 0; c < kC; ++c) out[(oh * Wo + ow) * kC + c] = s[c] * (1.f / 9.f);
      }
    return;
  }
  const int64_t C = channels;
  for (int64_t oh = oh_begin; oh < oh_end; ++oh) {
    const int64_t h0 = std::max<int64_t>(2 * oh - 1, 0), h1 = std::min(2 * oh + 1, H - 1);
    for (int64_t ow = 0; ow < Wo; ++ow) {
      const int64_t w0 = std::max<int64_t>(2 * ow - 1, 0), w1 = std::min(2 * ow + 1, W - 1);
      float* o = out + (oh * Wo + ow) * C;
      for (int64_t c = 0; c < C; ++c) o[c] = 0.f;
      for (int64_t h = h0; h <= h1; ++h)
        for (int64_t w = w0; w <= w1; ++w)
          for (int64_t c = 0; c < C; ++c) o[c] += in[(h * W + w) * C + c];
      for (int64_t c = 0; c < C; ++c) o[c] *= 1.f / 9.f;
    }
  }
}

// Output rows [oh_begin, oh_end) of the 3x3, stride 2, padding 1 average pooling (padding
// counted) of an H x W plane of `channels` channels innermost (N x H x W x C: one image;
// nChw16c: one block of 16 channels) into an Ho x Wo plane.
GR_MULTIVERSION
static void avg_pool_pixels(const float* in, int64_t H, int64_t W, int64_t channels, float* out,
                            int64_t oh_begin, int64_t oh_end, int64_t Wo) {
  if (channels == 16) {
    avg_pool_pixels_t<16>(in, H, W, 16, out, oh_begin, oh_end, Wo);
  } else {
    avg_pool_pixels_t<0>(in, H, W, channels, out, oh_begin, oh_end, Wo);
  }
}

// y[n * y_stride + r] = b[r] + dot(w + r * len, x + n * x_stride) for rows [r0, r1) and N
// vectors (each weight row read once for all of them), then max(y, 0) with relu.
GR_MULTIVERSION
static void dense_rows(const float* w, const float* b, int64_t len, const float* x,
                       int64_t x_stride, int64_t N, int64_t r0, int64_t r1, float* y,
                       int64_t y_stride, bool relu) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* wr = w + r * len;
    for (int64_t n = 0; n < N; ++n) {
      const float* xn = x + n * x_stride;
      float part[16] = {0.f};
      int64_t i = 0;
      for (; i + 16 <= len; i += 16)
        for (int j = 0; j < 16; ++j) part[j] += wr[i + j] * xn[i + j];
      float total = 0.f;
      for (int j = 0; j < 16; ++j) total += part[j];
      for (; i < len; ++i) total += wr[i] * xn[i];
      total += b[r];
      y[n * y_stride + r] = relu ? std::max(total, 0.f) : total;
    }
  }
}

}  // namespace f32

// The Split-Attention's attention from its pooled input g (N x C), inference, radix R >= 2 and
// K cardinal groups of w = C / K channels (the grouped 1 x 1 convolutions fc1 and fc2):
//
//     h = relu(W1 g + b1)    W1: D x C/K, D / K rows per group;
//     z = W2 h + b2          W2: R*C x D/K, R*w rows per group, cardinal-major;
//     a[n, r*C + k*w + j] = softmax over r of z[n, k*R*w + r*w + j]   (radix-major).
//
// h: N x D and z: N x R*C floats of scratch.
inline void sa_attention_f32(const float* g, int64_t N, int64_t C, int64_t D, int radix,
                             int64_t K, const float* w1, const float* b1, const float* w2,
                             const float* b2, float* h, float* z, float* a) {
  const int64_t RC = radix * C, w = C / K, dk = D / K, rk = RC / K;
  const int64_t work = N * (D * (C / K) + RC * dk);
#pragma omp parallel if (work >= 32768)
  {
#pragma omp for schedule(static)
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = d / dk;
      f32::dense_rows(w1, b1, C / K, g + k * (C / K), C, N, d, d + 1, h, D, true);
    }
#pragma omp for schedule(static)
    for (int64_t o = 0; o < RC; ++o) {
      const int64_t k = o / rk;
      f32::dense_rows(w2, b2, dk, h + k * dk, D, N, o, o + 1, z, RC, false);
    }
#pragma omp for schedule(static)
    for (int64_t nk = 0; nk < N * K; ++nk) {
      const int64_t n = nk / K, k = nk % K;
      const float* zk = z + n * RC + k * radix * w;
      float* an = a + n * RC + k * w;
      for (int64_t j = 0; j < w; ++j) {
        float m = zk[j];
        for (int r = 1; r < radix; ++r) m = std::max(m, zk[r * w + j]);
        float s = 0.f;
        for (int r = 0; r < radix; ++r) {
          const float e = std::exp(zk[r * w + j] - m);
          an[r * C + j] = e;
          s += e;
        }
        const float inv = 1.f / s;
        for (int r = 0; r < radix; ++r) an[r * C + j] *= inv;
      }
    }
  }
}

// y (N x C x Ho x Wo) from a (N x R*C) and x (N x R*C x H x W), one plane (n, c) at a time.
// Not weighted_pixels: here one weight serves a whole plane and the loops run over its pixels
// (as in sa_sum_u8_nchw, which also says what the channels-innermost kernel costs here).
inline void sa_sum_f32_nchw(const float* a, const float* x, int64_t N, int64_t C, int radix,
                            int64_t H, int64_t W, bool pool, float* y) {
  const int64_t HW = H * W, Ho = pool ? (H - 1) / 2 + 1 : H, Wo = pool ? (W - 1) / 2 + 1 : W;
#pragma omp parallel
  {
    std::vector<float> plane(pool ? HW + W : 0);  // the sum and the pooling's column sums
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      float* sum = pool ? plane.data() : y + nc * HW;
      for (int r = 0; r < radix; ++r) {
        const int64_t k = n * radix * C + r * C + c;
        f32::axpy(x + k * HW, a[k], sum, HW, r == 0);
      }
      if (pool) f32::avg_pool_3s2(sum, H, W, y + nc * Ho * Wo, Ho, Wo, plane.data() + HW);
    }
  }
}

// g (N x C) from x (N x R*C x H x W), one plane (n, c) at a time (double accumulation).
inline void sa_gap_f32_nchw(const float* x, int64_t N, int64_t C, int radix, int64_t HW,
                            float* g) {
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t n = nc / C, c = nc % C;
    double total = 0.0;
    for (int r = 0; r < radix; ++r) total += f32::sum(x + (n * radix * C + r * C + c) * HW, HW);
    g[nc] = static_cast<float>(total / HW);
  }
}

}  // namespace gluon_resnest

#endif  // GLUON_RESNEST_SPLIT_ATTENTION_F32_H_
