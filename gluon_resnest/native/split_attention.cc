// INT8 Split-Attention weighted sum for MXNet 1.9 (an operator library for mx.library.load).
//
// gluon_resnest_sa_sum_u8 computes, for R quantized splits x_r (uint8, N x C x H x W, each with
// its own range) and the attention a (float32, N x R*C x 1 x 1, radix-major),
//
//     y = requantize(sum_r a[:, r*C:(r+1)*C] * dequantize(x_r))
//
// in one pass over the splits, optionally followed by the 3x3, stride 2, padding 1 average
// pooling (padding counted) that a ResNeSt block with avd applies next. The output is uint8 in
// the calibrated range [0, max_calib_range], with its (min, max) as the second and third outputs,
// as MXNet's quantized operators expect. Inputs: a, min_0, max_0, ..., min_{R-1}, max_{R-1},
// x_0..x_{R-1}. Attributes: radix, max_calib_range, pool (0 or 1).
//
// Input order matters. MXNet 1.9 hands an operator library the shape of an input it had to
// reorder out of a oneDNN layout through a pointer into a vector of reordered copies, and a later
// reorder for the same call may reallocate that vector: only the last reordered input's shape is
// sure to be intact. So every operator reads its dimensions from its outputs and from its last
// input only (a tensor input whose shape decides the loop bounds goes last), and checks that input
// against the outputs before using it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"
#include "split_attention_f32.h"
#include "split_attention_u8.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using Attrs = std::unordered_map<std::string, std::string>;

