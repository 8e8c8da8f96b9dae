// y = x @ W^T straight from GGUF Q4_1 / Q8_0 blocks: each block of 32 weights is dequantized in
// AVX2 registers (d * q + m, the same values the fp32 loader produces) and used for every row of x,
// so the weights are read once per call at 5 (Q4_1) or 8.5 (Q8_0) bits per weight.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kBlock = 32;
constexpr int64_t kQ41Bytes = 20;  // f16 d, f16 m, 16 bytes of nibbles
constexpr int64_t kQ80Bytes = 34;  // f16 d, 32 int8
constexpr int64_t kRowTile = 4;    // rows of x sharing one dequantized block

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

// The 32 weights of one block as four vectors of 8, in element order.
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
torch::Tensor gemv(const torch::Tensor& x_in, const torch::Tensor& blocks, int64_t in_features) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == torch::kFloat32, "x must be a 2-D float32 tensor");
  TORCH_CHECK(x_in.size(1) == in_features && in_features % kBlock == 0, "x has ", x_in.size(1),
              " features, the weight ", in_features, " (a multiple of 32)");
  const int64_t nb = in_features / kBlock;
  TORCH_CHECK(blocks.dim() == 2 && blocks.scalar_type() == torch::kUInt8 && blocks.is_contiguous() &&
                  blocks.size(1) == nb * Q::bytes,
              "weight blocks must be a contiguous uint8 [out_features, ", nb * Q::bytes, "] tensor");
  const torch::Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0), n = blocks.size(0);
  torch::Tensor y = torch::empty({rows, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint8_t* wp = blocks.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  const int64_t row_bytes = nb * Q::bytes;
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
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
  });
  return y;
}

template <typename Q>
torch::Tensor dequantize(const torch::Tensor& blocks, int64_t in_features) {
  TORCH_CHECK(in_features % kBlock == 0, "in_features must be a multiple of 32");
  const int64_t nb = in_features / kBlock;
  TORCH_CHECK(blocks.dim() == 2 && blocks.scalar_type() == torch::kUInt8 && blocks.is_contiguous() &&
                  blocks.size(1) == nb * Q::bytes,
              "weight blocks must be a contiguous uint8 [out_features, ", nb * Q::bytes, "] tensor");
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
  m.def("q4_1_linear", &gemv<Q41>, "y = x @ W^T with W in GGUF Q4_1 blocks [out, in/32*20]");
  m.def("q8_0_linear", &gemv<Q80>, "y = x @ W^T with W in GGUF Q8_0 blocks [out, in/32*34]");
  m.def("q4_1_dequantize", &dequantize<Q41>, "fp32 [out, in] from Q4_1 blocks");
  m.def("q8_0_dequantize", &dequantize<Q80>, "fp32 [out, in] from Q8_0 blocks");
}
