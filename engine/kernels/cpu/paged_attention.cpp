// Causal paged attention on CPU that reads K/V in place through the block table (no gather).
//
// A work item is (sequence, KV head, a tile of its queries, a range of key blocks). Its rows are the
// tile's queries times the KV head's query group (GQA: the group shares every K/V load). It walks its
// key blocks once with an online softmax (running max m, running sum l, unnormalised accumulator).
// Decodes of few sequences split their context over several items (flash-decoding) whose partial
// (m, l, acc) are merged afterwards, so 2+ threads share even a single sequence's work.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kMaxRows = 16;         // rows of one item (query tile x query group)
constexpr int64_t kMinSplitBlocks = 8;   // a context split covers at least this many blocks
// Below this much work (rows x keys x head dim, ~100 us on one core) the call stays on the calling
// thread: waking sleeping OpenMP workers (OMP_WAIT_POLICY=PASSIVE) costs tens of microseconds.
constexpr int64_t kParallelMinWork = int64_t{1} << 20;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for 8 floats: x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-6 Taylor polynomial
// (relative error ~2e-7), 2^n through the exponent bits. Inputs below -87 give 0 (callers only pass
// x <= 0 here: scores minus their running max).
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.0f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2, with ln2 split in two parts so r stays exact to fp32
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

// The 8 dot products of q (D floats) with 8 key rows, as one vector.
inline __m256 dot8(const float* q, const float* const keys[8], int64_t dim) {
  __m256 a[8];
  for (int k = 0; k < 8; ++k) a[k] = _mm256_setzero_ps();
  for (int64_t c = 0; c < dim; c += 8) {
    const __m256 qv = _mm256_loadu_ps(q + c);
    for (int k = 0; k < 8; ++k) a[k] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(keys[k] + c), a[k]);
  }
  const __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

struct Cache {
  const float* data;
  int64_t block_stride, token_stride, head_stride;
  const float* token(int64_t block, int64_t offset, int64_t head) const {
    return data + block * block_stride + offset * token_stride + head * head_stride;
  }
};

struct Item {
  int64_t seq, kv_head, q_begin, q_count;  // q_begin: index of the tile's first query in its sequence
  int64_t key_begin, key_end;              // keys [key_begin, key_end), block aligned at key_begin
  int64_t part;                            // -1: write the output; else the slot of a partial result
  int64_t cost;
};

struct Problem {
  const float* q;  // [T, Hq, D]
  float* out;      // [T, Hq, D]
  Cache k, v;
  const int32_t* tables;
  int64_t table_stride;
  const int32_t* cu;
  const int32_t* ctx;
  int64_t num_q_heads, group, dim, block_size;
  float scale;
  float *part_m, *part_l, *part_acc;  // [parts, group], [parts, group], [parts, group, D]
};

