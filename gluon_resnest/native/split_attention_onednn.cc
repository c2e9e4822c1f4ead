// gluon_resnest_sa_sum_u8 registered in MXNet 1.9.1's own operator registry, so that it reads
// and writes oneDNN layouts in place.
//
// Through the operator-library interface (split_attention.cc) MXNet reorders every input out of
// its oneDNN layout before the call: the uint8 splits come from AMX/VNNI convolutions in
// N x H x W x C, so each call paid a transposition of every split and the next convolution a
// transposition back. Here the operator is an FComputeEx operator marked as oneDNN-aware: it
// reads splits that are in N x H x W x C as they are and writes its output in the same layout
// (declared to oneDNN, so the next convolution takes it without a reorder). Any other layout
// goes through MXNet's reorder to N x C x H x W and the plain kernel; both kernels give the same
// bits (split_attention_u8.h). GLUON_RESNEST_NATIVE_LAYOUT=nchw forces the plain path.
//
// The library is built against the C++ headers the MXNet 1.9.1 wheel ships and linked to its
// libmxnet.so; what that relies on is gathered in mxnet_bridge.h.
#include <mxnet/ndarray.h>
#include <mxnet/op_attr_types.h>
#include <nnvm/node.h>
#include <nnvm/op.h>

#include <dnnl.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet_bridge.h"
#include "split_attention_f32.h"
#include "split_attention_u8.h"

using gluon_resnest_bridge::legacy;

namespace {

using gluon_resnest::kMaxRadix;
using mxnet::NDArray;
using mxnet::TShape;

constexpr char kName[] = "gluon_resnest_sa_sum_u8";

int radix_of(const nnvm::NodeAttrs& attrs) {
  auto it = attrs.dict.find("radix");
  CHECK(it != attrs.dict.end()) << kName << ": attribute 'radix' is required";
  const int radix = std::atoi(it->second.c_str());
  CHECK(radix >= 1 && radix <= kMaxRadix)
      << kName << ": radix must be in [1, " << kMaxRadix << "], got " << it->second;
  return radix;
}

bool pooled(const nnvm::NodeAttrs& attrs) {
  auto it = attrs.dict.find("pool");
  return it != attrs.dict.end() && (it->second == "1" || it->second == "True");
}

float out_max_of(const nnvm::NodeAttrs& attrs) {
  auto it = attrs.dict.find("max_calib_range");
  CHECK(it != attrs.dict.end()) << kName << ": attribute 'max_calib_range' is required";
  const float out_max = std::strtof(it->second.c_str(), nullptr);
  CHECK(out_max > 0.f) << kName << ": max_calib_range must be positive";
  return out_max;
}

// Sets shapes[i] to s, or checks that a known shapes[i] equals it.
void assign(mxnet::ShapeVector* shapes, size_t i, const TShape& s) {
  TShape& have = (*shapes)[i];
  if (!mxnet::shape_is_known(have)) {
    have = s;
  } else {
    CHECK(have == s) << kName << ": shape " << have << " where " << s << " is expected";
  }
}

uint32_t num_inputs(const nnvm::NodeAttrs& attrs) { return 3 * radix_of(attrs) + 1; }

bool infer_shape(const nnvm::NodeAttrs& attrs, mxnet::ShapeVector* in, mxnet::ShapeVector* out) {
  const int radix = radix_of(attrs);
  const TShape x = (*in)[1 + 2 * radix];
  const TShape& a = (*in)[0];
  if (!mxnet::shape_is_known(x) || !mxnet::shape_is_known(a)) return false;
  CHECK(x.ndim() == 4 && a.ndim() == 4 && a[0] == x[0] && a[1] == radix * x[1] && a[2] == 1 &&
        a[3] == 1)
      << kName << ": expected splits of shape (N, C, H, W) and an attention of shape "
      << "(N, radix * C, 1, 1), got " << x << " and " << a;
  for (int r = 1; r < radix; ++r)
    CHECK((*in)[1 + 2 * radix + r] == x) << kName << ": the splits differ in shape";
  for (int i = 1; i <= 2 * radix; ++i) assign(in, i, TShape(1, 1));
  TShape y = x;
  if (pooled(attrs)) {
    y[2] = (x[2] - 1) / 2 + 1;
    y[3] = (x[3] - 1) / 2 + 1;
  }
  assign(out, 0, y);
  assign(out, 1, TShape(1, 1));
  assign(out, 2, TShape(1, 1));
  return true;
}

bool infer_type(const nnvm::NodeAttrs& attrs, std::vector<int>* in, std::vector<int>* out) {
  const int radix = radix_of(attrs);
  for (int r = 0; r < radix; ++r) {
    int& t = (*in)[1 + 2 * radix + r];
    CHECK(t == -1 || t == mshadow::kUint8) << kName << ": split " << r << " must be uint8";
    t = mshadow::kUint8;
  }
  for (int i = 0; i <= 2 * radix; ++i) {
    int& t = (*in)[i];
    CHECK(t == -1 || t == mshadow::kFloat32)
        << kName << ": the attention and the ranges must be float32";
    t = mshadow::kFloat32;
  }
  (*out)[0] = mshadow::kUint8;
  (*out)[1] = mshadow::kFloat32;
  (*out)[2] = mshadow::kFloat32;
  return true;
}

bool infer_storage(const nnvm::NodeAttrs&, const int dev_mask, mxnet::DispatchMode* mode,
                   std::vector<int>* in, std::vector<int>* out) {
  for (int s : *in) {
    if (s != mxnet::kDefaultStorage && s != -1) return false;
  }
  for (int& s : *out) s = mxnet::kDefaultStorage;
  *mode = mxnet::DispatchMode::kFComputeEx;
  return true;
}

// A plain (unblocked) 4-d descriptor, N x H x W x C or N x C x H x W in memory.
dnnl::memory::desc plain_desc(const TShape& s, dnnl_data_type_t type, bool nhwc) {
  dnnl_memory_desc_t d;
  std::memset(&d, 0, sizeof d);
  d.ndims = 4;
  for (int i = 0; i < 4; ++i) d.dims[i] = d.padded_dims[i] = s[i];
  d.data_type = type;
  d.format_kind = dnnl_blocked;
  dnnl_dims_t& st = d.format_desc.blocking.strides;
  if (nhwc) {
    st[1] = 1, st[3] = s[1], st[2] = s[1] * s[3], st[0] = s[1] * s[2] * s[3];
  } else {
    st[3] = 1, st[2] = s[3], st[1] = s[2] * s[3], st[0] = s[1] * s[2] * s[3];
  }
  return dnnl::memory::desc(d);
}

template <typename T>
T* data_of(const NDArray& a) {
  return reinterpret_cast<T*>(static_cast<char*>(a.storage_handle().dptr) + a.byte_offset());
}

// Calls per path (0: N x C x H x W, 1: N x H x W x C), for gluon_resnest_onednn_calls().
std::atomic<int64_t> calls[2];

bool force_plain() {
  const char* v = std::getenv("GLUON_RESNEST_NATIVE_LAYOUT");
  return v != nullptr && std::strcmp(v, "nchw") == 0;
}

void forward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
             const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
             const std::vector<NDArray>& out) {
  const int radix = radix_of(attrs);
  const float out_max = out_max_of(attrs);
  if (req[0] == mxnet::kNullOp) return;
  CHECK(req[0] == mxnet::kWriteTo || req[0] == mxnet::kWriteInplace)
      << kName << ": only writes its output";
  gluon_resnest::SaSumU8 p;
  p.radix = radix;
  p.pool = pooled(attrs);
  const TShape& xs = in[1 + 2 * radix].shape();
  const TShape& ys = out[0].shape();
  p.N = xs[0], p.C = xs[1], p.H = xs[2], p.W = xs[3], p.Ho = ys[2], p.Wo = ys[3];
  // Splits already in N x H x W x C are read in place, and the output is written in it.
  bool nhwc = !force_plain();
  const dnnl::memory::desc x_nhwc = plain_desc(xs, dnnl_u8, true);
  for (int r = 0; r < radix && nhwc; ++r)
    nhwc = in[1 + 2 * radix + r].GetMKLDNNData(x_nhwc) != nullptr;
  NDArray& y = const_cast<NDArray&>(out[0]);
  // A view cannot take a oneDNN layout (null): then the plain path writes it.
  if (nhwc) nhwc = y.CreateMKLDNNData(plain_desc(ys, dnnl_u8, true)) != nullptr;
  if (!nhwc) CHECK(y.CreateMKLDNNData(plain_desc(ys, dnnl_u8, false)) != nullptr);
  std::vector<NDArray> plain;  // keeps reordered inputs alive
  plain.reserve(radix + 1);
  for (int r = 0; r < radix; ++r) {
    const float lo = std::fabs(*data_of<float>(in[1 + 2 * r]));
    const float hi = std::fabs(*data_of<float>(in[2 + 2 * r]));
    p.scale[r] = std::max(lo, hi) / out_max;
    const NDArray& x = in[1 + 2 * radix + r];
    if (nhwc) {
      p.x[r] = data_of<uint8_t>(x);
    } else {
      plain.push_back(x.Reorder2Default());
      p.x[r] = data_of<uint8_t>(plain.back());
    }
  }
  plain.push_back(in[0].Reorder2Default());
  p.a = data_of<float>(plain.back());
  p.y = data_of<uint8_t>(y);
  *data_of<float>(out[1]) = 0.f;
  *data_of<float>(out[2]) = out_max;
  calls[nhwc ? 1 : 0].fetch_add(1, std::memory_order_relaxed);
  if (nhwc) {
    static thread_local std::vector<uint8_t> plane;
    if (p.pool) plane.resize(p.N * p.H * p.W * p.C);
    gluon_resnest::sa_sum_u8_nhwc(p, plane.data());
  } else {
    gluon_resnest::sa_sum_u8_nchw(p);
  }
}

