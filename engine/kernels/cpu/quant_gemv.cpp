// y = x @ W^T straight from GGUF Q4_1 / Q8_0 blocks: each block of 32 weights is dequantized in
// registers (d * q + m, the same values the fp32 loader produces) and used for up to 10 rows of x
// (AVX-512; 4 on AVX2), so the weights are read from memory once per call at 5 (Q4_1) or 8.5 (Q8_0)
// bits per weight (further passes over more rows find them in L2). AVX-512 where the
// CPU has it (half the instructions per block), else AVX2. Rows of W are split over a small spinning
// thread pool: waking OpenMP threads under OMP_WAIT_POLICY=PASSIVE (the engine's setting) costs
// ~45 us per call, more than a whole 576x576 GEMV.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <sched.h>
#include <unistd.h>
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;
constexpr int64_t kQ41Bytes = 20;  // f16 d, f16 m, 16 bytes of nibbles
constexpr int64_t kQ80Bytes = 34;  // f16 d, 32 int8
constexpr int64_t kRowTile = 4;    // AVX2: rows of x sharing one dequantized block

// ---- thread pool -------------------------------------------------------------------------------

// Workers spin (yielding the core to any other runnable thread) for a while after each job, since
// a decode step calls the kernel every few microseconds, then sleep until the next one. Chunks are
// claimed one at a time, and the caller waits only for helpers that joined the job: a helper that
// lost its core to another process does not hold the call up.
class SpinPool {
 public:
  using Task = void (*)(void* ctx, int64_t chunk);

  // The process's pool (a forked child builds its own: the parent's workers do not exist there).
  static SpinPool& get() {
    static SpinPool* pool = nullptr;
    static pid_t owner = 0;
    if (pool == nullptr || owner != getpid()) {
      pool = new SpinPool();  // never freed: workers may still be spinning on it at exit
      owner = getpid();
    }
    return *pool;
  }

  // Runs task(ctx, c) for c in [0, chunks) on up to `threads` threads (the caller is one of them).
  void run(Task task, void* ctx, int64_t chunks, int threads) {
    const int helpers = static_cast<int>(std::min<int64_t>({threads, chunks, 128})) - 1;
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);  // a second caller runs alone
    if (helpers <= 0 || !busy.owns_lock()) {
      for (int64_t c = 0; c < chunks; ++c) task(ctx, c);
      return;
    }
    while (static_cast<int>(workers_.size()) < helpers) {
      workers_.emplace_back([this] { work(); });
      workers_.back().detach();
    }
    task_ = task;
    ctx_ = ctx;
    chunks_ = chunks;
    next_.store(0, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    generation_ += 1;
    // entry word: generation, closed flag, seats for helpers, helpers that joined
    entry_.store(generation_ << 24 | static_cast<uint64_t>(helpers) << 8, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      wake_.notify_all();
    }
    drain();
    const int joined = static_cast<int>(entry_.fetch_or(kClosed, std::memory_order_acq_rel) & 0xFF);
    for (int64_t spins = 0; done_.load(std::memory_order_acquire) < joined; ++spins) {
      if (spins > 4096) sched_yield();  // a helper lost its core mid-chunk: let it finish
      else _mm_pause();
    }
  }

 private:
  static constexpr auto kSpin = std::chrono::microseconds(2000);
  static constexpr uint64_t kClosed = uint64_t{1} << 23;

  void drain() {
    for (int64_t c; (c = next_.fetch_add(1, std::memory_order_relaxed)) < chunks_;) task_(ctx_, c);
  }