namespace {

using gluon_resnest::kMaxRadix;

bool radix_of(const Attrs& attrs, int* radix) {
  auto it = attrs.find("radix");
  if (it == attrs.end()) {
    MX_ERROR_MSG << "gluon_resnest_sa_sum_u8: attribute 'radix' is required";
    return false;
  }
  *radix = std::atoi(it->second.c_str());
  if (*radix < 1 || *radix > kMaxRadix) {
    MX_ERROR_MSG << "gluon_resnest_sa_sum_u8: radix must be in [1, " << kMaxRadix << "], got "
                 << it->second;
    return false;
  }
  return true;
}

bool pooled(const Attrs& attrs) {
  auto it = attrs.find("pool");
  return it != attrs.end() && (it->second == "1" || it->second == "True");
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  int radix;
  if (!radix_of(attrs, &radix)) return mxnet::ext::MX_FAIL;
  if (attrs.find("max_calib_range") == attrs.end()) {
    MX_ERROR_MSG << "gluon_resnest_sa_sum_u8: attribute 'max_calib_range' is required";
    return mxnet::ext::MX_FAIL;
  }
  *num_in = 3 * radix + 1;
  *num_out = 3;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in, std::vector<int>* out) {
  int radix;
  if (!radix_of(attrs, &radix)) return mxnet::ext::MX_FAIL;
  for (int r = 0; r < radix; ++r) {
    if ((*in)[1 + 2 * radix + r] != mxnet::ext::kUint8) {
      MX_ERROR_MSG << "gluon_resnest_sa_sum_u8: split " << r << " must be uint8";
      return mxnet::ext::MX_FAIL;
    }
  }
  (*out)[0] = mxnet::ext::kUint8;
  (*out)[1] = mxnet::ext::kFloat32;
  (*out)[2] = mxnet::ext::kFloat32;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs& attrs, std::vector<std::vector<unsigned>>* in,
                          std::vector<std::vector<unsigned>>* out) {
  int radix;
  if (!radix_of(attrs, &radix)) return mxnet::ext::MX_FAIL;
  const std::vector<unsigned>& x = (*in)[1 + 2 * radix];
  const std::vector<unsigned>& a = (*in)[0];
  if (x.size() != 4 || a.size() != 4 || a[0] != x[0] || a[1] != radix * x[1] || a[2] != 1 ||
      a[3] != 1) {
    MX_ERROR_MSG << "gluon_resnest_sa_sum_u8: expected splits of shape (N, C, H, W) and an "
                    "attention of shape (N, radix * C, 1, 1)";
    return mxnet::ext::MX_FAIL;
  }
  for (int r = 1; r < radix; ++r) {
    if ((*in)[1 + 2 * radix + r] != x) {
      MX_ERROR_MSG << "gluon_resnest_sa_sum_u8: the splits differ in shape";
      return mxnet::ext::MX_FAIL;
    }
  }
  std::vector<unsigned> y = x;
  if (pooled(attrs)) {
    y[2] = (x[2] - 1) / 2 + 1;
    y[3] = (x[3] - 1) / 2 + 1;
  }
  (*out)[0] = y;
  (*out)[1] = {1};
  (*out)[2] = {1};
  return mxnet::ext::MX_SUCCESS;
}

// The spatial size (H, W) of an input of shape (N, channels, H, W) whose output is y (N, ., Ho,
// Wo), pooled 3x3/2 or not; false (with a message) when the input's shape does not fit y's.
bool input_plane(const char* op, const MXTensor& x, const MXTensor& y, int64_t channels,
                 bool pool, int64_t* H, int64_t* W) {
  const std::vector<int64_t>& s = x.shape;
  const std::vector<int64_t>& o = y.shape;
  const bool fits = s.size() == 4 && o.size() == 4 && s[0] == o[0] && s[1] == channels &&
                    s[2] > 0 && s[3] > 0 &&
                    (pool ? (s[2] - 1) / 2 + 1 == o[2] && (s[3] - 1) / 2 + 1 == o[3]
                          : s[2] == o[2] && s[3] == o[3]);
  if (!fits) {
    MX_ERROR_MSG << op << ": input shape does not match the output's";
    return false;
  }
  *H = s[2];
  *W = s[3];
  return true;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  int radix;
  if (!radix_of(attrs, &radix)) return mxnet::ext::MX_FAIL;
  const float out_max = std::strtof(attrs.at("max_calib_range").c_str(), nullptr);
  if (!(out_max > 0.f)) {
    MX_ERROR_MSG << "gluon_resnest_sa_sum_u8: max_calib_range must be positive";
    return mxnet::ext::MX_FAIL;
  }
  std::vector<MXTensor>& in = *inputs;
  MXTensor& Y = (*outputs)[0];
  gluon_resnest::SaSumU8 p;
  p.radix = radix;
  p.pool = pooled(attrs);
  p.N = Y.shape[0], p.C = Y.shape[1], p.Ho = Y.shape[2], p.Wo = Y.shape[3];
  if (!input_plane("gluon_resnest_sa_sum_u8", in[3 * radix], Y, p.C, p.pool, &p.H, &p.W))
    return mxnet::ext::MX_FAIL;
  // Dequantization of split r (uint8, range max(|min|, |max|)) and requantization to
  // [0, out_max] fold into one factor per split.
  for (int r = 0; r < radix; ++r) {
    const float lo = std::fabs(in[1 + 2 * r].data<float>()[0]);
    const float hi = std::fabs(in[2 + 2 * r].data<float>()[0]);
    p.scale[r] = std::max(lo, hi) / out_max;
    p.x[r] = in[1 + 2 * radix + r].data<uint8_t>();
  }
  p.a = in[0].data<float>();
  p.y = Y.data<uint8_t>();
  (*outputs)[1].data<float>()[0] = 0.f;
  (*outputs)[2].data<float>()[0] = out_max;
  gluon_resnest::sa_sum_u8_nchw(p);
  return mxnet::ext::MX_SUCCESS;
}

// Quantized values are not differentiable: the gradient of every input is zero (as for MXNet's
// own quantized operators). MXNet builds the backward graph of a hybridized block even when
// nothing needs gradients, so the operator must provide one.
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  for (MXTensor& t : *outputs) {
    const int64_t bytes = t.size() * (t.dtype == mxnet::ext::kUint8 ? 1 : 4);
    std::memset(t.data_ptr, 0, bytes);
  }
  return mxnet::ext::MX_SUCCESS;
}