// Quantized values are not differentiable: every input's gradient is zero, as for MXNet's own
// quantized operators (a hybridized block builds its backward graph even for inference). The
// function is MXNet's (that of _contrib_dequantize), so the graph nodes it makes are MXNet's too.
nnvm::FGradient zero_gradients() {
  static const nnvm::OpMap<nnvm::FGradient>& grads =
      nnvm::Op::GetAttr<nnvm::FGradient>("FGradient");
  const nnvm::Op* dequantize = nnvm::Op::Get("_contrib_dequantize");
  CHECK(grads.count(dequantize)) << "gluon_resnest: MXNet's dequantize has no FGradient";
  return grads[dequantize];
}

}  // namespace

// How many times the operator ran on each path: nhwc = 1 (oneDNN layout read in place) or 0.
extern "C" int64_t gluon_resnest_onednn_calls(int nhwc) {
  return calls[nhwc ? 1 : 0].load(std::memory_order_relaxed);
}


// ---- float32 inference: convolutions on oneDNN 3, Split-Attention in N x H x W x C ----
//
// gluon_resnest_conv runs a convolution (with its bias, optionally the residual sum and the
// ReLU) through conv_dnnl3.cc's library, which this library opens when the package hands it
// the path (gluon_resnest_set_conv_library). Its output is N x H x W x C, declared to MXNet as
// a oneDNN layout, and an N x H x W x C input is read in place. gluon_resnest_sa_gap_nhwc and
// gluon_resnest_sa_sum_nhwc are the float32 Split-Attention operators of split_attention.cc,
// forward only, reading and writing that layout in place (any other layout is reordered to
// N x C x H x W first).
namespace {

struct ConvSpec {  // mirrors grc_conv_spec in conv_dnnl3.cc
  int64_t n, ic, ih, iw, oc, oh, ow, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, groups;
  int32_t src_nhwc, relu, sum, has_bias, winograd, reserved;
};

struct ConvLib {
  void* (*create)(const ConvSpec*, const float*, const float*, char*, int) = nullptr;
  int (*run)(void*, const float*, float*) = nullptr;
  const char* (*impl)(const void*) = nullptr;
  void (*release)(void*) = nullptr;
  int (*reorder)(const float*, float*, int64_t, int64_t, int64_t, int64_t, int) = nullptr;
};
ConvLib conv_lib;
std::string conv_lib_error = "gluon_resnest_set_conv_library was not called";

constexpr char kConv[] = "gluon_resnest_conv";

// "(3, 3)", "3" or "[3,3]" -> {3, 3}; fallback when the attribute is absent.
std::vector<int64_t> tuple_attr(const nnvm::NodeAttrs& attrs, const char* key,
                                std::vector<int64_t> fallback) {
  auto it = attrs.dict.find(key);
  if (it == attrs.dict.end() || it->second.empty() || it->second == "()") return fallback;
  std::vector<int64_t> v;
  const char* p = it->second.c_str();
  while (*p) {
    if ((*p >= '0' && *p <= '9') || *p == '-') {
      char* end;
      v.push_back(std::strtoll(p, &end, 10));
      p = end;
    } else {
      ++p;
    }
  }
  if (v.size() == 1) v.push_back(v[0]);
  CHECK(v.size() == 2) << kConv << ": attribute " << key << " must hold two integers, got "
                       << it->second;
  return v;
}

int64_t int_attr(const nnvm::NodeAttrs& attrs, const char* key, int64_t fallback) {
  auto it = attrs.dict.find(key);
  if (it == attrs.dict.end()) return fallback;
  if (it->second == "True") return 1;
  if (it->second == "False") return 0;
  return std::strtoll(it->second.c_str(), nullptr, 10);
}

struct ConvAttrs {
  std::vector<int64_t> kernel, stride, pad, dilate;
  int64_t num_filter, groups;
  bool relu, sum, winograd;
};

ConvAttrs conv_attrs(const nnvm::NodeAttrs& attrs) {
  ConvAttrs a;
  a.kernel = tuple_attr(attrs, "kernel", {});
  CHECK(a.kernel.size() == 2) << kConv << ": attribute 'kernel' is required";
  a.stride = tuple_attr(attrs, "stride", {1, 1});
  a.pad = tuple_attr(attrs, "pad", {0, 0});
  a.dilate = tuple_attr(attrs, "dilate", {1, 1});
  a.num_filter = int_attr(attrs, "num_filter", 0);
  CHECK(a.num_filter > 0) << kConv << ": attribute 'num_filter' must be positive";
  a.groups = int_attr(attrs, "num_group", 1);
  a.relu = int_attr(attrs, "relu", 0) != 0;
  a.sum = int_attr(attrs, "sum", 0) != 0;
  a.winograd = int_attr(attrs, "winograd", 0) != 0;
  return a;
}

uint32_t conv_num_inputs(const nnvm::NodeAttrs& attrs) {
  return int_attr(attrs, "sum", 0) != 0 ? 4 : 3;
}

void assign_shape(mxnet::ShapeVector* shapes, size_t i, const TShape& s, const char* op) {
  TShape& have = (*shapes)[i];
  if (!mxnet::shape_is_known(have)) {
    have = s;
  } else {
    CHECK(have == s) << op << ": shape " << have << " where " << s << " is expected";
  }
}

bool conv_infer_shape(const nnvm::NodeAttrs& attrs, mxnet::ShapeVector* in,
                      mxnet::ShapeVector* out) {
  const ConvAttrs a = conv_attrs(attrs);
  const TShape x = (*in)[0];
  if (!mxnet::shape_is_known(x)) return false;
  CHECK(x.ndim() == 4) << kConv << ": expected an input of shape (N, C, H, W), got " << x;
  CHECK(x[1] % a.groups == 0 && a.num_filter % a.groups == 0)
      << kConv << ": channels are not divisible by num_group";
  TShape w(4, -1);
  w[0] = a.num_filter, w[1] = x[1] / a.groups, w[2] = a.kernel[0], w[3] = a.kernel[1];
  assign_shape(in, 1, w, kConv);
  assign_shape(in, 2, TShape(1, a.num_filter), kConv);
  TShape y(4, -1);
  y[0] = x[0], y[1] = a.num_filter;
  for (int i = 0; i < 2; ++i) {
    const int64_t extent = a.dilate[i] * (a.kernel[i] - 1) + 1;
    y[2 + i] = (x[2 + i] + 2 * a.pad[i] - extent) / a.stride[i] + 1;
    CHECK(y[2 + i] > 0) << kConv << ": the kernel does not fit the input " << x;
  }
  if (a.sum) assign_shape(in, 3, y, kConv);
  assign_shape(out, 0, y, kConv);
  return true;
}

bool f32_infer_type(const nnvm::NodeAttrs& attrs, std::vector<int>* in, std::vector<int>* out) {
  for (int& t : *in) {
    CHECK(t == -1 || t == mshadow::kFloat32) << attrs.op->name << ": inputs must be float32";
    t = mshadow::kFloat32;
  }
  for (int& t : *out) t = mshadow::kFloat32;
  return true;
}

std::vector<std::pair<int, int>> conv_inplace(const nnvm::NodeAttrs& attrs) {
  if (int_attr(attrs, "sum", 0) != 0) return {{3, 0}};
  return {};
}

std::atomic<int64_t> conv_calls[2];
std::atomic<int64_t> sum_copies;  // per input layout: 0 N x C x H x W, 1 N x H x W x C

// Whether a is a float32 tensor in N x H x W x C, as oneDNN knows it.
bool is_nhwc(const NDArray& a) {
  return !force_plain() && a.IsMKLDNNData() &&
         a.GetMKLDNNData(plain_desc(a.shape(), dnnl_f32, true)) != nullptr;
}

// a's data as N x C x H x W (reordered into a new array when a holds another layout).
NDArray as_plain(const NDArray& a) { return a.IsMKLDNNData() ? a.Reorder2Default() : a; }

float* scratch(int slot, size_t n) {
  static thread_local std::vector<float> buffers[3];
  if (buffers[slot].size() < n) buffers[slot].resize(n);
  return buffers[slot].data();
}

struct ConvEntry {
  void* conv = nullptr;
  size_t weight_version = 0, bias_version = 0;
  std::vector<float> fingerprint;
};

// Values spread over the weights and the bias. A freed network's weights may leave their memory
// to another network's of the same geometry; their values tell the two apart.
std::vector<float> fingerprint(const float* w, size_t nw, const float* b, size_t nb) {
  constexpr size_t kSamples = 256;
  std::vector<float> f;
  f.reserve(2 * kSamples + 2);
  for (size_t i = 0; i < kSamples; ++i) f.push_back(w[i * nw / kSamples]);
  f.push_back(w[nw - 1]);
  for (size_t i = 0; i < kSamples && i < nb; ++i) f.push_back(b[i * nb / std::min(kSamples, nb)]);
  f.push_back(b[nb - 1]);
  return f;
}

// The primitive of this node's geometry and weights, made (weights reordered) on first use and
// again when the weights changed (their version, or the values of fingerprint()).
void* conv_primitive(const ConvSpec& spec, const NDArray& weight, const NDArray& bias) {
  static std::mutex lock;
  static auto* cache = new std::unordered_map<std::string, ConvEntry>;  // kept until exit
  const NDArray w = as_plain(weight), b = as_plain(bias);
  const float* wp = data_of<float>(w);
  const float* bp = data_of<float>(b);
  std::string key(reinterpret_cast<const char*>(&spec), sizeof spec);
  key.append(reinterpret_cast<const char*>(&wp), sizeof wp);
  key.append(reinterpret_cast<const char*>(&bp), sizeof bp);
  std::vector<float> print = fingerprint(wp, w.shape().Size(), bp, b.shape().Size());
  std::lock_guard<std::mutex> guard(lock);
  ConvEntry& e = (*cache)[key];
  const size_t wv = weight.version(), bv = bias.version();
  if (e.conv != nullptr &&
      (e.weight_version != wv || e.bias_version != bv ||
       std::memcmp(e.fingerprint.data(), print.data(), print.size() * sizeof(float)) != 0)) {
    conv_lib.release(e.conv);
    e.conv = nullptr;
  }
  if (e.conv == nullptr) {
    char err[512] = {0};
    e.conv = conv_lib.create(&spec, wp, bp, err, sizeof err);
    CHECK(e.conv != nullptr) << kConv << ": oneDNN 3 made no convolution: " << err;
    e.weight_version = wv, e.bias_version = bv;
    e.fingerprint = std::move(print);
  }
  return e.conv;
}

void conv_forward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                  const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                  const std::vector<NDArray>& out) {
  CHECK(conv_lib.create != nullptr) << kConv << ": the oneDNN 3 library is not loaded ("
                                    << conv_lib_error << ")";
  if (req[0] == mxnet::kNullOp) return;
  const ConvAttrs a = conv_attrs(attrs);
  const TShape& xs = in[0].shape();
  const TShape& ys = out[0].shape();
  ConvSpec spec;
  std::memset(&spec, 0, sizeof spec);
  spec.n = xs[0], spec.ic = xs[1], spec.ih = xs[2], spec.iw = xs[3];
  spec.oc = ys[1], spec.oh = ys[2], spec.ow = ys[3];
  spec.kh = a.kernel[0], spec.kw = a.kernel[1], spec.sh = a.stride[0], spec.sw = a.stride[1];
  spec.pt = a.pad[0], spec.pl = a.pad[1];
  spec.pb = (spec.oh - 1) * spec.sh + a.dilate[0] * (spec.kh - 1) + 1 - spec.ih - spec.pt;
  spec.pr = (spec.ow - 1) * spec.sw + a.dilate[1] * (spec.kw - 1) + 1 - spec.iw - spec.pl;
  spec.dh = a.dilate[0] - 1, spec.dw = a.dilate[1] - 1, spec.groups = a.groups;
  spec.relu = a.relu, spec.sum = a.sum, spec.has_bias = 1, spec.winograd = a.winograd;
  // The input: N x H x W x C in place, any other layout reordered to it (oneDNN's fast
  // kernels read only that layout).
  NDArray x_plain;
  const float* src;
  spec.src_nhwc = 1;
  const bool in_place = is_nhwc(in[0]);
  if (in_place) {
    src = data_of<float>(in[0]);
  } else {
    x_plain = as_plain(in[0]);
    float* t = scratch(0, xs.Size());
    CHECK_EQ(conv_lib.reorder(data_of<float>(x_plain), t, xs[0], xs[1], xs[2], xs[3], 1), 0);
    src = t;
  }
  conv_calls[in_place ? 1 : 0].fetch_add(1, std::memory_order_relaxed);
  void* conv = conv_primitive(spec, in[1], in[2]);
  NDArray& y = const_cast<NDArray&>(out[0]);
  const dnnl::memory::desc y_nhwc = plain_desc(ys, dnnl_f32, true);
  float* dst = nullptr;
  if (a.sum) {
    // The residual, copied into the output unless the output is it (in place) already.
    const NDArray& r = in[3];
    const bool r_nhwc = is_nhwc(r);
    NDArray r_plain;
    const float* rp;
    if (r_nhwc) {
      rp = data_of<float>(r);
    } else {
      r_plain = as_plain(r);
      rp = data_of<float>(r_plain);
    }
    // Read the residual before the output is declared N x H x W x C (it may be the same memory).
    float* staged = nullptr;
    if (!r_nhwc) {
      staged = scratch(1, ys.Size());
      CHECK_EQ(conv_lib.reorder(rp, staged, ys[0], ys[1], ys[2], ys[3], 1), 0);
    }
    const bool direct = y.CreateMKLDNNData(y_nhwc) != nullptr;
    dst = direct ? data_of<float>(y) : scratch(2, ys.Size());
    if (staged != nullptr) {
      std::memcpy(dst, staged, sizeof(float) * ys.Size());
    } else if (dst != rp) {
      sum_copies.fetch_add(1, std::memory_order_relaxed);
      std::memcpy(dst, rp, sizeof(float) * ys.Size());
    }
    CHECK_EQ(conv_lib.run(conv, src, dst), 0) << kConv << ": the convolution failed";
    if (!direct) CHECK_EQ(conv_lib.reorder(dst, data_of<float>(y), ys[0], ys[1], ys[2], ys[3], 0), 0);
    return;
  }
  // A view cannot take a oneDNN layout: then the output is reordered into it.
  const bool direct = y.CreateMKLDNNData(y_nhwc) != nullptr;
  dst = direct ? data_of<float>(y) : scratch(2, ys.Size());
  CHECK_EQ(conv_lib.run(conv, src, dst), 0) << kConv << ": the convolution failed";
  if (!direct) CHECK_EQ(conv_lib.reorder(dst, data_of<float>(y), ys[0], ys[1], ys[2], ys[3], 0), 0);
}