// The rows of one item: online softmax over its key blocks, then either the normalised output
// or the partial (m, l, acc) for a later merge.
void run_item(const Problem& pb, const Item& it, float* scratch) {
  const int64_t dim = pb.dim, bs = pb.block_size, group = pb.group;
  const int64_t rows = it.q_count * group;
  const int64_t q_len = pb.cu[it.seq + 1] - pb.cu[it.seq];
  const int64_t context = pb.ctx[it.seq];
  float* qs = scratch;               // [rows, D] scaled queries
  float* acc = qs + rows * dim;      // [rows, D]
  float* scores = acc + rows * dim;  // [bs rounded up to 8]
  float m[kMaxRows], l[kMaxRows];
  int64_t last_key[kMaxRows];        // the newest key each row may see (its own position)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t qi = it.q_begin + r / group;
    const int64_t head = it.kv_head * group + r % group;
    const float* src = pb.q + ((pb.cu[it.seq] + qi) * pb.num_q_heads + head) * dim;
    for (int64_t c = 0; c < dim; ++c) qs[r * dim + c] = src[c] * pb.scale;
    std::fill(acc + r * dim, acc + (r + 1) * dim, 0.0f);
    m[r] = kNegInf;
    l[r] = 0.0f;
    last_key[r] = std::min(context - q_len + qi, it.key_end - 1);
  }
  const int32_t* table = pb.tables + it.seq * pb.table_stride;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t first = it.key_begin; first < it.key_end; first += bs) {
    const int64_t block = table[first / bs];
    const int64_t n = std::min(bs, it.key_end - first);
    if (first + bs < it.key_end) {  // the next block is elsewhere in memory: fetch it while this one computes
      const int64_t next = table[first / bs + 1];  // (2x faster on caches as cold as the engine's)
      const int64_t count = std::min(bs, it.key_end - first - bs);
      for (int64_t t = 0; t < count; ++t)
        for (int64_t c = 0; c < dim; c += 16) {  // one 64-byte line per 16 floats
          _mm_prefetch(reinterpret_cast<const char*>(pb.k.token(next, t, it.kv_head) + c), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(pb.v.token(next, t, it.kv_head) + c), _MM_HINT_T0);
        }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t visible = std::min(n, last_key[r] - first + 1);  // keys of this block the row sees
      if (visible <= 0) continue;
      __m256 block_max = _mm256_set1_ps(kNegInf);
      for (int64_t t = 0; t < visible; t += 8) {
        const float* keys[8];
        for (int k = 0; k < 8; ++k) keys[k] = pb.k.token(block, std::min<int64_t>(t + k, visible - 1), it.kv_head);
        const __m256 valid = _mm256_castsi256_ps(
            _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(visible - t)), lane));
        const __m256 s = _mm256_blendv_ps(_mm256_set1_ps(kNegInf), dot8(qs + r * dim, keys, dim), valid);
        _mm256_storeu_ps(scores + t, s);
        block_max = _mm256_max_ps(block_max, s);
      }
      float new_max = m[r];
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, block_max);
      for (float x : lanes) new_max = std::max(new_max, x);
      const float correction = m[r] == kNegInf ? 0.0f : std::exp(m[r] - new_max);
      const __m256 shift = _mm256_set1_ps(new_max);
      __m256 sum = _mm256_setzero_ps();
      for (int64_t t = 0; t < visible; t += 8) {  // lanes past `visible` hold -inf -> exp gives 0
        const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + t), shift));
        _mm256_storeu_ps(scores + t, p);
        sum = _mm256_add_ps(sum, p);
      }
      _mm256_store_ps(lanes, sum);
      float block_sum = 0.0f;
      for (float x : lanes) block_sum += x;
      l[r] = l[r] * correction + block_sum;
      m[r] = new_max;
      float* a = acc + r * dim;
      const __m256 corr = _mm256_set1_ps(correction);
      for (int64_t c = 0; c < dim; c += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(a + c), corr);
        for (int64_t t = 0; t < visible; ++t)
          v = _mm256_fmadd_ps(_mm256_set1_ps(scores[t]), _mm256_loadu_ps(pb.v.token(block, t, it.kv_head) + c), v);
        _mm256_storeu_ps(a + c, v);
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t qi = it.q_begin + r / group;
    const int64_t head = it.kv_head * group + r % group;
    if (it.part < 0) {
      float* dst = pb.out + ((pb.cu[it.seq] + qi) * pb.num_q_heads + head) * dim;
      const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
      for (int64_t c = 0; c < dim; ++c) dst[c] = acc[r * dim + c] * inv;
    } else {  // decode splits: one query, rows = the group
      const int64_t slot = it.part * group + r;
      pb.part_m[slot] = m[r];
      pb.part_l[slot] = l[r];
      std::copy(acc + r * dim, acc + (r + 1) * dim, pb.part_acc + slot * dim);
    }
  }
}

// Runs items on all threads, largest first, each thread taking the next one (items differ in size).
template <typename F>
void for_each_item(int64_t count, bool parallel, const F& fn) {
  if (!parallel) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), count);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t i = next++; i < count; i = next++) fn(i);
  });
}

}  // namespace

