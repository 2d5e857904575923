// The CPU's float32 peak, measured as CPU peaks are: fused multiply-adds on registers only,
// one thread pinned to each CPU this process may run on (its affinity), no memory traffic.
//
// Each thread keeps CHAINS independent accumulators. An FMA's result is ready some cycles
// after it issues (its latency, 4 on current cores) and a core issues up to 2 a cycle, so a
// single chain would wait on itself; 12 chains keep 2 FMA units busy up to a latency of 6.
//
// bench/peers.py compiles this at run time with `-O3 -march=native -shared` and calls it
// through ctypes. Without -ffast-math the compiler may not reassociate or fold the FMAs away,
// and the accumulators' sum is returned, so none of them is dead code.

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>

#include <cstring>
#include <thread>
#include <vector>

// The widest FMA the CPU has: AVX-512's, else AVX2's (bench/peers.py asks for one of them).
#if defined(__AVX512F__)
typedef __m512 Vector;
constexpr int LANES = 16;  // float32 lanes of a 512-bit register
inline Vector broadcast(float x) { return _mm512_set1_ps(x); }
inline Vector fma(Vector a, Vector b, Vector c) { return _mm512_fmadd_ps(a, b, c); }
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 Vector;
constexpr int LANES = 8;  // float32 lanes of a 256-bit register
inline Vector broadcast(float x) { return _mm256_set1_ps(x); }
inline Vector fma(Vector a, Vector b, Vector c) { return _mm256_fmadd_ps(a, b, c); }
#else
#error "the FMA peak is measured with AVX-512 or AVX2 and FMA (-march=native found neither)"
#endif

namespace {

constexpr int CHAINS = 12;

float chains(long iterations) {
  // a <- a * b + c converges to c / (1 - b): the values stay normal floats (denormals would
  // slow some cores down) however many iterations run.
  const Vector b = broadcast(0.999f);
  const Vector c = broadcast(0.001f);
  Vector a[CHAINS];
  for (int i = 0; i < CHAINS; ++i) a[i] = broadcast(static_cast<float>(i));
  for (long n = 0; n < iterations; ++n) {
    for (int i = 0; i < CHAINS; ++i) a[i] = fma(a[i], b, c);
  }
  float sum = 0.0f;
  for (int i = 0; i < CHAINS; ++i) {
    float lanes[LANES];
    std::memcpy(lanes, &a[i], sizeof(lanes));
    for (float lane : lanes) sum += lane;
  }
  return sum;
}

std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
    }
  }
  if (cpus.empty()) cpus.push_back(-1);  // affinity unknown: one unpinned thread
  return cpus;
}

}  // namespace

extern "C" {

// Threads fma_run starts: one per CPU of the process's affinity.
int fma_threads() { return static_cast<int>(allowed_cpus().size()); }

// Floating-point operations of one iteration of one thread (2 per FMA lane).
long fma_flops_per_iteration() { return 2L * LANES * CHAINS; }

// Runs `iterations` on every thread, each pinned to its CPU; returns the accumulators' sum.
float fma_run(long iterations) {
  std::vector<int> cpus = allowed_cpus();
  std::vector<float> results(cpus.size());
  std::vector<std::thread> threads;
  for (size_t t = 0; t < cpus.size(); ++t) {
    threads.emplace_back([&, t] {
      if (cpus[t] >= 0) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpus[t], &one);
        // Pinned, two threads never share a core while another core idles.
        pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
      }
      results[t] = chains(iterations);
    });
  }
  float total = 0.0f;
  for (size_t t = 0; t < cpus.size(); ++t) {
    threads[t].join();
    total += results[t];
  }
  return total;
}

}  // extern "C"