// ---- gluon_resnest_sa_gap_nhwc: y[n, c] = mean over (h, w) of sum_r x[n, r*C + c, h, w] ----

constexpr char kGap[] = "gluon_resnest_sa_gap_nhwc";
constexpr char kSum[] = "gluon_resnest_sa_sum_nhwc";

int f32_radix(const nnvm::NodeAttrs& attrs, const char* op) {
  const int64_t radix = int_attr(attrs, "radix", 0);
  CHECK(radix >= 1 && radix <= kMaxRadix) << op << ": radix must be in [1, " << kMaxRadix << "]";
  return static_cast<int>(radix);
}

bool gap_infer_shape(const nnvm::NodeAttrs& attrs, mxnet::ShapeVector* in,
                     mxnet::ShapeVector* out) {
  const int radix = f32_radix(attrs, kGap);
  const TShape x = (*in)[0];
  if (!mxnet::shape_is_known(x)) return false;
  CHECK(x.ndim() == 4 && x[1] % radix == 0)
      << kGap << ": expected x of shape (N, radix * C, H, W), got " << x;
  TShape y(4, 1);
  y[0] = x[0], y[1] = x[1] / radix;
  assign_shape(out, 0, y, kGap);
  return true;
}

void gap_forward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                 const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                 const std::vector<NDArray>& out) {
  if (req[0] == mxnet::kNullOp) return;
  const int radix = f32_radix(attrs, kGap);
  const TShape& xs = in[0].shape();
  const int64_t N = xs[0], RC = xs[1], C = RC / radix, HW = xs[2] * xs[3];
  float* yp = data_of<float>(out[0]);
  const float inv = 1.f / static_cast<float>(HW);
  if (is_nhwc(in[0])) {
    // Column sums over the feature map in blocks of channels (so that a batch of one still
    // spreads over the threads), then the sum over the splits.
    const float* x = data_of<float>(in[0]);
    constexpr int64_t kBlock = 64;
    const int64_t blocks = (RC + kBlock - 1) / kBlock;
    float* acc = scratch(1, N * RC);
#pragma omp parallel for
    for (int64_t nb = 0; nb < N * blocks; ++nb) {
      const int64_t n = nb / blocks, c0 = (nb % blocks) * kBlock;
      const int64_t c1 = std::min(RC, c0 + kBlock);
      float* a = acc + n * RC;
      for (int64_t c = c0; c < c1; ++c) a[c] = 0.f;
      const float* xn = x + n * HW * RC;
      for (int64_t p = 0; p < HW; ++p) {
        const float* row = xn + p * RC;
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) a[c] += row[c];
      }
    }
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        float s = 0.f;
        for (int r = 0; r < radix; ++r) s += acc[n * RC + r * C + c];
        yp[n * C + c] = s * inv;
      }
    }
    return;
  }
  const NDArray xa = as_plain(in[0]);
  gluon_resnest::sa_gap_f32_nchw(data_of<float>(xa), N, C, radix, HW, yp);
}

