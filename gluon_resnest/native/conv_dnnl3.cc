// Float32 inference convolutions on oneDNN 3 (the onednn-cpu-gomp wheel), behind a C interface.
//
// MXNet 1.9.1 runs its convolutions on the oneDNN 2.4 it was built with. oneDNN 3's
// convolution kernels (brgemm-based, N x H x W x C) are faster on the same CPU, so the float32
// inference graph of gluon_resnest (gluon_resnest_conv in split_attention_onednn.cc) runs its
// convolutions here. This file includes no MXNet header: the two oneDNN versions share the
// namespace dnnl, so each lives in its own shared library, bound to itself with -Bsymbolic.
//
// Activations are N x H x W x C in memory (the first convolution may read N x C x H x W); the
// weights are MXNet's (O, I/G, KH, KW), reordered once into the kernel's layout when the
// primitive is made.
//
// 3 x 3 convolutions of stride 1 and padding 1 may instead run as Winograd F(4 x 4, 3 x 3)
// (grc_conv_spec.winograd): 36 multiplications per 4 x 4 outputs and input channel instead of
// 144. The output is split into 4 x 4 tiles; each thread takes blocks of tiles and, with the
// block held in its cache, transforms the 6 x 6 input windows (B^T d B), multiplies them by the
// transformed weights (G g G^T, made once) in one batched oneDNN matmul, and transforms the
// products back (A^T m A) with the bias, the residual sum and the ReLU. The transforms use
// AVX-512 on 16 channels at a time, so the path needs AVX-512 and channels per group that are
// multiples of 16, and enough tiles (kWinoMinTiles); the other convolutions run direct. With
// few tiles (kWinoSplitTiles) the threads share one block and split its matmul instead.
//
// bfloat16 maps (grc_conv_spec.bf16) use the same schedule: the transforms read and write
// bfloat16 and compute in float32; the transformed inputs and weights are rounded to bfloat16
// for the matmul (oneDNN's bf16 kernels, float32 accumulation and products), or, with
// winograd = 2, stay float32 (slower, as accurate as the direct bf16 convolution).
#include <immintrin.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

std::atomic<int64_t> winograd_runs{0};

// ---- Winograd F(4 x 4, 3 x 3) on 16 channels (one AVX-512 register) at a time ----
#define GRC_AVX512 __attribute__((target("avx512f")))

// o = B^T d for a column (or row) of six values.
GRC_AVX512 inline void wino_bt(const __m512 d[6], __m512 o[6]) {
  const __m512 c2 = _mm512_set1_ps(2.f), c4 = _mm512_set1_ps(4.f), c5 = _mm512_set1_ps(5.f);
  o[0] = _mm512_fmadd_ps(c4, d[0], _mm512_fnmadd_ps(c5, d[2], d[4]));
  const __m512 a = _mm512_fnmadd_ps(c4, d[2], d[4]);  // d4 - 4 d2
  const __m512 b = _mm512_fnmadd_ps(c4, d[1], d[3]);  // d3 - 4 d1
  o[1] = _mm512_add_ps(a, b);
  o[2] = _mm512_sub_ps(a, b);
  const __m512 e = _mm512_sub_ps(d[4], d[2]);
  const __m512 f = _mm512_mul_ps(c2, _mm512_sub_ps(d[3], d[1]));
  o[3] = _mm512_add_ps(e, f);
  o[4] = _mm512_sub_ps(e, f);
  o[5] = _mm512_fmadd_ps(c4, d[1], _mm512_fnmadd_ps(c5, d[3], d[5]));
}

