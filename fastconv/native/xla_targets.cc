// fastconv's fused first layer as two XLA custom-call targets for the CPU (platform "Host"),
// for code that XLA compiles (tf.function(jit_compile=True)), where the TensorFlow ops of
// ops.cc cannot go. The arithmetic is conv_relu_pool.h's, as in ops.cc:
//
//   fastconv_conv_relu_pool(images (B, H, W, 1), kernel (3, 3, 1, K), bias (K))
//       -> (features (H/2 * W/2 * K, B) float32, winner (same shape) uint8)
//   fastconv_conv_relu_pool_grad(images, winner, grad_features)
//       -> (kernel_grad (3, 3, 1, K), bias_grad (K))
//
// Both take the backend_config "batch=B height=H width=W kernels=K threads=T", which
// fastconv/native/__init__.py writes from the operands' shapes when it traces the call.
//
// Why the untyped registry (API_VERSION_STATUS_RETURNING_UNIFIED) and not the typed FFI:
// TensorFlow emits a custom call from a TF graph only through XlaCustomCallV2
// (custom_call_v2), whose kernel hard-codes API_VERSION_STATUS_RETURNING_UNIFIED, and XLA's
// CPU runtime looks a target up in the FFI registry only for API_VERSION_TYPED_FFI: a typed
// FFI handler would never be found. (The one other route, XlaCallModule with a StableHLO
// module written out per call, adds a second IR to maintain for nothing the kernel needs.)
// The untyped call gets no shapes, hence the backend_config, and no thread pool, hence
// Spread's threads below.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "conv_relu_pool.h"
#include "xla/service/custom_call_status_internal.h"
#include "xla/service/custom_call_target_registry.h"

namespace {

using fastconv::Geometry;
using fastconv::kSums;
using fastconv::Lanes;

struct Config {
  Geometry geometry;
  int64_t threads;
};

// Marks the call failed: XLA turns the message into the error of the computation, which
// TensorFlow raises in Python. XlaCustomCallStatusSetFailure, the setter the public header
// declares, is not exported by TensorFlow 2.21's libraries, so the message goes straight
// into the status's one field, as defined by the internal header TensorFlow ships beside it
// (and read back by xla::CustomCallStatusGetMessage, which is exported).
void Fail(XlaCustomCallStatus* status, const char* target, const std::string& message) {
  status->message = std::string(target) + ": " + message;
}

// The config of the call, or false with the reason in *error.
bool ParseConfig(const char* opaque, size_t length, Config* config, std::string* error) {
  const std::string text(opaque, length);
  Geometry& g = config->geometry;
  long long batch, height, width, kernels, threads;
  int end = -1;
  if (std::sscanf(text.c_str(), "batch=%lld height=%lld width=%lld kernels=%lld threads=%lld%n",
                  &batch, &height, &width, &kernels, &threads, &end) != 5 ||
      end != static_cast<int>(text.size())) {
    *error = "backend_config must be \"batch=B height=H width=W kernels=K threads=T\", got \"" +
             text + "\"";
    return false;
  }
  if (batch < 0 || height <= 0 || width <= 0 || height % 2 || width % 2 || kernels <= 0 ||
      threads <= 0) {
    *error = "cannot compute batch=" + std::to_string(batch) + " height=" +
             std::to_string(height) + " width=" + std::to_string(width) + " kernels=" +
             std::to_string(kernels) + " threads=" + std::to_string(threads) +
             ": height and width must be even and positive, kernels and threads positive";
    return false;
  }
  g = Geometry{batch, height, width, kernels};
  config->threads = threads;
  return true;
}

// Runs work(part) for part in [0, parts): part 0 on the calling thread, the others on threads
// of their own, started per call. (An untyped target is not given XLA's intra-op pool; a
// thread costs tens of microseconds, against a call that takes hundreds.)
template <typename Work>
void Spread(int64_t parts, Work work) {
  std::vector<std::thread> helpers;
  helpers.reserve(parts - 1);
  for (int64_t part = 1; part < parts; ++part) helpers.emplace_back(work, part);
  work(0);
  for (std::thread& helper : helpers) helper.join();
}

// How many parts to split `blocks` into: no more than the threads, nor than the blocks.
int64_t Parts(const Config& config) {
  return std::max<int64_t>(1, std::min<int64_t>(config.threads, config.geometry.blocks()));
}

// out: (features, winner); in: (images, kernel, bias).
void ConvReluPoolTarget(void* out, const void** in, const char* opaque, size_t opaque_len,
                        XlaCustomCallStatus* status) {
  constexpr const char* kName = "fastconv_conv_relu_pool";
  Config config;
  std::string error;
  if (!ParseConfig(opaque, opaque_len, &config, &error)) return Fail(status, kName, error);
  const Geometry& g = config.geometry;
  const auto* images = static_cast<const float*>(in[0]);
  const auto* kernel = static_cast<const float*>(in[1]);
  const auto* bias = static_cast<const float*>(in[2]);
  void** outputs = static_cast<void**>(out);
  auto* features = static_cast<float*>(outputs[0]);
  auto* winner = static_cast<uint8_t*>(outputs[1]);
  const int64_t parts = Parts(config);
  try {  // an exception must not cross into XLA (std::thread throws where it cannot start one)
    Spread(parts, [&](int64_t part) {
      fastconv::ConvReluPool(images, kernel, bias, g, g.blocks() * part / parts,
                             g.blocks() * (part + 1) / parts, features, winner);
    });
  } catch (const std::exception& e) {
    Fail(status, kName, e.what());
  }
}

// out: (kernel_grad, bias_grad); in: (images, winner, grad_features).
void ConvReluPoolGradTarget(void* out, const void** in, const char* opaque, size_t opaque_len,
                            XlaCustomCallStatus* status) {
  constexpr const char* kName = "fastconv_conv_relu_pool_grad";
  Config config;
  std::string error;
  if (!ParseConfig(opaque, opaque_len, &config, &error)) return Fail(status, kName, error);
  const Geometry& g = config.geometry;
  const auto* images = static_cast<const float*>(in[0]);
  const auto* winner = static_cast<const uint8_t*>(in[1]);
  const auto* grad = static_cast<const float*>(in[2]);
  void** outputs = static_cast<void**>(out);
  // Each part sums its blocks into its own lanes; the lanes and parts are added last.
  const int64_t parts = Parts(config);
  try {
    std::vector<Lanes> sums(parts * g.kernels * kSums, Lanes{});
    Spread(parts, [&](int64_t part) {
      fastconv::ConvReluPoolGrad(images, winner, grad, g, g.blocks() * part / parts,
                                 g.blocks() * (part + 1) / parts,
                                 &sums[part * g.kernels * kSums]);
    });
    fastconv::TotalGradient(sums.data(), parts, g.kernels, static_cast<float*>(outputs[0]),
                            static_cast<float*>(outputs[1]));
  } catch (const std::exception& e) {
    Fail(status, kName, e.what());
  }
}

}  // namespace

// Registered when the library loads (tf.load_op_library in fastconv/native/__init__.py).
XLA_REGISTER_CUSTOM_CALL_TARGET_WITH_SYM("fastconv_conv_relu_pool", ConvReluPoolTarget, "Host");
XLA_REGISTER_CUSTOM_CALL_TARGET_WITH_SYM("fastconv_conv_relu_pool_grad", ConvReluPoolGradTarget,
                                         "Host");