// ---- gluon_resnest_sa_sum_nhwc: y[n, c] = sum_r a[n, r*C + c] * x[n, r*C + c], optionally
// 3x3/2 average pooled with padding 1 (padding counted, as the avd pooling) ----

bool sum_infer_shape(const nnvm::NodeAttrs& attrs, mxnet::ShapeVector* in,
                     mxnet::ShapeVector* out) {
  const int radix = f32_radix(attrs, kSum);
  const TShape a = (*in)[0], x = (*in)[1];
  if (!mxnet::shape_is_known(x) || !mxnet::shape_is_known(a)) return false;
  CHECK(x.ndim() == 4 && a.ndim() == 4 && a[0] == x[0] && a[1] == x[1] && a[2] == 1 &&
        a[3] == 1 && x[1] % radix == 0)
      << kSum << ": expected an attention of shape (N, radix * C, 1, 1) and x of shape "
      << "(N, radix * C, H, W), got " << a << " and " << x;
  TShape y = x;
  y[1] = x[1] / radix;
  if (pooled(attrs)) {
    y[2] = (x[2] - 1) / 2 + 1;
    y[3] = (x[3] - 1) / 2 + 1;
  }
  assign_shape(out, 0, y, kSum);
  return true;
}

std::atomic<int64_t> sum_calls[2];

void sum_forward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                 const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                 const std::vector<NDArray>& out) {
  if (req[0] == mxnet::kNullOp) return;
  const int radix = f32_radix(attrs, kSum);
  const bool pool = pooled(attrs);
  const TShape& xs = in[1].shape();
  const TShape& ys = out[0].shape();
  const int64_t N = xs[0], RC = xs[1], C = RC / radix, H = xs[2], W = xs[3];
  const int64_t Ho = ys[2], Wo = ys[3];
  const NDArray a_plain = as_plain(in[0]);
  const float* a = data_of<float>(a_plain);
  NDArray& y = const_cast<NDArray&>(out[0]);
  bool nhwc = is_nhwc(in[1]);
  if (nhwc) nhwc = y.CreateMKLDNNData(plain_desc(ys, dnnl_f32, true)) != nullptr;
  sum_calls[nhwc ? 1 : 0].fetch_add(1, std::memory_order_relaxed);
  if (nhwc) {
    const float* x = data_of<float>(in[1]);
    float* yp = data_of<float>(y);
    float* plane = pool ? scratch(1, N * H * W * C) : yp;
#pragma omp parallel for
    for (int64_t nh = 0; nh < N * H; ++nh) {  // one row of W pixels
      gluon_resnest::f32::weighted_pixels(x + nh * W * RC, C, RC, a + nh / H * RC, C, radix, W,
                                          C, plane + nh * W * C, C);
    }
    if (!pool) return;
#pragma omp parallel for
    for (int64_t nh = 0; nh < N * Ho; ++nh) {  // one output row
      const int64_t n = nh / Ho, oh = nh % Ho;
      gluon_resnest::f32::avg_pool_pixels(plane + n * H * W * C, H, W, C, yp + n * Ho * Wo * C,
                                          oh, oh + 1, Wo);
    }
    return;
  }
  CHECK(y.CreateMKLDNNData(plain_desc(ys, dnnl_f32, false)) != nullptr);
  const NDArray xa = as_plain(in[1]);
  gluon_resnest::sa_sum_f32_nchw(a, data_of<float>(xa), N, C, radix, H, W, pool,
                                 data_of<float>(y));
}