// o = A^T m for six values to four.
GRC_AVX512 inline void wino_at(const __m512 m[6], __m512 o[4]) {
  const __m512 c2 = _mm512_set1_ps(2.f), c4 = _mm512_set1_ps(4.f), c8 = _mm512_set1_ps(8.f);
  const __m512 s12 = _mm512_add_ps(m[1], m[2]), d12 = _mm512_sub_ps(m[1], m[2]);
  const __m512 s34 = _mm512_add_ps(m[3], m[4]), d34 = _mm512_sub_ps(m[3], m[4]);
  o[0] = _mm512_add_ps(_mm512_add_ps(m[0], s12), s34);
  o[1] = _mm512_fmadd_ps(c2, d34, d12);
  o[2] = _mm512_fmadd_ps(c4, s34, s12);
  o[3] = _mm512_add_ps(_mm512_fmadd_ps(c8, d34, d12), m[5]);
}

// 16 values of float32 or bfloat16 (uint16_t) as float32, and back (to bfloat16: rounded to
// nearest even, NaN kept NaN, as oneDNN's reorders).
GRC_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
GRC_AVX512 inline __m512 load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
GRC_AVX512 inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
GRC_AVX512 inline void store16(uint16_t* p, __m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i high = _mm512_srli_epi32(u, 16);
  const __m512i lsb = _mm512_and_si512(high, _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, high, _mm512_set1_epi32(0x40));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}

// The 6 x 6 window at (y0, x0) of image n (N x H x W x C), channels c0..c0+15, zero outside the
// image, to v[p * stride] for the 36 positions p. T: the map's type, V: the transformed inputs'
// (float or uint16_t for bfloat16); the transform is computed in float32.
template <typename T, typename V>
GRC_AVX512 void wino_in_tile(const T* src, int64_t h, int64_t w, int64_t c, int64_t n,
                             int64_t y0, int64_t x0, int64_t c0, V* v, int64_t stride) {
  alignas(64) float tmp[36 * 16];
  for (int j = 0; j < 6; ++j) {
    __m512 d[6], o[6];
    const int64_t x = x0 + j;
    for (int i = 0; i < 6; ++i) {
      const int64_t y = y0 + i;
      d[i] = (y < 0 || y >= h || x < 0 || x >= w)
                 ? _mm512_setzero_ps()
                 : load16(src + ((n * h + y) * w + x) * c + c0);
    }
    wino_bt(d, o);
    for (int i = 0; i < 6; ++i) _mm512_store_ps(tmp + (i * 6 + j) * 16, o[i]);
  }
  for (int i = 0; i < 6; ++i) {
    __m512 d[6], o[6];
    for (int j = 0; j < 6; ++j) d[j] = _mm512_load_ps(tmp + (i * 6 + j) * 16);
    wino_bt(d, o);
    for (int j = 0; j < 6; ++j) store16(v + (i * 6 + j) * stride, o[j]);
  }
}

// The 36 products m[p * stride] of one tile back to its 4 x 4 outputs at (y0, x0) (clipped to
// the image), plus the bias, plus the output's prior contents (sum), then ReLU; T: the output's
// type (float or uint16_t for bfloat16).
template <typename T>
GRC_AVX512 void wino_out_tile(const float* m, int64_t stride, T* dst, int64_t h, int64_t w,
                              int64_t k, int64_t n, int64_t y0, int64_t x0, int64_t c0,
                              const float* bias, bool sum, bool relu) {
  alignas(64) float tmp[24 * 16];
  for (int j = 0; j < 6; ++j) {
    __m512 v[6], o[4];
    for (int i = 0; i < 6; ++i) v[i] = _mm512_loadu_ps(m + (i * 6 + j) * stride);
    wino_at(v, o);
    for (int i = 0; i < 4; ++i) _mm512_store_ps(tmp + (i * 6 + j) * 16, o[i]);
  }
  const __m512 b = bias != nullptr ? _mm512_loadu_ps(bias + c0) : _mm512_setzero_ps();
  const __m512 zero = _mm512_setzero_ps();
  for (int i = 0; i < 4 && y0 + i < h; ++i) {
    __m512 v[6], o[4];
    for (int j = 0; j < 6; ++j) v[j] = _mm512_load_ps(tmp + (i * 6 + j) * 16);
    wino_at(v, o);
    for (int j = 0; j < 4 && x0 + j < w; ++j) {
      T* q = dst + ((n * h + y0 + i) * w + x0 + j) * k + c0;
      __m512 r = _mm512_add_ps(o[j], b);
      if (sum) r = _mm512_add_ps(r, load16(q));
      if (relu) r = _mm512_max_ps(r, zero);
      store16(q, r);
    }
  }
}

