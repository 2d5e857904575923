// conv 3x3 SAME + bias -> ReLU -> 2x2 max pool for one input channel, and the gradient of its
// kernel and bias, on a CPU: the arithmetic of fastconv's fused first layer, free of
// TensorFlow (ops.cc wraps it as two TensorFlow ops, xla_targets.cc as two XLA custom-call
// targets).
//
// Images sit in the lanes of one vector (the batch is the minor dimension), so every step is
// a plain vertical multiply-add or max whatever the number of kernels, the 28x28 activations
// never leave registers, and the backward pass visits only each window's winner. A vector is
// the widest register the CPU has: 16 images with AVX-512, 8 with AVX2. (GCC's vector
// extensions would split 16-lane vectors for AVX2, and their spills made the op slower than
// TensorFlow's.)
//
// Layouts: images (B, H, W) row-major; kernel (3, 3, K) and bias (K), as TensorFlow holds
// them; features (H/2 * W/2 * K, B), the book's (h, w, k) order down the columns, one image
// per column; `winner` the same shape: per feature, the window position (0..3, row-major)
// whose value the pool kept, or kNoWinner where the ReLU let nothing through.

#ifndef FASTCONV_NATIVE_CONV_RELU_POOL_H_
#define FASTCONV_NATIVE_CONV_RELU_POOL_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace fastconv {

#if defined(__AVX512F__)
constexpr int kLanes = 16;  // images per vector: one AVX-512 register of float32
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kLanes = 8;  // images per vector: one AVX2 register of float32
#else
#error "fastconv's op is built for AVX2 and FMA or AVX-512 (-march=native found neither)"
#endif
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t LaneInts __attribute__((vector_size(kLanes * sizeof(int32_t))));
// The same, at any address: the columns of a block start wherever the batch puts them.
typedef Lanes UnalignedLanes __attribute__((aligned(4), may_alias));
constexpr uint8_t kNoWinner = 4;
constexpr int kTaps = 9;  // weights of a 3x3 kernel
constexpr int kSums = kTaps + 1;  // per kernel, the gradient sums: its 9 weights, its bias

struct Geometry {
  int64_t batch, height, width, kernels;
  int64_t blocks() const { return (batch + kLanes - 1) / kLanes; }
  int64_t padded_width() const { return width + 2; }
  int64_t padded_pixels() const { return (height + 2) * (width + 2); }
  int64_t pooled_width() const { return width / 2; }
  int64_t features() const { return (height / 2) * (width / 2) * kernels; }
};

namespace internal {

// A row of `features` for one block, as one vector; a block at the end
// of the batch may hold fewer than kLanes images. (Overloads, not templates: GCC drops the
// alignment of a typedef passed as a template argument.)
inline void StoreLanes(const Lanes& values, int64_t lanes, float* to) {
  if (lanes == kLanes) {
    *reinterpret_cast<UnalignedLanes*>(to) = values;
  } else {
    for (int64_t lane = 0; lane < lanes; ++lane) to[lane] = values[lane];
  }
}

// Winners travel as bytes, a quarter of the memory traffic of int32s. (AVX-512 narrows and
// widens 16 of them in one instruction, AVX2 8 in a few, where GCC's vector conversions go
// byte by byte.)
inline void StoreWinners(const LaneInts& winners, int64_t lanes, uint8_t* to) {
#if defined(__AVX512F__)
  if (lanes == kLanes) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(to), _mm512_cvtepi32_epi8(__m512i(winners)));
    return;
  }
#elif defined(__AVX2__)
  if (lanes == kLanes) {
    const __m256i wide = __m256i(winners);
    const __m128i halves = _mm_packs_epi32(_mm256_castsi256_si128(wide),
                                           _mm256_extracti128_si256(wide, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(to), _mm_packus_epi16(halves, halves));
    return;
  }
#endif
  for (int64_t lane = 0; lane < lanes; ++lane) to[lane] = static_cast<uint8_t>(winners[lane]);
}

inline LaneInts LoadWinners(const uint8_t* from, int64_t lanes) {
#if defined(__AVX512F__)
  if (lanes == kLanes) {
    return LaneInts(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(from))));
  }
#elif defined(__AVX2__)
  if (lanes == kLanes) {
    return LaneInts(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(from))));
  }
#endif
  LaneInts winners = LaneInts{} + kNoWinner;
  for (int64_t lane = 0; lane < lanes; ++lane) winners[lane] = from[lane];
  return winners;
}