  void work() {
    uint64_t seen = 0;  // generation of the last job this helper saw
    for (;;) {
      auto since = std::chrono::steady_clock::now();
      for (int64_t spins = 0; entry_.load(std::memory_order_acquire) >> 24 == seen; ++spins) {
        sched_yield();  // returns at once when nothing else wants this core
        if ((spins & 63) == 63 && std::chrono::steady_clock::now() - since > kSpin) {
          std::unique_lock<std::mutex> lock(mutex_);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          wake_.wait(lock, [&] { return entry_.load(std::memory_order_seq_cst) >> 24 != seen; });
          sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        }
      }
      uint64_t entry = entry_.load(std::memory_order_acquire);
      seen = entry >> 24;
      while (!(entry & kClosed) && (entry & 0xFF) < (entry >> 8 & 0xFF)) {
        if (entry_.compare_exchange_weak(entry, entry + 1, std::memory_order_acq_rel)) {
          drain();
          done_.fetch_add(1, std::memory_order_release);
          break;
        }
        if (entry >> 24 != seen) break;  // a newer job: the outer loop picks it up
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;
  uint64_t generation_ = 0;
  std::atomic<uint64_t> entry_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<int> done_{0};
  std::atomic<int64_t> next_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  Task task_ = nullptr;
  void* ctx_ = nullptr;
  int64_t chunks_ = 0;
};

template <typename F>
void parallel_chunks(int64_t chunks, F& body) {
  SpinPool::get().run([](void* ctx, int64_t c) { (*static_cast<F*>(ctx))(c); }, &body, chunks,
                      at::get_num_threads());
}

// ---- block formats -----------------------------------------------------------------------------

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256 bytes_u8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }
inline __m256 bytes_i8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }

// The 32 weights of one block as four vectors of 8 (AVX2) or two of 16 (AVX-512), in element order.
struct Q41 {
  static constexpr int64_t bytes = kQ41Bytes;
  static inline void load(const uint8_t* b, __m256 w[4]) {
    const __m256 d = _mm256_set1_ps(f16(b));
    const __m256 m = _mm256_set1_ps(f16(b + 2));
    const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 4));
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(qs, mask);                     // elements 0..15
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);  // elements 16..31
    w[0] = _mm256_fmadd_ps(bytes_u8(lo), d, m);
    w[1] = _mm256_fmadd_ps(bytes_u8(_mm_srli_si128(lo, 8)), d, m);
    w[2] = _mm256_fmadd_ps(bytes_u8(hi), d, m);
    w[3] = _mm256_fmadd_ps(bytes_u8(_mm_srli_si128(hi, 8)), d, m);
  }
};

struct Q80 {
  static constexpr int64_t bytes = kQ80Bytes;
  static inline void load(const uint8_t* b, __m256 w[4]) {
    const __m256 d = _mm256_set1_ps(f16(b));
    for (int k = 0; k < 4; ++k) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * k));
      w[k] = _mm256_mul_ps(bytes_i8(q), d);
    }
  }
};

// ---- AVX2 --------------------------------------------------------------------------------------

template <typename Q, int R>
inline void row_dot(const uint8_t* wrow, const float* x, int64_t ldx, int64_t nb, float* out, int64_t ldo) {
  __m256 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) {
    acc0[r] = _mm256_setzero_ps();
    acc1[r] = _mm256_setzero_ps();
  }
  __m256 w[4];
  for (int64_t b = 0; b < nb; ++b) {
    Q::load(wrow + b * Q::bytes, w);
    for (int r = 0; r < R; ++r) {
      const float* xb = x + r * ldx + b * kBlock;
      acc0[r] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xb), acc0[r]);
      acc1[r] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb + 8), acc1[r]);
      acc0[r] = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xb + 16), acc0[r]);
      acc1[r] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xb + 24), acc1[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r * ldo] = hsum(_mm256_add_ps(acc0[r], acc1[r]));
}

template <typename Q>
void rows_avx2(const uint8_t* wp, const float* xp, float* yp, int64_t rows, int64_t n, int64_t in_features,
               int64_t begin, int64_t end) {
  const int64_t nb = in_features / kBlock, row_bytes = nb * Q::bytes;
  for (int64_t o = begin; o < end; ++o) {
    const uint8_t* wrow = wp + o * row_bytes;
    int64_t r = 0;
    for (; r + kRowTile <= rows; r += kRowTile)
      row_dot<Q, kRowTile>(wrow, xp + r * in_features, in_features, nb, yp + r * n + o, n);
    const float* xr = xp + r * in_features;
    float* yr = yp + r * n + o;
    switch (rows - r) {
      case 3: row_dot<Q, 3>(wrow, xr, in_features, nb, yr, n); break;
      case 2: row_dot<Q, 2>(wrow, xr, in_features, nb, yr, n); break;
      case 1: row_dot<Q, 1>(wrow, xr, in_features, nb, yr, n); break;
      default: break;
    }
  }
}

// ---- AVX-512 -----------------------------------------------------------------------------------

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")