// At most this many tiles per block: the block's transformed inputs and products stay in a
// core's cache.
constexpr int64_t kWinoTiles = 32;
// Fewer output tiles than this run direct: the transformed weights (four times the direct ones)
// are read for too few tiles to repay the saved multiplications (a 7 x 7 map at batch 1 has 4).
constexpr int64_t kWinoMinTiles = 16;
// Fewer output tiles than this (a 14 x 14 map at batch 1 has 16) make one block, and the
// threads split its matmul by the 36 x G positions instead of taking blocks of tiles: each
// thread then reads its share of the transformed weights, not all of them (blocks of 8 tiles,
// each reading all weights, ran slower than direct).
constexpr int64_t kWinoSplitTiles = 32;

// Weights (K, C/G, 3, 3) to u[36][G][C/G][K/G] = G g G^T, in double precision.
void wino_weights(const float* weight, float* u, int64_t k, int64_t c, int64_t groups) {
  static const double g[6][3] = {{1 / 4., 0, 0},         {-1 / 6., -1 / 6., -1 / 6.},
                                 {-1 / 6., 1 / 6., -1 / 6.}, {1 / 24., 1 / 12., 1 / 6.},
                                 {1 / 24., -1 / 12., 1 / 6.}, {0, 0, 1}};
  const int64_t cg = c / groups, kg = k / groups;
  for (int64_t o = 0; o < k; ++o) {
    for (int64_t i = 0; i < cg; ++i) {
      const float* f = weight + (o * cg + i) * 9;
      double t[6][3];
      for (int a = 0; a < 6; ++a)
        for (int b = 0; b < 3; ++b) t[a][b] = g[a][0] * f[b] + g[a][1] * f[3 + b] + g[a][2] * f[6 + b];
      for (int a = 0; a < 6; ++a)
        for (int b = 0; b < 6; ++b)
          u[(((a * 6 + b) * groups + o / kg) * cg + i) * kg + o % kg] =
              static_cast<float>(t[a][0] * g[b][0] + t[a][1] * g[b][1] + t[a][2] * g[b][2]);
    }
  }
}

}  // namespace

extern "C" {

// One convolution's geometry. Padding is given per side; dilation the oneDNN way (0 = none).
struct grc_conv_spec {
  int64_t n, ic, ih, iw, oc, oh, ow, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, groups;
  int32_t src_nhwc;  // 1: the input is N x H x W x C in memory, 0: N x C x H x W
  int32_t relu;      // 1: ReLU after the bias (and after the sum)
  int32_t sum;       // 1: add the output buffer's prior contents before the ReLU
  int32_t has_bias;
  int32_t winograd;  // 1: Winograd F(4 x 4, 3 x 3) where it applies (see the top of this file);
                     // with bf16, 1: bfloat16 products, 2: float32 products
  int32_t bf16;      // 1: source, weights and output in bfloat16 (the bias and sum scale float32)
};

struct grc_conv {
  dnnl::convolution_forward prim;
  dnnl::memory::desc src_md, dst_md;
  dnnl::memory weights, bias;
  std::string impl;
  // Winograd: the batched matmul of one block (36 x G products of tiles x C/G by C/G x K/G)
  // and its reordered transformed weights; tiles per block.
  bool winograd = false;
  int64_t block_tiles = 0;
  // Fewer than kWinoSplitTiles tiles: the matmul of one slice of the positions, and each
  // slice's weights (parts of them); 0 parts: blocks of tiles with the whole matmul.
  int64_t parts = 0;
  std::vector<dnnl::memory> part_weights;
  // bfloat16 maps (spec.bf16): whether the transformed inputs and weights are bfloat16 too.
  bool mm_bf16 = false;
  grc_conv_spec spec;
  dnnl::matmul matmul;
  dnnl::memory::desc scratch_md;
  std::vector<float> bias_values;
};

}  // extern "C"