// ---- gluon_resnest_sa_attention: the attention of the weighted sum from the pooled input ----
// fc1 (its BatchNorm folded) + ReLU, fc2, and the softmax over the radix splits in one pass over
// the (N, C, 1, 1) pooled vector (gluon_resnest::sa_attention_f32); radix >= 2.

constexpr char kAttention[] = "gluon_resnest_sa_attention";

struct AttentionAttrs {
  int radix;
  int64_t cardinality, hidden;
};

AttentionAttrs attention_attrs(const nnvm::NodeAttrs& attrs) {
  AttentionAttrs a;
  a.radix = f32_radix(attrs, kAttention);
  CHECK(a.radix >= 2) << kAttention << ": radix must be at least 2 (a sigmoid gate for 1)";
  a.cardinality = int_attr(attrs, "cardinality", 1);
  a.hidden = int_attr(attrs, "hidden", 0);
  CHECK(a.cardinality >= 1 && a.hidden >= 1 && a.hidden % a.cardinality == 0)
      << kAttention << ": attributes 'hidden' (positive) and 'cardinality' (dividing it) are "
      << "required";
  return a;
}

bool attention_infer_shape(const nnvm::NodeAttrs& attrs, mxnet::ShapeVector* in,
                           mxnet::ShapeVector* out) {
  const AttentionAttrs a = attention_attrs(attrs);
  const TShape g = (*in)[0];
  if (!mxnet::shape_is_known(g)) return false;
  CHECK(g.ndim() == 4 && g[2] == 1 && g[3] == 1 && g[1] % a.cardinality == 0)
      << kAttention << ": expected a pooled input of shape (N, C, 1, 1), C divisible by the "
      << "cardinality, got " << g;
  const int64_t C = g[1], K = a.cardinality, D = a.hidden;
  TShape w1(4, 1), w2(4, 1);
  w1[0] = D, w1[1] = C / K;
  w2[0] = a.radix * C, w2[1] = D / K;
  assign_shape(in, 1, w1, kAttention);
  assign_shape(in, 2, TShape(1, D), kAttention);
  assign_shape(in, 3, w2, kAttention);
  assign_shape(in, 4, TShape(1, a.radix * C), kAttention);
  TShape y(4, 1);
  y[0] = g[0], y[1] = a.radix * C;
  assign_shape(out, 0, y, kAttention);
  return true;
}

void attention_forward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                       const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                       const std::vector<NDArray>& out) {
  if (req[0] == mxnet::kNullOp) return;
  const AttentionAttrs a = attention_attrs(attrs);
  const TShape& gs = in[0].shape();
  const int64_t N = gs[0], C = gs[1], D = a.hidden;
  NDArray plain[5];
  for (int i = 0; i < 5; ++i) plain[i] = as_plain(in[i]);
  float* h = scratch(0, N * (D + a.radix * C));
  NDArray& y = const_cast<NDArray&>(out[0]);
  if (y.IsMKLDNNData()) CHECK(y.CreateMKLDNNData(plain_desc(y.shape(), dnnl_f32, false)));
  gluon_resnest::sa_attention_f32(data_of<float>(plain[0]), N, C, D, a.radix, a.cardinality,
                                  data_of<float>(plain[1]), data_of<float>(plain[2]),
                                  data_of<float>(plain[3]), data_of<float>(plain[4]), h,
                                  h + N * D, data_of<float>(y));
}

// ---- float32 training: split_attention.cc's gluon_resnest_sa_gap / gluon_resnest_sa_sum and
// their backward operators on oneDNN's N x C/16 x H x W x 16 layout ----
//
// In training, MXNet's oneDNN convolutions, BatchNorm and ReLU keep their feature maps in
// nChw16c. The operator-library interface reorders each such input to N x C x H x W before the
// call and hands back plain outputs, which the next convolution reorders again. After both
// libraries are loaded, gluon_resnest_blocked_training() makes these four operators oneDNN-aware
// here: when the splits are in nChw16c (and the channels per split a multiple of 16) they are
// read in place and the feature-map outputs written in it; otherwise the library's own function
// runs, as before.
constexpr int kBlk = 16;

// N x C x H x W as oneDNN's nChw16c (aBcd16b); C a multiple of 16.
dnnl::memory::desc blocked16_desc(const TShape& s) {
  dnnl_memory_desc_t d;
  std::memset(&d, 0, sizeof d);
  d.ndims = 4;
  for (int i = 0; i < 4; ++i) d.dims[i] = d.padded_dims[i] = s[i];
  d.data_type = dnnl_f32;
  d.format_kind = dnnl_blocked;
  auto& b = d.format_desc.blocking;
  b.inner_nblks = 1;
  b.inner_blks[0] = kBlk;
  b.inner_idxs[0] = 1;
  b.strides[3] = kBlk;
  b.strides[2] = s[3] * kBlk;
  b.strides[1] = s[2] * s[3] * kBlk;
  b.strides[0] = s[1] * s[2] * s[3];
  return dnnl::memory::desc(d);
}

// Whether a is a float32 4-d tensor in nChw16c whose splits (radix of them) start on a block.
bool is_blocked16(const NDArray& a, int radix) {
  const TShape& s = a.shape();
  return !force_plain() && a.dtype() == mshadow::kFloat32 && s.ndim() == 4 &&
         s[1] % (radix * kBlk) == 0 && a.IsMKLDNNData() &&
         a.GetMKLDNNData(blocked16_desc(s)) != nullptr;
}

// Declares out as nChw16c (false for a view, which cannot take a oneDNN layout).
bool make_blocked16(const NDArray& out) {
  return const_cast<NDArray&>(out).CreateMKLDNNData(blocked16_desc(out.shape())) != nullptr;
}

bool writes(mxnet::OpReqType r) { return r == mxnet::kWriteTo || r == mxnet::kNullOp; }

mxnet::FComputeEx library_fn[4];        // gap, sum, gap backward, sum backward
std::atomic<int64_t> train_calls[2];    // 0: the library's function, 1: nChw16c in place

// acc[j] += sum over p < HW of x[p * 16 + j]
GR_MULTIVERSION
void block_sum(const float* x, int64_t HW, double* acc) {
  float part[4][kBlk] = {};
  int64_t p = 0;
  for (; p + 4 <= HW; p += 4)
    for (int u = 0; u < 4; ++u)
      for (int j = 0; j < kBlk; ++j) part[u][j] += x[(p + u) * kBlk + j];
  for (; p < HW; ++p)
    for (int j = 0; j < kBlk; ++j) part[0][j] += x[p * kBlk + j];
  for (int u = 0; u < 4; ++u)
    for (int j = 0; j < kBlk; ++j) acc[j] += part[u][j];
}