// ---- float32: gluon_resnest_sa_sum (training and FP32 inference) ----
// Inputs a (N, R*C, 1, 1), x (N, R*C, H, W), both radix-major; output
// y[n, c] = sum_r a[n, r*C + c] * x[n, r*C + c], optionally 3x3/2 average pooled (pool=1).
// Backward inputs: dy, a, x, y; outputs da, dx.

MXReturnValue f32_parse(const Attrs& attrs, int* num_in, int* num_out) {
  int radix;
  if (!radix_of(attrs, &radix)) return mxnet::ext::MX_FAIL;
  *num_in = 2;
  *num_out = 1;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue f32_type(const Attrs& attrs, std::vector<int>* in, std::vector<int>* out) {
  if ((*in)[0] != mxnet::ext::kFloat32 || (*in)[1] != mxnet::ext::kFloat32) {
    MX_ERROR_MSG << "gluon_resnest_sa_sum: inputs must be float32";
    return mxnet::ext::MX_FAIL;
  }
  (*out)[0] = mxnet::ext::kFloat32;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue f32_shape(const Attrs& attrs, std::vector<std::vector<unsigned>>* in,
                        std::vector<std::vector<unsigned>>* out) {
  int radix;
  if (!radix_of(attrs, &radix)) return mxnet::ext::MX_FAIL;
  const std::vector<unsigned>& a = (*in)[0];
  const std::vector<unsigned>& x = (*in)[1];
  if (x.size() != 4 || x[1] % radix || a.size() != 4 || a[0] != x[0] || a[1] != x[1] ||
      a[2] != 1 || a[3] != 1) {
    MX_ERROR_MSG << "gluon_resnest_sa_sum: expected x of shape (N, radix * C, H, W) and an "
                    "attention of shape (N, radix * C, 1, 1)";
    return mxnet::ext::MX_FAIL;
  }
  std::vector<unsigned> y = x;
  y[1] = x[1] / radix;
  if (pooled(attrs)) {
    y[2] = (x[2] - 1) / 2 + 1;
    y[3] = (x[3] - 1) / 2 + 1;
  }
  (*out)[0] = y;
  return mxnet::ext::MX_SUCCESS;
}

// dx = s * g; returns sum(g * x) (double accumulation: the attention's gradient)
GR_MULTIVERSION
double scale_dot_f32(const float* g, const float* x, float s, float* dx, int64_t n) {
  double dot = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    dx[i] = s * g[i];
    dot += static_cast<double>(g[i]) * x[i];
  }
  return dot;
}

// Gradient of gluon_resnest::f32::avg_pool_3s2: every input position gets dy / 9 of each
// window covering it.
void avg_pool_3s2_f32_grad(const float* dy, int64_t Ho, int64_t Wo, float* g, int64_t H,
                           int64_t W) {
  std::fill(g, g + H * W, 0.f);
  for (int64_t oh = 0; oh < Ho; ++oh) {
    for (int64_t ow = 0; ow < Wo; ++ow) {
      const float v = dy[oh * Wo + ow] * (1.f / 9.f);
      for (int64_t h = std::max<int64_t>(2 * oh - 1, 0); h <= std::min(2 * oh + 1, H - 1); ++h)
        for (int64_t w = std::max<int64_t>(2 * ow - 1, 0); w <= std::min(2 * ow + 1, W - 1);
             ++w)
          g[h * W + w] += v;
    }
  }
}

MXReturnValue f32_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                          std::vector<MXTensor>* outputs, const OpResource& res) {
  int radix;
  if (!radix_of(attrs, &radix)) return mxnet::ext::MX_FAIL;
  std::vector<MXTensor>& in = *inputs;  // a, x
  MXTensor& Y = (*outputs)[0];
  const bool pool = pooled(attrs);
  const int64_t N = Y.shape[0], C = Y.shape[1];
  int64_t H, W;
  if (!input_plane("gluon_resnest_sa_sum", in[1], Y, radix * C, pool, &H, &W))
    return mxnet::ext::MX_FAIL;
  gluon_resnest::sa_sum_f32_nchw(in[0].data<float>(), in[1].data<float>(), N, C, radix, H, W,
                                 pool, Y.data<float>());
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue f32_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                           std::vector<MXTensor>* outputs, const OpResource& res) {
  int radix;
  if (!radix_of(attrs, &radix)) return mxnet::ext::MX_FAIL;
  std::vector<MXTensor>& in = *inputs;  // dy, a, x, y; outputs da, dx
  MXTensor& DX = (*outputs)[1];
  const int64_t N = DX.shape[0], C = DX.shape[1] / radix, H = DX.shape[2], W = DX.shape[3],
                HW = H * W;
  const bool pool = pooled(attrs);
  const int64_t Ho = pool ? (H - 1) / 2 + 1 : H, Wo = pool ? (W - 1) / 2 + 1 : W;
  const float* dy = in[0].data<float>();
  const float* a = in[1].data<float>();
  const float* x = in[2].data<float>();
  float* da = (*outputs)[0].data<float>();
  float* dx = DX.data<float>();
#pragma omp parallel
  {
    std::vector<float> plane(pool ? HW : 0);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      const float* g = dy + nc * HW;
      if (pool) {
        avg_pool_3s2_f32_grad(dy + nc * Ho * Wo, Ho, Wo, plane.data(), H, W);
        g = plane.data();
      }
      for (int r = 0; r < radix; ++r) {
        const int64_t k = n * radix * C + r * C + c;
        da[k] = static_cast<float>(scale_dot_f32(g, x + k * HW, a[k], dx + k * HW, HW));
      }
    }
  }
  return mxnet::ext::MX_SUCCESS;
}