namespace {

bool winograd_applies(const grc_conv_spec* s) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  const int64_t cg = s->ic / s->groups, kg = s->oc / s->groups;
  const int64_t tiles = s->n * ((s->oh + 3) / 4) * ((s->ow + 3) / 4);
  return s->winograd && avx512 && tiles >= kWinoMinTiles && s->src_nhwc && s->kh == 3 && s->kw == 3 && s->sh == 1 &&
         s->sw == 1 && s->pt == 1 && s->pl == 1 && s->pb == 1 && s->pr == 1 && s->dh == 0 &&
         s->dw == 0 && cg % 16 == 0 && kg % 16 == 0 && s->oh == s->ih && s->ow == s->iw;
}

// One block of all tiles; the 36 x G positions in `parts` slices (at most one per thread).
grc_conv* winograd_create_split(const grc_conv_spec* s, const float* weight, const float* bias,
                                int64_t threads) {
  auto& eng = cpu_engine();
  dnnl::stream stream(eng);
  const int64_t cg = s->ic / s->groups, kg = s->oc / s->groups, batch = 36 * s->groups;
  const int64_t tiles = s->n * ((s->oh + 3) / 4) * ((s->ow + 3) / 4);
  int64_t parts = std::min(threads, batch);
  while (batch % parts != 0) --parts;
  const int64_t chunk = batch / parts;
  std::vector<float> u(36 * s->oc * cg);
  wino_weights(weight, u.data(), s->oc, s->ic, s->groups);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const bool mm_bf16 = s->bf16 && s->winograd != 2;
  const dt vt = mm_bf16 ? dt::bf16 : dt::f32;
  dnnl::matmul::primitive_desc pd(eng, {{chunk, tiles, cg}, vt, tag::abc},
                                  {{chunk, cg, kg}, vt, tag::any},
                                  {{chunk, tiles, kg}, dt::f32, tag::abc}, attr);
  auto* c = new grc_conv;
  c->winograd = true;
  c->mm_bf16 = mm_bf16;
  c->block_tiles = tiles;
  c->parts = parts;
  c->spec = *s;
  c->matmul = dnnl::matmul(pd);
  c->scratch_md = pd.scratchpad_desc();
  c->impl = std::string("winograd_f4x4_3x3_split+") + pd.impl_info_str();
  for (int64_t p = 0; p < parts; ++p) {
    dnnl::memory user_u({{chunk, cg, kg}, dt::f32, tag::abc}, eng, u.data() + p * chunk * cg * kg);
    c->part_weights.emplace_back(pd.weights_desc(), eng);
    dnnl::reorder(user_u, c->part_weights.back()).execute(stream, user_u, c->part_weights.back());
  }
  stream.wait();
  if (s->has_bias) c->bias_values.assign(bias, bias + s->oc);
  return c;
}