// dx = s * g and dot[j] += sum_p g * x, over HW pixels of 16 channels.
GR_MULTIVERSION
void block_scale_dot(const float* g, const float* x, const float* s, int64_t HW, float* dx,
                     double* dot) {
  float part[kBlk] = {};
  for (int64_t p = 0; p < HW; ++p)
    for (int j = 0; j < kBlk; ++j) {
      dx[p * kBlk + j] = s[j] * g[p * kBlk + j];
      part[j] += g[p * kBlk + j] * x[p * kBlk + j];
    }
  for (int j = 0; j < kBlk; ++j) dot[j] += part[j];
}

GR_MULTIVERSION
void block_fill(const float* v, int64_t HW, float* y) {
  for (int64_t p = 0; p < HW; ++p)
    for (int j = 0; j < kBlk; ++j) y[p * kBlk + j] = v[j];
}

// Gradient of the nChw16c avd pooling (gluon_resnest::f32::avg_pool_pixels): each input
// pixel gets dy / 9 of every window covering it.
GR_MULTIVERSION
void block_avg_pool_grad(const float* dy, int64_t Ho, int64_t Wo, float* g, int64_t H,
                         int64_t W) {
  std::fill(g, g + H * W * kBlk, 0.f);
  for (int64_t oh = 0; oh < Ho; ++oh)
    for (int64_t ow = 0; ow < Wo; ++ow) {
      float v[kBlk];
      for (int j = 0; j < kBlk; ++j) v[j] = dy[(oh * Wo + ow) * kBlk + j] * (1.f / 9.f);
      for (int64_t h = std::max<int64_t>(2 * oh - 1, 0); h <= std::min(2 * oh + 1, H - 1); ++h)
        for (int64_t w = std::max<int64_t>(2 * ow - 1, 0); w <= std::min(2 * ow + 1, W - 1); ++w)
          for (int j = 0; j < kBlk; ++j) g[(h * W + w) * kBlk + j] += v[j];
    }
}

std::vector<float>& plane_buffer() {
  static thread_local std::vector<float> plane;
  return plane;
}

// Inputs x (N, R*C, H, W); output g (N, C, 1, 1).
void train_gap_forward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                       const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                       const std::vector<NDArray>& out) {
  const int radix = f32_radix(attrs, "gluon_resnest_sa_gap");
  if (!writes(req[0]) || !is_blocked16(in[0], radix)) {
    train_calls[0].fetch_add(1, std::memory_order_relaxed);
    return library_fn[0](attrs, ctx, in, req, out);
  }
  train_calls[1].fetch_add(1, std::memory_order_relaxed);
  if (req[0] == mxnet::kNullOp) return;
  const TShape& xs = in[0].shape();
  const int64_t N = xs[0], CB = xs[1] / radix / kBlk, HW = xs[2] * xs[3];
  const float* x = data_of<float>(in[0]);
  float* g = data_of<float>(out[0]);
#pragma omp parallel for schedule(static)
  for (int64_t nb = 0; nb < N * CB; ++nb) {
    const int64_t n = nb / CB, cb = nb % CB;
    double acc[kBlk] = {};
    for (int r = 0; r < radix; ++r)
      block_sum(x + ((n * radix + r) * CB + cb) * HW * kBlk, HW, acc);
    for (int j = 0; j < kBlk; ++j) g[nb * kBlk + j] = static_cast<float>(acc[j] / HW);
  }
}

// Inputs dg (N, C, 1, 1), x, g; output dx (N, R*C, H, W) = dg / (H * W) for every split.
void train_gap_backward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                        const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                        const std::vector<NDArray>& out) {
  const int radix = f32_radix(attrs, "gluon_resnest_sa_gap");
  if (!writes(req[0]) || !is_blocked16(in[1], radix) ||
      (req[0] == mxnet::kWriteTo && !make_blocked16(out[0]))) {
    train_calls[0].fetch_add(1, std::memory_order_relaxed);
    return library_fn[2](attrs, ctx, in, req, out);
  }
  train_calls[1].fetch_add(1, std::memory_order_relaxed);
  if (req[0] == mxnet::kNullOp) return;
  const TShape& xs = out[0].shape();
  const int64_t N = xs[0], CB = xs[1] / radix / kBlk, HW = xs[2] * xs[3];
  const NDArray dg_plain = as_plain(in[0]);
  const float* dg = data_of<float>(dg_plain);
  float* dx = data_of<float>(out[0]);
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < N * radix * CB; ++k) {
    const int64_t n = k / (radix * CB), cb = k % CB;
    float v[kBlk];
    for (int j = 0; j < kBlk; ++j) v[j] = dg[(n * CB + cb) * kBlk + j] / static_cast<float>(HW);
    block_fill(v, HW, dx + k * HW * kBlk);
  }
}

// Inputs a (N, R*C, 1, 1), x (N, R*C, H, W); output y (N, C, Ho, Wo).
void train_sum_forward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                       const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                       const std::vector<NDArray>& out) {
  const int radix = f32_radix(attrs, "gluon_resnest_sa_sum");
  if (!writes(req[0]) || !is_blocked16(in[1], radix) ||
      (req[0] == mxnet::kWriteTo && !make_blocked16(out[0]))) {
    train_calls[0].fetch_add(1, std::memory_order_relaxed);
    return library_fn[1](attrs, ctx, in, req, out);
  }
  train_calls[1].fetch_add(1, std::memory_order_relaxed);
  if (req[0] == mxnet::kNullOp) return;
  const bool pool = pooled(attrs);
  const TShape& xs = in[1].shape();
  const TShape& ys = out[0].shape();
  const int64_t N = xs[0], RC = xs[1], CB = RC / radix / kBlk, H = xs[2], W = xs[3];
  const int64_t Ho = ys[2], Wo = ys[3];
  const NDArray a_plain = as_plain(in[0]);
  const float* a = data_of<float>(a_plain);
  const float* x = data_of<float>(in[1]);
  float* y = data_of<float>(out[0]);
  const int64_t step = CB * H * W * kBlk;  // from one split's block to the next split's
  if (!pool) {
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < N * CB * H; ++k) {
      const int64_t nb = k / H, h = k % H, n = nb / CB, cb = nb % CB;
      gluon_resnest::f32::weighted_pixels(x + ((n * radix * CB + cb) * H + h) * W * kBlk, step,
                                          kBlk, a + n * RC + cb * kBlk, CB * kBlk, radix, W,
                                          kBlk, y + (nb * H + h) * W * kBlk, kBlk);
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t nb = 0; nb < N * CB; ++nb) {
    const int64_t n = nb / CB, cb = nb % CB;
    std::vector<float>& plane = plane_buffer();
    plane.resize(H * W * kBlk);
    gluon_resnest::f32::weighted_pixels(x + (n * radix * CB + cb) * H * W * kBlk, step, kBlk,
                                        a + n * RC + cb * kBlk, CB * kBlk, radix, H * W, kBlk,
                                        plane.data(), kBlk);
    gluon_resnest::f32::avg_pool_pixels(plane.data(), H, W, kBlk, y + nb * Ho * Wo * kBlk, 0, Ho,
                                        Wo);
  }
}