// ---- float32: gluon_resnest_sa_gap, the pooled attention input ----
// x (N, R*C, H, W) radix-major -> g[n, c] = sum_r mean_hw x[n, r*C + c], shape (N, C, 1, 1).
// Backward inputs: dg, x, g; output dx[n, r*C + c, p] = dg[n, c] / (H * W).

MXReturnValue gap_parse(const Attrs& attrs, int* num_in, int* num_out) {
  int radix;
  if (!radix_of(attrs, &radix)) return mxnet::ext::MX_FAIL;
  *num_in = 1;
  *num_out = 1;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue gap_type(const Attrs& attrs, std::vector<int>* in, std::vector<int>* out) {
  if ((*in)[0] != mxnet::ext::kFloat32) {
    MX_ERROR_MSG << "gluon_resnest_sa_gap: input must be float32";
    return mxnet::ext::MX_FAIL;
  }
  (*out)[0] = mxnet::ext::kFloat32;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue gap_shape(const Attrs& attrs, std::vector<std::vector<unsigned>>* in,
                        std::vector<std::vector<unsigned>>* out) {
  int radix;
  if (!radix_of(attrs, &radix)) return mxnet::ext::MX_FAIL;
  const std::vector<unsigned>& x = (*in)[0];
  if (x.size() != 4 || x[1] % radix) {
    MX_ERROR_MSG << "gluon_resnest_sa_gap: expected x of shape (N, radix * C, H, W)";
    return mxnet::ext::MX_FAIL;
  }
  (*out)[0] = {x[0], x[1] / radix, 1, 1};
  return mxnet::ext::MX_SUCCESS;
}

GR_MULTIVERSION
void fill_f32(float* y, float v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = v;
}

MXReturnValue gap_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                          std::vector<MXTensor>* outputs, const OpResource& res) {
  int radix;
  if (!radix_of(attrs, &radix)) return mxnet::ext::MX_FAIL;
  MXTensor& X = (*inputs)[0];
  MXTensor& G = (*outputs)[0];
  const int64_t N = G.shape[0], C = G.shape[1];
  if (X.shape.size() != 4 || X.shape[0] != N || X.shape[1] != radix * C) {
    MX_ERROR_MSG << "gluon_resnest_sa_gap: input shape does not match the output's";
    return mxnet::ext::MX_FAIL;
  }
  gluon_resnest::sa_gap_f32_nchw(X.data<float>(), N, C, radix, X.shape[2] * X.shape[3],
                                 G.data<float>());
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue gap_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                           std::vector<MXTensor>* outputs, const OpResource& res) {
  int radix;
  if (!radix_of(attrs, &radix)) return mxnet::ext::MX_FAIL;
  MXTensor& DX = (*outputs)[0];  // inputs dg, x, g
  const int64_t N = DX.shape[0], C = DX.shape[1] / radix, HW = DX.shape[2] * DX.shape[3];
  const float* dg = (*inputs)[0].data<float>();
  float* dx = DX.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < N * radix * C; ++k) {
    const int64_t n = k / (radix * C), c = k % C;
    fill_f32(dx + k * HW, dg[n * C + c] / static_cast<float>(HW), HW);
  }
  return mxnet::ext::MX_SUCCESS;
}