grc_conv* winograd_create(const grc_conv_spec* s, const float* weight, const float* bias) {
  auto& eng = cpu_engine();
  dnnl::stream stream(eng);
  const int64_t cg = s->ic / s->groups, kg = s->oc / s->groups, batch = 36 * s->groups;
  // Blocks of at most kWinoTiles tiles, as many as a multiple of the threads, all but the last
  // of one size.
  const int64_t tiles = s->n * ((s->oh + 3) / 4) * ((s->ow + 3) / 4);
  const int64_t threads = std::max(1, omp_get_max_threads());
  if (tiles < kWinoSplitTiles && threads > 1)
    return winograd_create_split(s, weight, bias, threads);
  int64_t blocks = (tiles + kWinoTiles - 1) / kWinoTiles;
  blocks = std::min(tiles, (blocks + threads - 1) / threads * threads);
  const int64_t tb = (tiles + blocks - 1) / blocks;
  std::vector<float> u(36 * s->oc * cg);
  wino_weights(weight, u.data(), s->oc, s->ic, s->groups);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // one per thread, see grc_conv_run
  const bool mm_bf16 = s->bf16 && s->winograd != 2;
  const dt vt = mm_bf16 ? dt::bf16 : dt::f32;
  dnnl::matmul::primitive_desc pd(eng, {{batch, tb, cg}, vt, tag::abc},
                                  {{batch, cg, kg}, vt, tag::any},
                                  {{batch, tb, kg}, dt::f32, tag::abc}, attr);
  auto* c = new grc_conv;
  c->winograd = true;
  c->mm_bf16 = mm_bf16;
  c->block_tiles = tb;
  c->spec = *s;
  c->matmul = dnnl::matmul(pd);
  c->scratch_md = pd.scratchpad_desc();
  c->impl = std::string("winograd_f4x4_3x3+") + pd.impl_info_str();
  dnnl::memory user_u({{batch, cg, kg}, dt::f32, tag::abc}, eng, u.data());
  c->weights = dnnl::memory(pd.weights_desc(), eng);
  dnnl::reorder(user_u, c->weights).execute(stream, user_u, c->weights);
  stream.wait();
  if (s->has_bias) c->bias_values.assign(bias, bias + s->oc);
  return c;
}

// The split schedule: all threads transform the inputs, then each multiplies its slices of
// positions, then all transform the products back.
template <typename T, typename V>
GRC_AVX512 void winograd_run_split(grc_conv* c, const T* src, T* dst) {
  const grc_conv_spec& s = c->spec;
  const int64_t cg = s.ic / s.groups, kg = s.oc / s.groups, g = s.groups;
  const int64_t th = (s.oh + 3) / 4, tw = (s.ow + 3) / 4, tb = c->block_tiles;
  const int64_t parts = c->parts, chunk = 36 * g / parts;
  // vsize: the transformed inputs' room in floats (half as many for bfloat16), 64-byte aligned.
  const int64_t vsize = (36 * g * tb * cg * static_cast<int64_t>(sizeof(V)) / 4 + 15) / 16 * 16;
  const int64_t msize = 36 * g * tb * kg;
  const size_t scratch = c->scratch_md.get_size();
  const float* bias = c->bias_values.empty() ? nullptr : c->bias_values.data();
  const bool sum = s.sum != 0, relu = s.relu != 0;
  auto& eng = cpu_engine();
  // The transformed inputs and products, shared by the threads: the calling thread's.
  thread_local std::vector<float> shared;
  if (shared.size() < static_cast<size_t>(vsize + msize + 16)) shared.resize(vsize + msize + 16);
  float* base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(shared.data()) + 63) &
                                         ~uintptr_t{63});
  V* v = reinterpret_cast<V*>(base);
  float* m = base + vsize;
  const dt vt = sizeof(V) == 2 ? dt::bf16 : dt::f32;
  const int64_t vstride = g * tb * cg, mstride = g * tb * kg;
  const int64_t in_blocks = s.ic / 16, out_blocks = s.oc / 16;
#pragma omp parallel
  {
    thread_local std::vector<float> own;
    if (own.size() < scratch / sizeof(float) + 16) own.resize(scratch / sizeof(float) + 16);
    float* sp = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(own.data()) + 63) &
                                         ~uintptr_t{63});
#pragma omp for schedule(static)
    for (int64_t i = 0; i < tb * in_blocks; ++i) {
      const int64_t t = i / in_blocks, c0 = i % in_blocks * 16;
      const int64_t n = t / (th * tw), ty = t % (th * tw) / tw, tx = t % tw;
      wino_in_tile(src, s.ih, s.iw, s.ic, n, ty * 4 - 1, tx * 4 - 1, c0,
                   v + (c0 / cg * tb + t) * cg + c0 % cg, vstride);
    }