// Inputs dy (N, C, Ho, Wo), a, x, y; outputs da (N, R*C, 1, 1), dx (N, R*C, H, W).
void train_sum_backward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                        const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                        const std::vector<NDArray>& out) {
  const int radix = f32_radix(attrs, "gluon_resnest_sa_sum");
  const bool blocked = writes(req[0]) && writes(req[1]) && is_blocked16(in[2], radix) &&
                       is_blocked16(in[0], 1) &&
                       (req[1] != mxnet::kWriteTo || make_blocked16(out[1]));
  if (!blocked) {
    train_calls[0].fetch_add(1, std::memory_order_relaxed);
    return library_fn[3](attrs, ctx, in, req, out);
  }
  train_calls[1].fetch_add(1, std::memory_order_relaxed);
  if (req[0] == mxnet::kNullOp && req[1] == mxnet::kNullOp) return;
  const bool pool = pooled(attrs);
  const TShape& xs = in[2].shape();
  const TShape& ys = in[0].shape();
  const int64_t N = xs[0], RC = xs[1], CB = RC / radix / kBlk, H = xs[2], W = xs[3];
  const int64_t HW = H * W, Ho = ys[2], Wo = ys[3];
  const NDArray a_plain = as_plain(in[1]);
  const float* a = data_of<float>(a_plain);
  const float* dy = data_of<float>(in[0]);
  const float* x = data_of<float>(in[2]);
  float* da = req[0] == mxnet::kNullOp ? nullptr : data_of<float>(out[0]);
  float* dx = req[1] == mxnet::kNullOp ? nullptr : data_of<float>(out[1]);
#pragma omp parallel for schedule(static)
  for (int64_t nb = 0; nb < N * CB; ++nb) {
    const int64_t n = nb / CB, cb = nb % CB;
    const float* g = dy + nb * Ho * Wo * kBlk;
    std::vector<float>& plane = plane_buffer();  // the pooling's gradient, dx when unwanted
    plane.resize(2 * HW * kBlk);
    if (pool) {
      block_avg_pool_grad(g, Ho, Wo, plane.data(), H, W);
      g = plane.data();
    }
    for (int r = 0; r < radix; ++r) {
      const int64_t blk = (n * radix + r) * CB + cb;
      const int64_t c0 = n * RC + (r * CB + cb) * kBlk;
      double dot[kBlk] = {};
      float* d = dx != nullptr ? dx + blk * HW * kBlk : plane.data() + HW * kBlk;
      block_scale_dot(g, x + blk * HW * kBlk, a + c0, HW, d, dot);
      if (da != nullptr)
        for (int j = 0; j < kBlk; ++j) da[c0 + j] = static_cast<float>(dot[j]);
    }
  }
}

template <typename T>
bool load_symbol(void* lib, const char* name, T* fn) {
  *fn = reinterpret_cast<T>(dlsym(lib, name));
  return *fn != nullptr;
}

}  // namespace

namespace {

using ComputeEx = void (*)(const nnvm::NodeAttrs&, const mxnet::OpContext&,
                           const std::vector<NDArray>&, const std::vector<mxnet::OpReqType>&,
                           const std::vector<NDArray>&);

// fn, with the fault GLUON_RESNEST_NATIVE_SELFTEST_PERTURB may ask for (split_attention_u8.h).
template <ComputeEx fn, const char* name>
void with_selftest_fault(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                         const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                         const std::vector<NDArray>& out) {
  const int fault = gluon_resnest::selftest_fault(name);
  if (fault == 2) std::abort();
  fn(attrs, ctx, in, req, out);
  if (fault != 1 || req[0] == mxnet::kNullOp) return;
  if (out[0].dtype() == mshadow::kUint8) {
    data_of<uint8_t>(out[0])[0] += 128;
  } else {
    data_of<float>(out[0])[0] += 1.f;
  }
}

// The same for the training operators, whose fallback (the operator library's function) has
// its own fault: only the nChw16c path adds one.
template <ComputeEx fn, const char* name>
void with_train_fault(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                      const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                      const std::vector<NDArray>& out) {
  const int fault = gluon_resnest::selftest_fault(name);
  if (fault == 2) std::abort();
  const int64_t library_runs = train_calls[0].load(std::memory_order_relaxed);
  fn(attrs, ctx, in, req, out);
  if (fault != 1 || req[0] == mxnet::kNullOp ||
      train_calls[0].load(std::memory_order_relaxed) != library_runs)
    return;
  data_of<float>(out[0])[0] += 1.f;
}

constexpr char kGapNhwc[] = "gluon_resnest_sa_gap_nhwc";
constexpr char kSumNhwc[] = "gluon_resnest_sa_sum_nhwc";
constexpr char kAttentionOp[] = "gluon_resnest_sa_attention";
constexpr char kTrainGap[] = "gluon_resnest_sa_gap";
constexpr char kTrainSum[] = "gluon_resnest_sa_sum";
constexpr char kTrainGapBackward[] = "_backward_gluon_resnest_sa_gap";
constexpr char kTrainSumBackward[] = "_backward_gluon_resnest_sa_sum";

}  // namespace

// Opens conv_dnnl3.cc's library; 0 on success, else 1 (the reason in gluon_resnest_conv's
// error messages and gluon_resnest_conv_library_error()).
extern "C" int gluon_resnest_set_conv_library(const char* path) {
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* e = dlerror();
    conv_lib_error = e != nullptr ? e : "dlopen failed";
    return 1;
  }
  ConvLib l;
  if (!load_symbol(lib, "grc_conv_create", &l.create) || !load_symbol(lib, "grc_conv_run", &l.run) ||
      !load_symbol(lib, "grc_conv_impl", &l.impl) || !load_symbol(lib, "grc_conv_free", &l.release) ||
      !load_symbol(lib, "grc_reorder", &l.reorder)) {
    conv_lib_error = std::string(path) + " lacks the grc_* functions";
    return 1;
  }
  conv_lib = l;
  conv_lib_error.clear();
  return 0;
}

// Makes split_attention.cc's float32 operators (gluon_resnest_sa_gap, gluon_resnest_sa_sum and
// their backward operators) read and write nChw16c in place; call once both libraries are
// loaded. 0 on success, 1 when an operator is not registered (the library is not loaded).
extern "C" int gluon_resnest_blocked_training() {
  static const char* const names[4] = {"gluon_resnest_sa_gap", "gluon_resnest_sa_sum",
                                       "_backward_gluon_resnest_sa_gap",
                                       "_backward_gluon_resnest_sa_sum"};
  static const mxnet::FComputeEx fns[4] = {
      with_train_fault<train_gap_forward, kTrainGap>,
      with_train_fault<train_sum_forward, kTrainSum>,
      with_train_fault<train_gap_backward, kTrainGapBackward>,
      with_train_fault<train_sum_backward, kTrainSumBackward>};
  static std::mutex lock;
  static bool done = false;
  std::lock_guard<std::mutex> guard(lock);
  if (done) return 0;
  const auto& current = nnvm::Op::GetAttr<mxnet::FComputeEx>("FComputeEx<cpu>");
  for (const char* name : names) {
    const nnvm::Op* op = dmlc::Registry<nnvm::Op>::Find(name);
    if (op == nullptr || !current.count(op)) return 1;
  }
  for (int i = 0; i < 4; ++i) {
    library_fn[i] = current[nnvm::Op::Get(names[i])];
    // Above the operator-library interface's priority (10, or 11 for a re-registration).
    nnvm::Op& op = dmlc::Registry<nnvm::Op>::Get()->__REGISTER_OR_GET__(names[i]);
    op.set_attr<mxnet::FComputeEx>("FComputeEx<cpu>", fns[i], 20);
    op.set_attr<bool>("TIsMKLDNN", true, 20);
  }
  done = true;
  return 0;
}

