// fastconv's fused first layer as two TensorFlow CPU ops (the arithmetic is in
// conv_relu_pool.h):
//
//   FastconvConvReluPool(images (B, H, W, 1), kernel (3, 3, 1, K), bias (K))
//       -> features (H/2 * W/2 * K, B), winner (same shape, uint8)
//   FastconvConvReluPoolGrad(images, winner, grad_features, kernel)
//       -> kernel_grad (3, 3, 1, K), bias_grad (K)
//
// fastconv/native/__init__.py builds this file on the machine that runs it and registers the
// gradient; blocks of kLanes images are spread over the op's intra-op threads.

#include <algorithm>
#include <vector>

#include "conv_relu_pool.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace {

using fastconv::Geometry;
using fastconv::kLanes;
using fastconv::kSums;
using fastconv::kTaps;
using fastconv::Lanes;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// The geometry of `images` and `kernel`, or an error that names the bad shape.
tensorflow::Status ReadGeometry(const Tensor& images, const Tensor& kernel, Geometry* g) {
  if (images.dims() != 4 || images.dim_size(1) % 2 || images.dim_size(2) % 2 ||
      images.dim_size(3) != 1) {
    return InvalidArgument("images must be (batch, height, width, 1) with even height and ",
                           "width, got ", images.shape().DebugString());
  }
  if (kernel.dims() != 4 || kernel.dim_size(0) != 3 || kernel.dim_size(1) != 3 ||
      kernel.dim_size(2) != 1) {
    return InvalidArgument("kernel must be (3, 3, 1, kernels), got ", kernel.shape().DebugString());
  }
  *g = Geometry{images.dim_size(0), images.dim_size(1), images.dim_size(2), kernel.dim_size(3)};
  return tensorflow::OkStatus();
}

// Runs work(begin, end) over `units` on the op's intra-op threads (inline with one).
template <typename Work>
void Spread(OpKernelContext* context, int64_t units, int64_t cost_per_unit, Work work) {
  const auto& workers = *context->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(workers.num_threads, workers.workers, units, cost_per_unit, work);
}

class ConvReluPoolOp : public OpKernel {
 public:
  explicit ConvReluPoolOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& images = context->input(0);
    const Tensor& kernel = context->input(1);
    const Tensor& bias = context->input(2);
    Geometry g;
    OP_REQUIRES_OK(context, ReadGeometry(images, kernel, &g));
    OP_REQUIRES(context, bias.shape() == TensorShape({g.kernels}),
                InvalidArgument("bias must be (kernels,), got ", bias.shape().DebugString()));
    Tensor* features = nullptr;
    Tensor* winner = nullptr;
    const TensorShape shape({g.features(), g.batch});
    OP_REQUIRES_OK(context, context->allocate_output(0, shape, &features));
    OP_REQUIRES_OK(context, context->allocate_output(1, shape, &winner));
    Spread(context, g.blocks(), /*cost_per_unit=*/g.features() * kLanes * 4 * kTaps * 2,
           [&](int64_t begin, int64_t end) {
             fastconv::ConvReluPool(images.flat<float>().data(), kernel.flat<float>().data(),
                                    bias.flat<float>().data(), g, begin, end,
                                    features->flat<float>().data(),
                                    winner->flat<uint8_t>().data());
           });
  }
};

class ConvReluPoolGradOp : public OpKernel {
 public:
  explicit ConvReluPoolGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& images = context->input(0);
    const Tensor& winner = context->input(1);
    const Tensor& grad = context->input(2);
    const Tensor& kernel = context->input(3);
    Geometry g;
    OP_REQUIRES_OK(context, ReadGeometry(images, kernel, &g));
    const TensorShape shape({g.features(), g.batch});
    OP_REQUIRES(context, grad.shape() == shape && winner.shape() == shape,
                InvalidArgument("grad_features and winner must be ", shape.DebugString(),
                                ", got ", grad.shape().DebugString(), " and ",
                                winner.shape().DebugString()));
    Tensor* kernel_grad = nullptr;
    Tensor* bias_grad = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, kernel.shape(), &kernel_grad));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({g.kernels}), &bias_grad));

    // Each thread sums its blocks into its own lanes; the lanes and threads are added last.
    const auto& workers = *context->device()->tensorflow_cpu_worker_threads();
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(workers.num_threads, g.blocks()));
    std::vector<Lanes> sums(parts * g.kernels * kSums, Lanes{});
    Spread(context, parts, /*cost_per_unit=*/int64_t{1} << 30, [&](int64_t begin, int64_t end) {
      for (int64_t part = begin; part < end; ++part) {
        const int64_t blocks = g.blocks();
        fastconv::ConvReluPoolGrad(images.flat<float>().data(), winner.flat<uint8_t>().data(),
                                   grad.flat<float>().data(), g, blocks * part / parts,
                                   blocks * (part + 1) / parts,
                                   &sums[part * g.kernels * kSums]);
      }
    });
    fastconv::TotalGradient(sums.data(), parts, g.kernels, kernel_grad->flat<float>().data(),
                            bias_grad->flat<float>().data());
  }
};

}  // namespace

REGISTER_OP("FastconvConvReluPool")
    .Input("images: float")
    .Input("kernel: float")
    .Input("bias: float")
    .Output("features: float")
    .Output("winner: uint8")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle images, kernel;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &images));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &kernel));
      DimensionHandle half_height, half_width, pooled, features;
      TF_RETURN_IF_ERROR(c->Divide(c->Dim(images, 1), 2, /*evenly_divisible=*/true, &half_height));
      TF_RETURN_IF_ERROR(c->Divide(c->Dim(images, 2), 2, /*evenly_divisible=*/true, &half_width));
      TF_RETURN_IF_ERROR(c->Multiply(half_height, half_width, &pooled));
      TF_RETURN_IF_ERROR(c->Multiply(pooled, c->Dim(kernel, 3), &features));
      c->set_output(0, c->Matrix(features, c->Dim(images, 0)));
      c->set_output(1, c->output(0));
      return tensorflow::OkStatus();
    });

REGISTER_OP("FastconvConvReluPoolGrad")
    .Input("images: float")
    .Input("winner: uint8")
    .Input("grad_features: float")
    .Input("kernel: float")
    .Output("kernel_grad: float")
    .Output("bias_grad: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(3));
      c->set_output(1, c->Vector(c->Dim(c->input(3), 3)));
      return tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("FastconvConvReluPool").Device(tensorflow::DEVICE_CPU),
                        ConvReluPoolOp);
REGISTER_KERNEL_BUILDER(Name("FastconvConvReluPoolGrad").Device(tensorflow::DEVICE_CPU),
                        ConvReluPoolGradOp);