#pragma omp for schedule(static)
    for (int64_t p = 0; p < parts; ++p) {
      dnnl::stream stream(eng);
      dnnl::memory vm({{chunk, tb, cg}, vt, tag::abc}, eng, v + p * chunk * tb * cg);
      dnnl::memory mm({{chunk, tb, kg}, dt::f32, tag::abc}, eng, m + p * chunk * tb * kg);
      dnnl::memory sm(c->scratch_md, eng, sp);
      // Inside a parallel region oneDNN runs the matmul on the calling thread alone.
      c->matmul.execute(stream, {{DNNL_ARG_SRC, vm},
                                 {DNNL_ARG_WEIGHTS, c->part_weights[p]},
                                 {DNNL_ARG_DST, mm},
                                 {DNNL_ARG_SCRATCHPAD, sm}});
      stream.wait();
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < tb * out_blocks; ++i) {
      const int64_t t = i / out_blocks, c0 = i % out_blocks * 16;
      const int64_t n = t / (th * tw), ty = t % (th * tw) / tw, tx = t % tw;
      wino_out_tile(m + (c0 / kg * tb + t) * kg + c0 % kg, mstride, dst, s.oh, s.ow, s.oc, n,
                    ty * 4, tx * 4, c0, bias, sum, relu);
    }
  }
  winograd_runs.fetch_add(1, std::memory_order_relaxed);
}

template <typename T, typename V>
GRC_AVX512 void winograd_run_blocks(grc_conv* c, const T* src, T* dst) {
  const grc_conv_spec& s = c->spec;
  const int64_t cg = s.ic / s.groups, kg = s.oc / s.groups, g = s.groups;
  const int64_t th = (s.oh + 3) / 4, tw = (s.ow + 3) / 4, tiles = s.n * th * tw;
  const int64_t tb = c->block_tiles, blocks = (tiles + tb - 1) / tb;
  // vsize: the transformed inputs' room in floats (half as many for bfloat16), 64-byte aligned.
  const int64_t vsize = (36 * g * tb * cg * static_cast<int64_t>(sizeof(V)) / 4 + 15) / 16 * 16;
  const int64_t msize = 36 * g * tb * kg;
  const size_t scratch = c->scratch_md.get_size();
  const float* bias = c->bias_values.empty() ? nullptr : c->bias_values.data();
  const bool sum = s.sum != 0, relu = s.relu != 0;
  auto& eng = cpu_engine();
#pragma omp parallel
  {
    // Each thread's block buffers, kept for the thread's life and grown to the largest use.
    thread_local std::vector<float> buffer;
    const size_t need = vsize + msize + scratch / sizeof(float) + 32;
    if (buffer.size() < need) buffer.resize(need);
    float* base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) &
                                           ~uintptr_t{63});
    V* v = reinterpret_cast<V*>(base);
    float* m = base + vsize;
    dnnl::stream stream(eng);
    const dt vt = sizeof(V) == 2 ? dt::bf16 : dt::f32;
    dnnl::memory vm({{36 * g, tb, cg}, vt, tag::abc}, eng, v);
    dnnl::memory mm({{36 * g, tb, kg}, dt::f32, tag::abc}, eng, m);
    dnnl::memory sm(c->scratch_md, eng, m + msize);
    const std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, vm},
                                                     {DNNL_ARG_WEIGHTS, c->weights},
                                                     {DNNL_ARG_DST, mm},
                                                     {DNNL_ARG_SCRATCHPAD, sm}};
    // v and m hold [36][G][tiles of the block][channels of the group].
    const int64_t vstride = g * tb * cg, mstride = g * tb * kg;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      for (int64_t b = 0; b < tb; ++b) {
        const int64_t t = blk * tb + b;
        const int64_t n = t / (th * tw), ty = t % (th * tw) / tw, tx = t % tw;
        for (int64_t c0 = 0; c0 < s.ic; c0 += 16) {
          V* q = v + (c0 / cg * tb + b) * cg + c0 % cg;
          if (t >= tiles) {  // past the last tile: zeros
            for (int p = 0; p < 36; ++p) store16(q + p * vstride, _mm512_setzero_ps());
          } else {
            wino_in_tile(src, s.ih, s.iw, s.ic, n, ty * 4 - 1, tx * 4 - 1, c0, q, vstride);
          }
        }
      }
      // Inside a parallel region oneDNN runs the matmul on the calling thread alone.
      c->matmul.execute(stream, args);
      for (int64_t b = 0; b < tb && blk * tb + b < tiles; ++b) {
        const int64_t t = blk * tb + b;
        const int64_t n = t / (th * tw), ty = t % (th * tw) / tw, tx = t % tw;
        for (int64_t c0 = 0; c0 < s.oc; c0 += 16) {
          wino_out_tile(m + (c0 / kg * tb + b) * kg + c0 % kg, mstride, dst, s.oh, s.ow,
                        s.oc, n, ty * 4, tx * 4, c0, bias, sum, relu);
        }
      }
    }
    stream.wait();
  }
  winograd_runs.fetch_add(1, std::memory_order_relaxed);
}

