// XLA FFI handlers that compute one convolution product each with PyTorch's ATen CPU kernels.
//
// Built and registered by ballot_jax/models/torch_ffi.py; called from a jitted step as the custom
// calls "ballot_torch_conv_{forward,input_grad,kernel_grad}_v1". Buffers are XLA's, read and
// written in place: NHWC activations and HWIO kernels are viewed as ATen's NCHW (channels-last
// strides) and OIHW without a copy; the result is copied into XLA's output buffer once. The same
// ATen calls as the Python-callback path in torch_conv.py, so the values are the same.
// Attributes: strides = {sh, sw}; pads = {top, bottom, left, right}.
#include <cstdint>
#include <exception>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The ATen dtype of an XLA buffer type; false for types the lowering does not take.
bool ToScalarType(ffi::DataType t, at::ScalarType* st) {
  switch (t) {
    case ffi::DataType::F32: *st = at::kFloat; return true;
    case ffi::DataType::BF16: *st = at::kBFloat16; return true;
    default: return false;
  }
}

ffi::Error BadType() { return ffi::Error::InvalidArgument("torch convolution: only float32 and bfloat16 buffers"); }

at::Tensor Wrap(const ffi::AnyBuffer& b, at::ScalarType st) {
  auto d = b.dimensions();
  std::vector<int64_t> sizes(d.begin(), d.end());
  return at::from_blob(b.untyped_data(), sizes, at::TensorOptions().dtype(st));
}

at::Tensor WrapOut(ffi::Result<ffi::AnyBuffer>& b, at::ScalarType st) {
  auto d = b->dimensions();
  std::vector<int64_t> sizes(d.begin(), d.end());
  return at::from_blob(b->untyped_data(), sizes, at::TensorOptions().dtype(st));
}

// NHWC buffer -> NCHW view (channels-last strides); HWIO -> OIHW view.
at::Tensor Nchw(const at::Tensor& t) { return t.permute({0, 3, 1, 2}); }
at::Tensor Oihw(const at::Tensor& t) { return t.permute({3, 2, 0, 1}); }

struct Padded { at::Tensor x; std::vector<int64_t> pad; };

// pads = {top, bottom, left, right}
Padded Pad(const at::Tensor& x, ffi::Span<const int64_t> p) {
  if (p[0] == p[1] && p[2] == p[3]) return {x, {p[0], p[2]}};
  return {at::constant_pad_nd(x, {p[2], p[3], p[0], p[1]}), {0, 0}};
}

template <typename F>
ffi::Error Guarded(F&& f) {
  try {
    c10::InferenceMode guard;
    f();
    return ffi::Error::Success();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("torch convolution: ") + e.what());
  }
}

ffi::Error ForwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer k, ffi::Result<ffi::AnyBuffer> out,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  at::ScalarType st;
  if (!ToScalarType(x.element_type(), &st)) return BadType();
  return Guarded([&] {
    Padded xp = Pad(Nchw(Wrap(x, st)), pads);
    std::vector<int64_t> s(strides.begin(), strides.end());
    at::Tensor y = at::convolution(xp.x, Oihw(Wrap(k, st)), c10::nullopt, s, xp.pad, {1, 1}, false, {0, 0}, 1);
    WrapOut(out, st).copy_(y.permute({0, 2, 3, 1}));
  });
}

// ATen's convolution backward for one of the two gradients: (input gradient, kernel gradient),
// the other undefined. The input gradient is of the padded input when the padding is asymmetric.
std::tuple<at::Tensor, at::Tensor, at::Tensor> Backward(const ffi::AnyBuffer& x, const ffi::AnyBuffer& k,
                                                        const ffi::AnyBuffer& g, at::ScalarType st,
                                                        ffi::Span<const int64_t> strides,
                                                        ffi::Span<const int64_t> pads, bool input_grad) {
  Padded xp = Pad(Nchw(Wrap(x, st)), pads);
  std::vector<int64_t> s(strides.begin(), strides.end());
  return at::convolution_backward(Nchw(Wrap(g, st)), xp.x, Oihw(Wrap(k, st)), c10::nullopt, s, xp.pad, {1, 1},
                                  false, {0, 0}, 1, {input_grad, !input_grad, false});
}

ffi::Error InputGradImpl(ffi::AnyBuffer x, ffi::AnyBuffer k, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> out,
                         ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  at::ScalarType st;
  if (!ToScalarType(x.element_type(), &st)) return BadType();
  return Guarded([&] {
    at::Tensor gx = std::get<0>(Backward(x, k, g, st, strides, pads, true));
    if (pads[0] != pads[1] || pads[2] != pads[3])  // the input was padded first: crop back
      gx = gx.slice(2, pads[0], gx.size(2) - pads[1]).slice(3, pads[2], gx.size(3) - pads[3]);
    WrapOut(out, st).copy_(gx.permute({0, 2, 3, 1}));
  });
}

ffi::Error KernelGradImpl(ffi::AnyBuffer x, ffi::AnyBuffer k, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> out,
                          ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  at::ScalarType st;
  if (!ToScalarType(x.element_type(), &st)) return BadType();
  return Guarded([&] {
    auto d = k.dimensions();
    int64_t cin = d[2], cout = d[3];
    bool unpadded = pads[0] == 0 && pads[1] == 0 && pads[2] == 0 && pads[3] == 0;
    if (d[0] == 1 && d[1] == 1 && unpadded) {
      // One matmul over the strided input positions (also a workaround: PyTorch 2.13's channels-last
      // kernel gradient of 1x1 stride-2 convolutions was intermittently wrong on an AVX2 CPU).
      at::Tensor xs = Wrap(x, st).slice(1, 0, c10::nullopt, strides[0]).slice(2, 0, c10::nullopt, strides[1]).reshape({-1, cin});
      WrapOut(out, st).view({cin, cout}).copy_(at::mm(xs.t(), Wrap(g, st).reshape({-1, cout})));
      return;
    }
    WrapOut(out, st).copy_(std::get<1>(Backward(x, k, g, st, strides, pads, false)).permute({2, 3, 1, 0}));
  });
}

// (input, kernel, cotangent) -> result, with the strides and pads attributes.
auto BindBackward() {
  return ffi::Ffi::Bind()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Ret<ffi::AnyBuffer>()
      .Attr<ffi::Span<const int64_t>>("strides")
      .Attr<ffi::Span<const int64_t>>("pads");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BallotTorchConvForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("pads"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(BallotTorchConvInputGrad, InputGradImpl, BindBackward());
XLA_FFI_DEFINE_HANDLER_SYMBOL(BallotTorchConvKernelGrad, KernelGradImpl, BindBackward());