torch::Tensor paged_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                              torch::Tensor block_tables, torch::Tensor cu_seqlens_q, torch::Tensor context_lens,
                              double scale) {
  TORCH_CHECK(q.dim() == 3 && q.is_contiguous() && q.scalar_type() == torch::kFloat32, "q: contiguous fp32 [T, Hq, D]");
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(), "caches: [num_blocks, block_size, Hk, D]");
  TORCH_CHECK(k_cache.scalar_type() == torch::kFloat32 && v_cache.scalar_type() == torch::kFloat32, "caches: fp32");
  TORCH_CHECK(k_cache.stride(3) == 1 && v_cache.stride(3) == 1, "caches: unit stride along the head dim");
  TORCH_CHECK(block_tables.scalar_type() == torch::kInt32 && block_tables.dim() == 2 && block_tables.stride(1) == 1,
              "block_tables: int32 [B, max_blocks], rows contiguous");
  TORCH_CHECK(cu_seqlens_q.scalar_type() == torch::kInt32 && cu_seqlens_q.is_contiguous(), "cu_seqlens_q: int32");
  TORCH_CHECK(context_lens.scalar_type() == torch::kInt32 && context_lens.is_contiguous(), "context_lens: int32");
  const int64_t num_seqs = context_lens.size(0);
  TORCH_CHECK(cu_seqlens_q.size(0) == num_seqs + 1 && block_tables.size(0) >= num_seqs, "batch sizes disagree");
  const int64_t num_q_heads = q.size(1), dim = q.size(2);
  const int64_t block_size = k_cache.size(1), num_kv_heads = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == dim && dim % 8 == 0, "head dim must match the caches and be a multiple of 8");
  TORCH_CHECK(num_q_heads % num_kv_heads == 0 && num_q_heads / num_kv_heads <= kMaxRows, "query heads per KV head: 1..16");

  Problem pb{};
  pb.q = q.data_ptr<float>();
  auto out = torch::empty_like(q);
  pb.out = out.data_ptr<float>();
  pb.k = {k_cache.data_ptr<float>(), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2)};
  pb.v = {v_cache.data_ptr<float>(), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2)};
  pb.tables = block_tables.data_ptr<int32_t>();
  pb.table_stride = block_tables.stride(0);
  pb.cu = cu_seqlens_q.data_ptr<int32_t>();
  pb.ctx = context_lens.data_ptr<int32_t>();
  pb.num_q_heads = num_q_heads;
  pb.group = num_q_heads / num_kv_heads;
  pb.dim = dim;
  pb.block_size = block_size;
  pb.scale = static_cast<float>(scale);

  const int64_t tile = std::max<int64_t>(1, kMaxRows / pb.group);  // queries per item
  std::vector<Item> items;
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t q_len = pb.cu[b + 1] - pb.cu[b], context = pb.ctx[b];
    TORCH_CHECK(q_len >= 0 && context >= q_len, "sequence ", b, ": context_lens must count its queries");
    TORCH_CHECK((context + block_size - 1) / block_size <= block_tables.size(1), "sequence ", b,
                ": context longer than its block table");
    for (int64_t h = 0; h < num_kv_heads; ++h)
      for (int64_t s = 0; s < q_len; s += tile) {
        const int64_t count = std::min(tile, q_len - s);
        const int64_t keys = context - q_len + s + count;  // the tile's last query sees this many keys
        items.push_back({b, h, s, count, 0, keys, -1, keys * count});
      }
  }
  // Too few items for the threads: split single-query items' contexts into ranges of whole blocks.
  const int64_t threads = at::get_num_threads();
  int64_t work = 0;
  for (const Item& it : items) work += it.cost * pb.group * dim;
  const bool parallel = threads > 1 && work >= kParallelMinWork;
  int64_t parts = 0;
  std::vector<Item> split;
  struct Merge { int64_t seq, kv_head, first_part, num_parts; };
  std::vector<Merge> merges;
  if (parallel && static_cast<int64_t>(items.size()) < 2 * threads) {
    const int64_t base = static_cast<int64_t>(items.size());  // > 0: the work is not zero
    const int64_t wanted = (4 * threads + base - 1) / base;
    for (const Item& it : items) {
      const int64_t blocks = (it.key_end + block_size - 1) / block_size;
      const int64_t pieces = std::min(wanted, blocks / kMinSplitBlocks);
      if (it.q_count != 1 || pieces < 2) {
        split.push_back(it);
        continue;
      }
      merges.push_back({it.seq, it.kv_head, parts, pieces});
      for (int64_t p = 0; p < pieces; ++p) {
        const int64_t begin = blocks * p / pieces * block_size, end = std::min(it.key_end, blocks * (p + 1) / pieces * block_size);
        split.push_back({it.seq, it.kv_head, it.q_begin, 1, begin, end, parts++, end - begin});
      }
    }
    items.swap(split);
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.cost > b.cost; });
  torch::Tensor part_buf;
  if (parts > 0) {
    part_buf = torch::empty({parts * pb.group * (dim + 2)}, q.options());
    pb.part_m = part_buf.data_ptr<float>();
    pb.part_l = pb.part_m + parts * pb.group;
    pb.part_acc = pb.part_l + parts * pb.group;
  }
  const int64_t scratch_floats = 2 * kMaxRows * dim + ((block_size + 7) / 8) * 8;
  for_each_item(static_cast<int64_t>(items.size()), parallel, [&](int64_t i) {
    thread_local std::vector<float> scratch;
    if (static_cast<int64_t>(scratch.size()) < scratch_floats) scratch.resize(scratch_floats);
    run_item(pb, items[i], scratch.data());
  });
  // out = sum_p exp(m_p - M) acc_p / sum_p exp(m_p - M) l_p, M = max_p m_p (the first split has key 0,
  // so M is finite; a split of only masked keys has m = -inf and weight 0)
  for (const Merge& mg : merges) {
    const int64_t token = pb.cu[mg.seq];
    for (int64_t g = 0; g < pb.group; ++g) {
      float top = kNegInf;
      for (int64_t p = 0; p < mg.num_parts; ++p) top = std::max(top, pb.part_m[(mg.first_part + p) * pb.group + g]);
      float* dst = pb.out + (token * num_q_heads + mg.kv_head * pb.group + g) * dim;
      std::fill(dst, dst + dim, 0.0f);
      float total = 0.0f;
      for (int64_t p = 0; p < mg.num_parts; ++p) {
        const int64_t slot = (mg.first_part + p) * pb.group + g;
        if (pb.part_m[slot] == kNegInf) continue;
        const float w = std::exp(pb.part_m[slot] - top);
        total += w * pb.part_l[slot];
        const float* a = pb.part_acc + slot * dim;
        for (int64_t c = 0; c < dim; ++c) dst[c] += w * a[c];
      }
      const float inv = total > 0.0f ? 1.0f / total : 0.0f;
      for (int64_t c = 0; c < dim; ++c) dst[c] *= inv;
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention", &paged_attention,
        "causal paged attention over fp32 caches read in place: (q, k_cache, v_cache, block_tables, "
        "cu_seqlens_q, context_lens, scale) -> [T, Hq, D]");
}