inline Lanes LoadLanes(const float* from, int64_t lanes) {
  if (lanes == kLanes) return *reinterpret_cast<const UnalignedLanes*>(from);
  Lanes values{};
  for (int64_t lane = 0; lane < lanes; ++lane) values[lane] = from[lane];
  return values;
}

// The block's images transposed so that each padded pixel is one vector of lanes, with the
// zero border of SAME padding; lanes past the batch stay zero. (A transpose in TensorFlow
// before the op took longer than this.)
inline int64_t GatherBlock(const float* images, const Geometry& g, int64_t block, Lanes* padded) {
  std::memset(static_cast<void*>(padded), 0, g.padded_pixels() * sizeof(Lanes));
  const int64_t first = block * kLanes;
  const int64_t lanes = std::min<int64_t>(kLanes, g.batch - first);
  // Row by row, so that the stores stay in the L1 cache, and as plain floats: an element
  // store into a vector compiles to a whole-vector read-modify-write.
  float* to = reinterpret_cast<float*>(padded);
  for (int64_t y = 0; y < g.height; ++y) {
    float* row = to + ((y + 1) * g.padded_width() + 1) * kLanes;
    for (int64_t lane = 0; lane < lanes; ++lane) {
      const float* pixels = images + ((first + lane) * g.height + y) * g.width;
      for (int64_t x = 0; x < g.width; ++x) row[x * kLanes + lane] = pixels[x];
    }
  }
  return lanes;
}

// The four 3x3 convolutions of the pool window whose top left is the padded pixel `corner`,
// in row-major order, summed side by side: four independent chains of multiply-adds.
inline void WindowConvs(const Lanes (&taps)[kTaps], const Lanes* corner, int64_t padded_width,
                        Lanes (&conv)[4]) {
  for (int p = 0; p < 4; ++p) conv[p] = Lanes{};
  for (int t = 0; t < kTaps; ++t) {
    const Lanes* tap = corner + (t / 3) * padded_width + t % 3;
    conv[0] += taps[t] * tap[0];
    conv[1] += taps[t] * tap[1];
    conv[2] += taps[t] * tap[padded_width];
    conv[3] += taps[t] * tap[padded_width + 1];
  }
}

// Whether all values are finite (x - x is 0 for those, NaN for NaN and infinities).
inline bool AllFinite(const float* values, int64_t count) {
  bool finite = true;
  for (int64_t i = 0; i < count; ++i) finite &= values[i] - values[i] == 0.0f;
  return finite;
}

inline bool AllFinite(const Lanes* values, int64_t count) {
  LaneInts bad{};
  for (int64_t i = 0; i < count; ++i) bad |= values[i] - values[i] != 0.0f;
  for (int lane = 0; lane < kLanes; ++lane) {
    if (bad[lane]) return false;
  }
  return true;
}

// Calls visit(padded, lanes, column) for each block of [begin, end): its images gathered into
// `padded`, how many lanes hold an image, and the block's first column of the outputs.
template <typename Visit>
inline void ForEachBlock(const float* images, const Geometry& g, int64_t begin, int64_t end,
                         Visit visit) {
  std::vector<Lanes> padded(g.padded_pixels());
  for (int64_t block = begin; block < end; ++block) {
    const int64_t lanes = GatherBlock(images, g, block, padded.data());
    visit(padded.data(), lanes, block * kLanes);
  }
}

}  // namespace internal