// src and dst: float32, or bfloat16 (spec.bf16).
void winograd_run(grc_conv* c, const void* src, void* dst) {
  using bf = uint16_t;
  if (!c->spec.bf16) {
    if (c->parts > 0) return winograd_run_split<float, float>(c, static_cast<const float*>(src),
                                                               static_cast<float*>(dst));
    return winograd_run_blocks<float, float>(c, static_cast<const float*>(src),
                                             static_cast<float*>(dst));
  }
  const bf* s = static_cast<const bf*>(src);
  bf* d = static_cast<bf*>(dst);
  if (c->mm_bf16) {
    if (c->parts > 0) return winograd_run_split<bf, bf>(c, s, d);
    return winograd_run_blocks<bf, bf>(c, s, d);
  }
  if (c->parts > 0) return winograd_run_split<bf, float>(c, s, d);
  return winograd_run_blocks<bf, float>(c, s, d);
}

}  // namespace

extern "C" {

// Makes the primitive and reorders weight (and bias) into it. Null with a message in err when
// oneDNN has no kernel for it.
grc_conv* grc_conv_create(const grc_conv_spec* s, const float* weight, const float* bias,
                          char* err, int err_len) {
  try {
    if (winograd_applies(s)) return winograd_create(s, weight, bias);
    auto& eng = cpu_engine();
    dnnl::stream stream(eng);
    const dnnl::memory::dims src{s->n, s->ic, s->ih, s->iw}, dst{s->n, s->oc, s->oh, s->ow};
    const bool grouped = s->groups > 1;
    const dnnl::memory::dims wdims =
        grouped ? dnnl::memory::dims{s->groups, s->oc / s->groups, s->ic / s->groups, s->kh, s->kw}
                : dnnl::memory::dims{s->oc, s->ic, s->kh, s->kw};
    // bf16: the weights are converted once, by the reorder into the kernel's layout below.
    const dt act = s->bf16 ? dt::bf16 : dt::f32;
    dnnl::memory::desc src_md(src, act, s->src_nhwc ? tag::nhwc : tag::nchw);
    dnnl::memory::desc dst_md(dst, act, tag::nhwc);
    dnnl::memory::desc w_any(wdims, act, tag::any);
    dnnl::memory::desc b_md({s->oc}, dt::f32, tag::a);
    dnnl::post_ops ops;
    if (s->sum) ops.append_sum(1.f);
    if (s->relu) ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    const dnnl::memory::dims strides{s->sh, s->sw}, dil{s->dh, s->dw}, pad_l{s->pt, s->pl},
        pad_r{s->pb, s->pr};
    auto pd = s->has_bias
                  ? dnnl::convolution_forward::primitive_desc(
                        eng, dnnl::prop_kind::forward_inference,
                        dnnl::algorithm::convolution_direct, src_md, w_any, b_md, dst_md, strides,
                        dil, pad_l, pad_r, attr)
                  : dnnl::convolution_forward::primitive_desc(
                        eng, dnnl::prop_kind::forward_inference,
                        dnnl::algorithm::convolution_direct, src_md, w_any, dst_md, strides, dil,
                        pad_l, pad_r, attr);
    auto* c = new grc_conv;
    c->prim = dnnl::convolution_forward(pd);
    c->src_md = src_md;
    c->dst_md = dst_md;
    c->impl = pd.impl_info_str();
    dnnl::memory user_w({wdims, dt::f32, grouped ? tag::goihw : tag::oihw}, eng,
                        const_cast<float*>(weight));
    c->weights = dnnl::memory(pd.weights_desc(), eng);
    dnnl::reorder(user_w, c->weights).execute(stream, user_w, c->weights);
    if (s->has_bias) {
      c->bias = dnnl::memory(b_md, eng);
      std::memcpy(c->bias.get_data_handle(), bias, sizeof(float) * s->oc);
    }
    stream.wait();
    return c;
  } catch (const std::exception& e) {
    if (err != nullptr && err_len > 0) std::snprintf(err, err_len, "%s", e.what());
    return nullptr;
  }
}

// dst = conv(src) (+ dst before the call, when made with sum).
int grc_conv_run(grc_conv* c, const float* src, float* dst) {
  try {
    if (c->winograd) {
      winograd_run(c, src, dst);
      return 0;
    }
    auto& eng = cpu_engine();
    dnnl::stream stream(eng);
    dnnl::memory s(c->src_md, eng, const_cast<float*>(src)), d(c->dst_md, eng, dst);
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, s}, {DNNL_ARG_WEIGHTS, c->weights}, {DNNL_ARG_DST, d}};
    if (c->bias) args[DNNL_ARG_BIAS] = c->bias;
    c->prim.execute(stream, args);
    stream.wait();
    return 0;
  } catch (const std::exception&) {
    return 1;
  }
}