// Calls of those four operators: blocked = 1 read nChw16c in place, 0 ran the library's function.
extern "C" int64_t gluon_resnest_train_calls(int blocked) {
  return train_calls[blocked ? 1 : 0].load(std::memory_order_relaxed);
}

extern "C" const char* gluon_resnest_conv_library_error() { return conv_lib_error.c_str(); }

// Calls of the float32 operators per input layout (nhwc = 1: read in place).
extern "C" int64_t gluon_resnest_conv_calls(int nhwc) {
  return conv_calls[nhwc ? 1 : 0].load(std::memory_order_relaxed);
}
extern "C" int64_t gluon_resnest_conv_sum_copies() { return sum_copies.load(); }
extern "C" int64_t gluon_resnest_sa_sum_nhwc_calls(int nhwc) {
  return sum_calls[nhwc ? 1 : 0].load(std::memory_order_relaxed);
}

NNVM_REGISTER_OP(gluon_resnest_conv)
    .describe("Float32 inference convolution on oneDNN 3 with its bias, optionally the residual "
              "sum and the ReLU, writing N x H x W x C. Inputs: data, weight, bias[, sum].")
    .set_num_inputs(conv_num_inputs)
    .set_num_outputs(1)
    .set_attr<mxnet::FInferShape>("FInferShape", legacy(&conv_infer_shape))
    .set_attr<nnvm::FInferType>("FInferType", legacy(&f32_infer_type))
    .set_attr<mxnet::FInferStorageType>("FInferStorageType", legacy(&infer_storage))
    .set_attr<nnvm::FInplaceOption>("FInplaceOption", conv_inplace)
    .set_attr<bool>("TIsMKLDNN", true)
    .set_attr<mxnet::FComputeEx>("FComputeEx<cpu>", with_selftest_fault<conv_forward, kConv>)
    .set_attr<nnvm::FGradient>("FGradient", zero_gradients())
    .add_argument("data", "NDArray-or-Symbol[]", "data, weight, bias[, residual]")
    .add_argument("kernel", "Shape", "kernel size (h, w)")
    .add_argument("stride", "Shape", "stride (h, w)")
    .add_argument("pad", "Shape", "padding (h, w) on both sides")
    .add_argument("dilate", "Shape", "dilation (h, w)")
    .add_argument("num_filter", "int", "output channels")
    .add_argument("num_group", "int", "groups")
    .add_argument("relu", "int", "1: ReLU at the end")
    .add_argument("sum", "int", "1: add the residual (fourth input) before the ReLU")
    .add_argument("winograd", "int",
                  "1: Winograd F(4x4, 3x3) for a 3x3 convolution of stride 1 and padding 1 "
                  "(with AVX-512 and channels per group divisible by 16; direct otherwise)");

NNVM_REGISTER_OP(gluon_resnest_sa_gap_nhwc)
    .describe("Float32 Split-Attention pooled input (inference): the mean over the feature map "
              "of the sum of the radix splits.")
    .set_num_inputs(1)
    .set_num_outputs(1)
    .set_attr<mxnet::FInferShape>("FInferShape", legacy(&gap_infer_shape))
    .set_attr<nnvm::FInferType>("FInferType", legacy(&f32_infer_type))
    .set_attr<mxnet::FInferStorageType>("FInferStorageType", legacy(&infer_storage))
    .set_attr<bool>("TIsMKLDNN", true)
    .set_attr<mxnet::FComputeEx>("FComputeEx<cpu>", with_selftest_fault<gap_forward, kGapNhwc>)
    .set_attr<nnvm::FGradient>("FGradient", zero_gradients())
    .add_argument("data", "NDArray-or-Symbol", "x, (N, radix * C, H, W)")
    .add_argument("radix", "int", "number of splits");

NNVM_REGISTER_OP(gluon_resnest_sa_sum_nhwc)
    .describe("Float32 Split-Attention weighted sum of the splits (inference), optionally with "
              "the avd 3x3/2 average pooling. Inputs: attention, x.")
    .set_num_inputs(2)
    .set_num_outputs(1)
    .set_attr<mxnet::FInferShape>("FInferShape", legacy(&sum_infer_shape))
    .set_attr<nnvm::FInferType>("FInferType", legacy(&f32_infer_type))
    .set_attr<mxnet::FInferStorageType>("FInferStorageType", legacy(&infer_storage))
    .set_attr<bool>("TIsMKLDNN", true)
    .set_attr<mxnet::FComputeEx>("FComputeEx<cpu>", with_selftest_fault<sum_forward, kSumNhwc>)
    .set_attr<nnvm::FGradient>("FGradient", zero_gradients())
    .add_argument("data", "NDArray-or-Symbol[]", "attention, x")
    .add_argument("radix", "int", "number of splits")
    .add_argument("pool", "int", "1: apply the 3x3, stride 2, padding 1 average pooling");

NNVM_REGISTER_OP(gluon_resnest_sa_attention)
    .describe("Float32 Split-Attention attention (inference) from the pooled input: fc1 (its "
              "BatchNorm folded) and ReLU, fc2, and the softmax over the radix splits, written "
              "radix-major. Inputs: pooled (N, C, 1, 1), fc1 weight, fc1 bias, fc2 weight, fc2 "
              "bias.")
    .set_num_inputs(5)
    .set_num_outputs(1)
    .set_attr<mxnet::FInferShape>("FInferShape", legacy(&attention_infer_shape))
    .set_attr<nnvm::FInferType>("FInferType", legacy(&f32_infer_type))
    .set_attr<mxnet::FInferStorageType>("FInferStorageType", legacy(&infer_storage))
    .set_attr<bool>("TIsMKLDNN", true)
    .set_attr<mxnet::FComputeEx>("FComputeEx<cpu>",
                                 with_selftest_fault<attention_forward, kAttentionOp>)
    .set_attr<nnvm::FGradient>("FGradient", zero_gradients())
    .add_argument("data", "NDArray-or-Symbol[]", "pooled, fc1 weight, fc1 bias, fc2 weight, "
                  "fc2 bias")
    .add_argument("radix", "int", "number of splits (at least 2)")
    .add_argument("cardinality", "int", "groups of fc1 and fc2")
    .add_argument("hidden", "int", "output channels of fc1");

NNVM_REGISTER_OP(gluon_resnest_sa_sum_u8)
    .describe("INT8 Split-Attention weighted sum (optionally with the avd 3x3/2 average "
              "pooling). Inputs: attention, min_0, max_0, ..., x_0, ..., x_{radix-1}.")
    .set_num_inputs(num_inputs)
    .set_num_outputs(3)
    .set_attr<mxnet::FInferShape>("FInferShape", legacy(&infer_shape))
    .set_attr<nnvm::FInferType>("FInferType", legacy(&infer_type))
    .set_attr<mxnet::FInferStorageType>("FInferStorageType", legacy(&infer_storage))
    .set_attr<bool>("TIsMKLDNN", true)
    .set_attr<mxnet::FComputeEx>("FComputeEx<cpu>", with_selftest_fault<forward, kName>)
    .set_attr<nnvm::FGradient>("FGradient", zero_gradients())
    .add_argument("data", "NDArray-or-Symbol[]", "attention, ranges and uint8 splits")
    .add_argument("radix", "int", "number of splits")
    .add_argument("max_calib_range", "float", "upper end of the output's calibrated range")
    .add_argument("pool", "int", "1: apply the 3x3, stride 2, padding 1 average pooling");

// The bfloat16 inference operators, on this file's helpers.
#include "split_attention_bf16.cc"  // NOLINT(build/include)