// Features and winners of blocks [begin, end) of kLanes images.
inline void ConvReluPool(const float* images, const float* kernel, const float* bias,
                         const Geometry& g, int64_t begin, int64_t end, float* features,
                         uint8_t* winner) {
  using namespace internal;
  const int64_t pw = g.padded_width();
  // A NaN or an infinity in the weights or the block's pixels (a diverging run) turns on
  // the checks that pass NaN through; finite blocks, all of them in a healthy run, skip them.
  const bool non_finite_weights = !AllFinite(kernel, kTaps * g.kernels) ||
                                  !AllFinite(bias, g.kernels);
  ForEachBlock(images, g, begin, end, [&](const Lanes* padded, int64_t lanes, int64_t column) {
    const bool non_finite = non_finite_weights || !AllFinite(padded, g.padded_pixels());
    // Kernel by kernel along each row of windows: the kernel's weights stay in registers,
    // and the four padded rows under the windows in the L1 cache.
    for (int64_t i = 0; i < g.height / 2; ++i) {
      for (int64_t k = 0; k < g.kernels; ++k) {
        Lanes taps[kTaps];
        for (int t = 0; t < kTaps; ++t) taps[t] = Lanes{} + kernel[t * g.kernels + k];
        for (int64_t j = 0; j < g.pooled_width(); ++j) {
          const Lanes* corner = padded + 2 * i * pw + 2 * j;
          Lanes conv[4];
          WindowConvs(taps, corner, pw, conv);
          // The first maximum wins ties, as TensorFlow's max-pool gradient does.
          Lanes best = conv[0];
          LaneInts at{};
          for (int p = 1; p < 4; ++p) {
            const LaneInts better = conv[p] > best;
            best = better ? conv[p] : best;
            at = better ? LaneInts{} + p : at;
          }
          // Bias and ReLU after the pool: the same values (a window shares its bias, and
          // ReLU keeps order), for a quarter of the work.
          best += bias[k];
          LaneInts on = best > 0.0f;
          if (non_finite) {  // a NaN passes through: a window holding one pools to NaN
            LaneInts nan = best != best;
            for (int p = 0; p < 4; ++p) nan |= conv[p] != conv[p];
            best = nan ? Lanes{} + __builtin_nanf("") : best;
            on |= nan;
          }
          const int64_t row = (i * g.pooled_width() + j) * g.kernels + k;
          StoreLanes(on ? best : Lanes{}, lanes, features + row * g.batch + column);
          StoreWinners(on ? at : LaneInts{} + kNoWinner, lanes, winner + row * g.batch + column);
        }
      }
    }
  });
}

// Adds the gradient of blocks [begin, end) into `sums` (K * kSums vectors of lanes: per
// kernel, its 9 weights' and its bias's), given the features' gradient `grad`.
inline void ConvReluPoolGrad(const float* images, const uint8_t* winner, const float* grad,
                             const Geometry& g, int64_t begin, int64_t end, Lanes* sums) {
  using namespace internal;
  const int64_t pw = g.padded_width();
  ForEachBlock(images, g, begin, end, [&](const Lanes* padded, int64_t lanes, int64_t column) {
    for (int64_t i = 0; i < g.height / 2; ++i) {
      for (int64_t k = 0; k < g.kernels; ++k) {
        Lanes sum[kSums];  // in registers along the row of windows
        for (int t = 0; t < kSums; ++t) sum[t] = sums[k * kSums + t];
        for (int64_t j = 0; j < g.pooled_width(); ++j) {
          const int64_t row = (i * g.pooled_width() + j) * g.kernels + k;
          // Lanes past the batch load a zero gradient.
          const Lanes d = LoadLanes(grad + row * g.batch + column, lanes);
          const LaneInts at = LoadWinners(winner + row * g.batch + column, lanes);
          // The gradient reaches the winning position's 3x3 patch only.
          Lanes routed[4];
          for (int p = 0; p < 4; ++p) routed[p] = at == p ? d : Lanes{};
          sum[kTaps] += (routed[0] + routed[1]) + (routed[2] + routed[3]);
          const Lanes* corner = padded + 2 * i * pw + 2 * j;
          for (int t = 0; t < kTaps; ++t) {
            const Lanes* tap = corner + (t / 3) * pw + t % 3;
            // One multiply-add each, into the sum (a sum of products first would add a
            // multiply and an add).
            sum[t] += routed[0] * tap[0];
            sum[t] += routed[1] * tap[1];
            sum[t] += routed[2] * tap[pw];
            sum[t] += routed[3] * tap[pw + 1];
          }
        }
        for (int t = 0; t < kSums; ++t) sums[k * kSums + t] = sum[t];
      }
    }
  });
}

// The kernel's gradient dw (3, 3, 1, K) and the bias's db (K): the lanes of the sums of
// `parts` runs of ConvReluPoolGrad (each K * kSums vectors, one after the other) added up, in
// double so that the order of the parts does not show.
inline void TotalGradient(const Lanes* sums, int64_t parts, int64_t kernels, float* dw,
                          float* db) {
  for (int64_t k = 0; k < kernels; ++k) {
    for (int t = 0; t < kSums; ++t) {
      double total = 0;
      for (int64_t part = 0; part < parts; ++part) {
        const Lanes& lanes = sums[(part * kernels + k) * kSums + t];
        for (int lane = 0; lane < kLanes; ++lane) total += lanes[lane];
      }
      (t < kTaps ? dw[t * kernels + k] : db[k]) = static_cast<float>(total);
    }
  }
}

}  // namespace fastconv

#endif  // FASTCONV_NATIVE_CONV_RELU_POOL_H_