const char* grc_conv_impl(const grc_conv* c) { return c->impl.c_str(); }

void grc_conv_free(grc_conv* c) { delete c; }

// How many convolutions ran as Winograd in this process.
int64_t grc_winograd_runs() { return winograd_runs.load(std::memory_order_relaxed); }

// Copies an N x C x H x W float32 tensor into N x H x W x C (or back, with to_nhwc = 0).
int grc_reorder(const float* src, float* dst, int64_t n, int64_t c, int64_t h, int64_t w,
                int to_nhwc) {
  try {
    auto& eng = cpu_engine();
    dnnl::stream stream(eng);
    const dnnl::memory::dims dims{n, c, h, w};
    dnnl::memory a({dims, dt::f32, to_nhwc ? tag::nchw : tag::nhwc}, eng, const_cast<float*>(src));
    dnnl::memory b({dims, dt::f32, to_nhwc ? tag::nhwc : tag::nchw}, eng, dst);
    dnnl::reorder(a, b).execute(stream, a, b);
    stream.wait();
    return 0;
  } catch (const std::exception&) {
    return 1;
  }
}

// Copies an N x C x H x W tensor between layouts (N x C x H x W or N x H x W x C) and data types
// (float32 or bfloat16, rounded to nearest even).
int grc_convert(const void* src, void* dst, int64_t n, int64_t c, int64_t h, int64_t w,
                int src_nhwc, int src_bf16, int dst_nhwc, int dst_bf16) {
  try {
    auto& eng = cpu_engine();
    dnnl::stream stream(eng);
    const dnnl::memory::dims dims{n, c, h, w};
    dnnl::memory a({dims, src_bf16 ? dt::bf16 : dt::f32, src_nhwc ? tag::nhwc : tag::nchw}, eng,
                   const_cast<void*>(src));
    dnnl::memory b({dims, dst_bf16 ? dt::bf16 : dt::f32, dst_nhwc ? tag::nhwc : tag::nchw}, eng,
                   dst);
    dnnl::reorder(a, b).execute(stream, a, b);
    stream.wait();
    return 0;
  } catch (const std::exception&) {
    return 1;
  }
}

// oneDNN's version, major * 10000 + minor * 100 + patch.
int grc_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

}  // extern "C"
