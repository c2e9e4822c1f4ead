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
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <unordered_map>

namespace {

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

}  // namespace

extern "C" {

// One convolution's geometry. Padding is given per side; dilation the oneDNN way (0 = none).
struct grc_conv_spec {
  int64_t n, ic, ih, iw, oc, oh, ow, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, groups;
  int32_t src_nhwc;  // 1: the input is N x H x W x C in memory, 0: N x C x H x W
  int32_t relu;      // 1: ReLU after the bias (and after the sum)
  int32_t sum;       // 1: add the output buffer's prior contents before the ReLU
  int32_t has_bias;
};

struct grc_conv {
  dnnl::convolution_forward prim;
  dnnl::memory::desc src_md, dst_md;
  dnnl::memory weights, bias;
  std::string impl;
};

// Makes the primitive and reorders weight (and bias) into it. Null with a message in err when
// oneDNN has no kernel for it.
grc_conv* grc_conv_create(const grc_conv_spec* s, const float* weight, const float* bias,
                          char* err, int err_len) {
  try {
    auto& eng = cpu_engine();
    dnnl::stream stream(eng);
    const dnnl::memory::dims src{s->n, s->ic, s->ih, s->iw}, dst{s->n, s->oc, s->oh, s->ow};
    const bool grouped = s->groups > 1;
    const dnnl::memory::dims wdims =
        grouped ? dnnl::memory::dims{s->groups, s->oc / s->groups, s->ic / s->groups, s->kh, s->kw}
                : dnnl::memory::dims{s->oc, s->ic, s->kh, s->kw};
    dnnl::memory::desc src_md(src, dt::f32, s->src_nhwc ? tag::nhwc : tag::nchw);
    dnnl::memory::desc dst_md(dst, dt::f32, tag::nhwc);
    dnnl::memory::desc w_any(wdims, dt::f32, tag::any);
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

// oneDNN's version, major * 10000 + minor * 100 + patch.
int grc_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

}  // extern "C"