// Both ways of a Q4_1 block give d * q + m by the same fused multiply-add, so the same bits: the
// lookup (a 16-entry table indexed by the nibbles: fewer instructions) is faster for 1-3 rows of x,
// the conversion (fewer shuffles, which compete with the FMAs) for more.
struct Q41x16 {
  static constexpr int64_t bytes = kQ41Bytes;
  template <bool kTable>
  static inline void load(const uint8_t* b, __m512 w[2]) {
    uint32_t dm_bits;
    std::memcpy(&dm_bits, b, 4);
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(dm_bits)));  // d, m, 0, 0
    const __m512 d = _mm512_broadcastss_ps(dm);
    const __m512 m = _mm512_permutexvar_ps(_mm512_set1_epi32(1), _mm512_castps128_ps512(dm));
    const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 4)));
    if (kTable) {
      const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
      const __m512 table = _mm512_fmadd_ps(iota, d, m);
      w[0] = _mm512_permutexvar_ps(q, table);  // uses the index's low 4 bits: the low nibble
      w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
    } else {
      w[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(q, _mm512_set1_epi32(0x0F))), d, m);
      w[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4)), d, m);
    }
  }
};

struct Q80x16 {
  static constexpr int64_t bytes = kQ80Bytes;
  template <bool kTable>
  static inline void load(const uint8_t* b, __m512 w[2]) {
    const __m512 d = _mm512_set1_ps(f16(b));
    for (int k = 0; k < 2; ++k) {
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 + 16 * k));
      w[k] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d);
    }
  }
};

// C rows of W against R rows of x with one accumulator per (row of x, row of W), which sums the
// block products in block order: an output's value does not depend on R, C or the row's place in
// the call, so a row decoded alone and the same row inside a multi-row verify agree bit for bit.
// Each block is dequantized once for all R rows. The rows kPrefetchTiles tiles ahead are prefetched
// as the tile reads its own: the hardware prefetcher loses track of several interleaved W rows
// (3x slower for Q8_0 at C = 2 or 4 on Zen 5 without it).
constexpr int64_t kPrefetchTiles = 4;

template <typename Q, int R, int C>
inline void tile512(const uint8_t* wrow, int64_t row_bytes, const float* x, int64_t ldx, int64_t nb, float* out,
                    int64_t ldo) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  const uint8_t* ahead = wrow + C * kPrefetchTiles * row_bytes;
  __m512 w[C][2];
  for (int64_t b = 0; b < nb; ++b) {
    for (int c = 0; c < C; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + c * row_bytes + b * Q::bytes), _MM_HINT_T0);
      Q::template load<(R <= 3)>(wrow + c * row_bytes + b * Q::bytes, w[c]);
    }
    for (int k = 0; k < 2; ++k)
      for (int r = 0; r < R; ++r) {
        const __m512 xv = _mm512_loadu_ps(x + r * ldx + b * kBlock + 16 * k);
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(w[c][k], xv, acc[r][c]);
      }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) out[r * ldo + c] = _mm512_reduce_add_ps(acc[r][c]);
}

// Up to kMaxTileRows rows of x go through W in one pass; more take several balanced passes (two
// passes of 8 rows beat one of 16: 16 accumulators of one W row reload x for every FMA, and x
// stops fitting in L1). Tile widths measured on Zen 5: 4 W rows up to 6 rows of x, else 2.
constexpr int64_t kMaxTileRows = 10;
constexpr int columns_for(int rows) { return rows <= 6 ? 4 : 2; }
constexpr int64_t kPassColumns = 64;  // W rows per sweep of the passes: stays in L2 between passes

template <typename Q, int R>
void pass512(const uint8_t* wp, int64_t row_bytes, const float* x, float* y, int64_t n, int64_t in_features,
             int64_t begin, int64_t end) {
  constexpr int C = columns_for(R);
  const int64_t nb = in_features / kBlock;
  int64_t o = begin;
  for (; o + C <= end; o += C) tile512<Q, R, C>(wp + o * row_bytes, row_bytes, x, in_features, nb, y + o, n);
  for (; o < end; ++o) tile512<Q, R, 1>(wp + o * row_bytes, row_bytes, x, in_features, nb, y + o, n);
}

using Pass = void (*)(const uint8_t*, int64_t, const float*, float*, int64_t, int64_t, int64_t, int64_t);

template <typename Q, int... Rs>
constexpr std::array<Pass, sizeof...(Rs)> passes512(std::integer_sequence<int, Rs...>) {
  return {&pass512<Q, Rs + 1>...};
}