using Compute = MXReturnValue (*)(const Attrs&, std::vector<MXTensor>*, std::vector<MXTensor>*,
                                  const OpResource&);

// fn, with the fault GLUON_RESNEST_NATIVE_SELFTEST_PERTURB may ask for (split_attention_u8.h).
template <Compute fn, const char* name>
MXReturnValue with_selftest_fault(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                  std::vector<MXTensor>* outputs, const OpResource& res) {
  const int fault = gluon_resnest::selftest_fault(name);
  if (fault == 2) std::abort();
  const MXReturnValue status = fn(attrs, inputs, outputs, res);
  if (fault == 1 && status == mxnet::ext::MX_SUCCESS) {
    MXTensor& y = (*outputs)[0];
    if (y.dtype == mxnet::ext::kUint8) {
      y.data<uint8_t>()[0] += 128;
    } else {
      y.data<float>()[0] += 1.f;
    }
  }
  return status;
}

constexpr char kSumU8[] = "gluon_resnest_sa_sum_u8";
constexpr char kSum[] = "gluon_resnest_sa_sum";
constexpr char kSumBackward[] = "_backward_gluon_resnest_sa_sum";
constexpr char kGap[] = "gluon_resnest_sa_gap";
constexpr char kGapBackward[] = "_backward_gluon_resnest_sa_gap";

}  // namespace

#if GLUON_RESNEST_LIB_API_U8
REGISTER_OP(gluon_resnest_sa_sum_u8)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(with_selftest_fault<forward, kSumU8>, "cpu")
    .setBackward(backward, "cpu");
#endif

REGISTER_OP(gluon_resnest_sa_sum)
    .setParseAttrs(f32_parse)
    .setInferType(f32_type)
    .setInferShape(f32_shape)
    .setForward(with_selftest_fault<f32_forward, kSum>, "cpu")
    .setBackward(with_selftest_fault<f32_backward, kSumBackward>, "cpu");

REGISTER_OP(gluon_resnest_sa_gap)
    .setParseAttrs(gap_parse)
    .setInferType(gap_type)
    .setInferShape(gap_shape)
    .setForward(with_selftest_fault<gap_forward, kGap>, "cpu")
    .setBackward(with_selftest_fault<gap_backward, kGapBackward>, "cpu");

MXReturnValue initialize(int version) {
  // Built against MXNet 1.9's operator library interface (MX_LIBRARY_VERSION 11).
  if (version < 10900) {
    MX_ERROR_MSG << "gluon_resnest operators need MXNet >= 1.9, got " << version;
    return mxnet::ext::MX_FAIL;
  }
  return mxnet::ext::MX_SUCCESS;
}
