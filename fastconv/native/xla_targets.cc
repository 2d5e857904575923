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
// ForBlocks's threads below.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <new>
#include <string>
#include <system_error>
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

// Runs work(block) for each of the config's blocks, on the calling thread and up to
// threads - 1 helpers started per call (an untyped target is not given XLA's intra-op pool),
// each taking the next block not yet taken. The call returns once every block taken is done,
// without waiting for a helper to start: on a busy machine, or while XLA's pool threads
// still spin on the cores, a new thread may wait milliseconds for one, and joining it made
// the training step slower with two threads than with one. A helper that starts after the
// last block was taken finds nothing to do and touches only the state it shares.
// False if a block threw (std::bad_alloc): an exception must not leave a thread, nor cross
// into XLA.
template <typename Work>
bool ForBlocks(const Config& config, const Work& work) {
  struct Shared {
    std::atomic<int64_t> next{0}, finished{0};
    std::atomic<bool> failed{false};
  };
  const auto shared = std::make_shared<Shared>();
  const int64_t blocks = config.geometry.blocks();
  auto run = [shared, blocks, &work] {
    for (int64_t block; (block = shared->next.fetch_add(1)) < blocks;) {
      try {
        work(block);
      } catch (...) {
        shared->failed = true;
      }
      shared->finished.fetch_add(1, std::memory_order_release);
    }
  };
  try {
    for (int64_t i = 1; i < std::min(config.threads, blocks); ++i) std::thread(run).detach();
  } catch (const std::system_error&) {
    // No more threads to be had: those started and this one do the work.
  }
  run();
  while (shared->finished.load(std::memory_order_acquire) < blocks) std::this_thread::yield();
  return !shared->failed;
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
  const bool done = ForBlocks(config, [&](int64_t block) {
    fastconv::ConvReluPool(images, kernel, bias, g, block, block + 1, features, winner);
  });
  if (!done) Fail(status, kName, "out of memory");
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
  // Each block sums into lanes of its own, added up last in block order: the same result
  // whichever thread took which block.
  std::vector<Lanes> sums;
  try {
    sums.resize(g.blocks() * g.kernels * kSums);
  } catch (const std::bad_alloc&) {
    return Fail(status, kName, "out of memory");
  }
  const bool done = ForBlocks(config, [&](int64_t block) {
    fastconv::ConvReluPoolGrad(images, winner, grad, g, block, block + 1,
                               &sums[block * g.kernels * kSums]);
  });
  if (!done) return Fail(status, kName, "out of memory");
  fastconv::TotalGradient(sums.data(), g.blocks(), g.kernels, static_cast<float*>(outputs[0]),
                          static_cast<float*>(outputs[1]));
}

}  // namespace

// Registered when the library loads (tf.load_op_library in fastconv/native/__init__.py).
XLA_REGISTER_CUSTOM_CALL_TARGET_WITH_SYM("fastconv_conv_relu_pool", ConvReluPoolTarget, "Host");
XLA_REGISTER_CUSTOM_CALL_TARGET_WITH_SYM("fastconv_conv_relu_pool_grad", ConvReluPoolGradTarget,
                                         "Host");