template <typename Q>
void rows_avx512(const uint8_t* wp, const float* xp, float* yp, int64_t rows, int64_t n, int64_t in_features,
                 int64_t begin, int64_t end) {
  static constexpr auto kPasses = passes512<Q>(std::make_integer_sequence<int, kMaxTileRows>{});
  const int64_t row_bytes = in_features / kBlock * Q::bytes;
  const int64_t tiles = (rows + kMaxTileRows - 1) / kMaxTileRows;
  for (int64_t o = begin; o < end; o += kPassColumns) {
    const int64_t stop = std::min(end, o + kPassColumns);
    for (int64_t t = 0, r = 0; t < tiles; ++t) {
      const int64_t tile_rows = (rows - r) / (tiles - t);  // balanced: 16 rows -> 8 + 8
      kPasses[tile_rows - 1](wp, row_bytes, xp + r * in_features, yp + r * n, n, in_features, o, stop);
      r += tile_rows;
    }
  }
}

#pragma GCC pop_options

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return has;
}

// ---- entry points ------------------------------------------------------------------------------

void check_blocks(const torch::Tensor& blocks, int64_t in_features, int64_t block_bytes) {
  TORCH_CHECK(in_features % kBlock == 0, "in_features must be a multiple of 32");
  const int64_t nb = in_features / kBlock;
  TORCH_CHECK(blocks.dim() == 2 && blocks.scalar_type() == torch::kUInt8 && blocks.is_contiguous() &&
                  blocks.size(1) == nb * block_bytes,
              "weight blocks must be a contiguous uint8 [out_features, ", nb * block_bytes, "] tensor");
}

template <typename Q, typename Q512>
torch::Tensor gemv(const torch::Tensor& x_in, const torch::Tensor& blocks, int64_t in_features, bool avx512) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == torch::kFloat32, "x must be a 2-D float32 tensor");
  TORCH_CHECK(x_in.size(1) == in_features && in_features % kBlock == 0, "x has ", x_in.size(1),
              " features, the weight ", in_features, " (a multiple of 32)");
  check_blocks(blocks, in_features, Q::bytes);
  TORCH_CHECK(!avx512 || cpu_has_avx512(), "this CPU has no AVX-512");
  const torch::Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0), n = blocks.size(0);
  torch::Tensor y = torch::empty({rows, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint8_t* wp = blocks.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  // about 8 chunks per thread (load balance when a core is shared), a multiple of the 4-row tiles
  const int64_t chunk = std::max<int64_t>(16, (n / (8 * at::get_num_threads()) + 3) & ~int64_t{3});
  auto body = [&](int64_t c) {
    const int64_t begin = c * chunk, end = std::min(n, begin + chunk);
    if (avx512) rows_avx512<Q512>(wp, xp, yp, rows, n, in_features, begin, end);
    else rows_avx2<Q>(wp, xp, yp, rows, n, in_features, begin, end);
  };
  parallel_chunks((n + chunk - 1) / chunk, body);
  return y;
}

template <typename Q>
torch::Tensor dequantize(const torch::Tensor& blocks, int64_t in_features) {
  check_blocks(blocks, in_features, Q::bytes);
  const int64_t nb = in_features / kBlock;
  const int64_t n = blocks.size(0);
  torch::Tensor w = torch::empty({n, in_features}, torch::dtype(torch::kFloat32));
  const uint8_t* wp = blocks.data_ptr<uint8_t>();
  float* out = w.data_ptr<float>();
  at::parallel_for(0, n * nb, 256, [&](int64_t begin, int64_t end) {
    __m256 v[4];
    for (int64_t i = begin; i < end; ++i) {
      Q::load(wp + i * Q::bytes, v);
      for (int k = 0; k < 4; ++k) _mm256_storeu_ps(out + i * kBlock + 8 * k, v[k]);
    }
  });
  return w;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("q4_1_linear", &gemv<Q41, Q41x16>, "y = x @ W^T with W in GGUF Q4_1 blocks [out, in/32*20]",
        py::arg("x"), py::arg("blocks"), py::arg("in_features"), py::arg("avx512") = cpu_has_avx512());
  m.def("q8_0_linear", &gemv<Q80, Q80x16>, "y = x @ W^T with W in GGUF Q8_0 blocks [out, in/32*34]",
        py::arg("x"), py::arg("blocks"), py::arg("in_features"), py::arg("avx512") = cpu_has_avx512());
  m.def("has_avx512", &cpu_has_avx512, "whether the linears can use the AVX-512 path");
  m.def("q4_1_dequantize", &dequantize<Q41>, "fp32 [out, in] from Q4_1 blocks");
  m.def("q8_0_dequantize", &dequantize<Q80>, "fp32 [out, in] from Q8_0 blocks");
}
