// One level's engine step (compiled through kernels_<isa>.cpp): a whole forward of the model
// inside one OpenMP parallel region, phases separated by barriers.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "attention_internal.h"
#include "engine_impl.h"
#include "gemm_q8.h"
#include "linear_internal.h"
#include "linear_q8.h"
#include "norm_internal.h"
#include "isa.h"
#include "pyruntime/dispatch.h"
#include "vec.h"
#include "rope_internal.h"

namespace pyruntime::cpu::PYRUNTIME_ISA {

namespace {


int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Rows [begin, end) of `total` for thread tid of nt, in blocks of `align`.
inline void thread_range(int64_t total, int64_t align, int tid, int nt, int64_t& begin, int64_t& end) {
  const int64_t per = ceil_div(ceil_div(total, nt), align) * align;
  begin = std::min(total, tid * per);
  end = std::min(total, begin + per);
}

detail::Q8Rows q8_rows(const Matrix& m) {
  const auto log2 = [](int64_t v) {
    int shift = 0;
    while ((int64_t(1) << shift) < v) ++shift;
    return shift;
  };
  return {static_cast<const int8_t*>(m.data), m.scales, m.cols, 0, log2(m.group), log2(m.block_rows)};
}

// f(rows) with m's rows as its format's reader (weight_rows.h): the one place a matrix's
// format picks its kernels. With int8_activations the block formats that have an integer
// product (linear_q8.h) come as Q8BlockRows.
template <typename F>
inline void with_rows(const Matrix& m, F&& f, bool int8_activations = false) {
  switch (m.format) {
    case WeightFormat::Float32: f(detail::DenseRows<float>{static_cast<const float*>(m.data), m.cols}); return;
    case WeightFormat::BFloat16: f(detail::DenseRows<bf16>{static_cast<const bf16*>(m.data), m.cols}); return;
    case WeightFormat::Int8: f(q8_rows(m)); return;
#define PYRUNTIME_BLOCK_CASE(F)                                                                      \
  case WeightFormat::F: {                                                                            \
    const detail::BlockRows<WeightFormat::F> rows{static_cast<const uint8_t*>(m.data),               \
                                                  format_row_bytes(m.format, m.cols)};               \
    if constexpr (detail::kHasQ8Dot<WeightFormat::F>)                                                \
      if (int8_activations) return f(detail::Q8BlockRows<WeightFormat::F>{rows});                    \
    return f(rows);                                                                                  \
  }
    PYRUNTIME_BLOCK_CASE(Q4_0) PYRUNTIME_BLOCK_CASE(Q4_1) PYRUNTIME_BLOCK_CASE(Q5_0) PYRUNTIME_BLOCK_CASE(Q5_1)
    PYRUNTIME_BLOCK_CASE(Q8_0) PYRUNTIME_BLOCK_CASE(Q2_K) PYRUNTIME_BLOCK_CASE(Q3_K) PYRUNTIME_BLOCK_CASE(Q4_K)
    PYRUNTIME_BLOCK_CASE(Q5_K) PYRUNTIME_BLOCK_CASE(Q6_K) PYRUNTIME_BLOCK_CASE(F16)
#undef PYRUNTIME_BLOCK_CASE
  }
}

// The integer GEMM's activations of one product's input (run's share_acts): 8-bit ones for
// the activation groups of 32 and of 256 (q8[0], q8[1]), or 16-bit ones; both null: float32.
struct GemmActs {
  const detail::Q8Chunk* q8 = nullptr;
  const detail::Q16Chunk* q16 = nullptr;
};

// y[t, r] (+)= rows [r0, r1) of w . x[t] for every token: the one choice of product per format
// and token count (the GEMM: with the 8- or 16-bit activations of acts where w's format has
// integer products, else float32; decode calls: the integer products where w has them). Every
// token's sums are the same whichever tokens share the call, within one path. \param gemm the
// GEMM (more than kMaxRowTileTokens tokens; see run), else the row tiles. \param packed
// gemm_pack_floats(in) floats of this thread's own
template <bool Accumulate, typename Rows>
inline void product_rows(float* y, int64_t y_stride, const float* x, int64_t x_stride, const Rows& w,
                         int64_t tokens, int64_t in, int64_t r0, int64_t r1, float* packed, bool gemm,
                         GemmActs acts = {}) {
  if (gemm) {
    if constexpr (detail::IsBlockRows<Rows>::value || detail::IsQ8BlockRows<Rows>::value) {
      constexpr WeightFormat F = Rows::kFormat;
      const detail::BlockRows<F>& plain = w;
#if defined(PYRUNTIME_VEC_AVX512) || defined(PYRUNTIME_VEC_AVX2)
      if constexpr (detail::kHasQ8Dot<F>) {  // the integer GEMM
        uint8_t* panel = reinterpret_cast<uint8_t*>(packed);
        if (acts.q8 && detail::IsQ8BlockRows<Rows>::value)
          return detail::q8_gemm_rows<Accumulate>(y, y_stride, acts.q8[detail::q8_group<F>() == 32 ? 0 : 1], plain,
                                                  tokens, r0, r1, panel);
#if defined(PYRUNTIME_VEC_AVX512)
        if (acts.q16) return detail::q8_gemm_rows<Accumulate>(y, y_stride, *acts.q16, plain, tokens, r0, r1, panel);
#endif
      }
#endif
      detail::gemm_rows<Accumulate>(y, y_stride, x, x_stride, plain, tokens, in, r0, r1, packed);
    } else
      detail::gemm_rows<Accumulate>(y, y_stride, x, x_stride, w, tokens, in, r0, r1, packed);
  } else if constexpr (detail::IsQ8BlockRows<Rows>::value) {
    detail::q8_rows<Accumulate>(y, y_stride, x, x_stride, w, tokens, in, r0, r1);
  } else {
    detail::linear_rows<Accumulate>(y, y_stride, x, x_stride, w, tokens, in, r0, r1);
  }
}

// The activation group of m's integer products (32 or 256), or 0 where its format has none.
inline int matrix_q8_group(const Matrix& m) {
  int group = 0;
  with_rows(m, [&](const auto& w) {
    using R = std::decay_t<decltype(w)>;
    if constexpr (detail::IsQ8BlockRows<R>::value) group = detail::q8_group<R::kFormat>();
  }, true);
  return group;
}

// out[i] = row r of m as float32.
inline void matrix_row_to_f32(float* out, const Matrix& m, int64_t r) {
  with_rows(m, [&](const auto& rows) {
    for (int64_t i = 0; i < m.cols; i += W) {
      const int n = static_cast<int>(std::min<int64_t>(W, m.cols - i));
      store_n(rows.load(r, i, n), out + i, n);
    }
  });
}

}  // namespace

namespace {

template <typename TC>
struct EngineImpl final : Engine::Impl {
  using Engine::Impl::Impl;

  void run(const int64_t* tokens, const int64_t* positions, const int64_t* rows, int64_t n,
           void* k_cache_v, void* v_cache_v, int64_t cache_rows, float* logits,
           int64_t first_logit, bool prompt, const int64_t* logit_tokens) override {
    const EngineSpec& s = spec;
    // 8-bit activations: decode calls (int8_activations), and prompts where prompt_bits says so.
    const int prompt_bits = detail::prompt_bits_run(s.prompt_bits);
    const bool int8_activations = prompt ? prompt_bits == 8 : s.int8_activations;
    const int64_t H = s.hidden, I = s.inter, D = s.head_dim, Hq = s.num_heads, Hkv = s.num_kv_heads;
    TC* k_cache = static_cast<TC*>(k_cache_v);
    TC* v_cache = static_cast<TC*>(v_cache_v);
    // K in key tiles where they fit evenly (see attention_internal.h); rows otherwise.
    const bool k_tiled = s.max_seq % detail::kTileKeys == 0;
    for (int64_t i = 0; i < n; ++i) seq_lens[i] = static_cast<int32_t>(positions[i] + 1);
    // The call's segments: runs of consecutive positions of one cache row (a prompt chunk, or
    // several prompts' chunks side by side; a decode step's rows, one token each). A segment
    // gets what it would get in a call of its own: over kMaxRowTileTokens tokens, the causal
    // prefill attention over it alone, else decode attention token by token; and a prompt
    // call's products take the GEMM whenever one of its segments is over kPromptGemmTokens
    // tokens, so a call of several such segments, or of several shorter ones, reads the
    // weights once for all of them with each segment's sums as alone.
    spans.clear();
    int64_t longest = 0;
    for (int64_t t0 = 0, t1; t0 < n; t0 = t1) {
      for (t1 = t0 + 1; t1 < n && rows[t1] == rows[t0] && positions[t1] == positions[t1 - 1] + 1; ++t1) {
      }
      longest = std::max(longest, t1 - t0);
      const bool causal = t1 - t0 > kMaxRowTileTokens && !prefill_ws.empty();
      if (!causal && !spans.empty() && !spans.back().causal)
        spans.back().end = t1;  // decode attention takes any tokens together
      else
        spans.push_back({t0, t1, causal});
    }
    const bool gemm = prompt ? longest > kPromptGemmTokens : n > kMaxRowTileTokens;
    DecodePlan plan = plan_gqa_decode(seq_lens.data(), n, Hkv);
    for (size_t w = 0; w < windows.size(); ++w) {  // a window's splits may be more (aligned to blocks)
      int32_t* first = first_keys.data() + w * s.max_tokens;
      for (int64_t i = 0; i < n; ++i) first[i] = static_cast<int32_t>(std::max<int64_t>(0, positions[i] + 1 - windows[w]));
      plan.max_splits = std::max(plan.max_splits, plan_gqa_decode(seq_lens.data(), n, Hkv, first).max_splits);
    }
    plan.threads = std::max<int64_t>(plan.threads, threads);
    const int64_t ws = gqa_decode_workspace_floats(plan, n, Hq, D);
    if (static_cast<int64_t>(attn_ws.size()) < ws) attn_ws.resize(ws);  // rarely: see make_engine_impl
    const int call = profiling ? calls++ : 0;
    const int64_t n_logits = n - first_logit;

#pragma omp parallel num_threads(threads)
    {
      const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
      int64_t mark_ns = (profiling && tid == 0) ? now_ns() : 0;
      auto mark = [&](int layer, Op op) {
        if (profiling && tid == 0) {
          const int64_t t = now_ns();
          events.push_back({call, layer, op, mark_ns, t});
          mark_ns = t;
        }
      };
      float* packed = pack.data() + static_cast<int64_t>(tid) * pack_floats;
      bool gemm_here = gemm;  // the layers' products; the LM head's below
      // y[t, r] (+)= rows [r0, r1) of w . x[t] for every token.
      auto product = [&](auto accumulate, float* y, int64_t y_stride, const float* x, int64_t x_stride,
                         const auto& w, int64_t tokens, int64_t in, int64_t r0, int64_t r1, GemmActs acts) {
        product_rows<decltype(accumulate)::value>(y, y_stride, x, x_stride, w, tokens, in, r0, r1, packed,
                                                  gemm_here, acts);
      };
      // The integer GEMM's activations (where the level has it): the tokens of x [tokens, in]
      // quantised once, to 8 bits for the activation groups that parts' formats use, or for a
      // prompt of 16-bit activations to 16; the tokens shared out (every thread then waits for
      // the others). None where the products take float32.
      detail::Q8Chunk q8[2];
      detail::Q16Chunk q16;
      auto share_acts = [&](const float* x, int64_t in, int64_t tokens,
                            std::initializer_list<const Matrix*> parts) -> GemmActs {
        // (A decode call of more than kMaxRowTileTokens tokens has 8-bit activations where the
        // level has that GEMM; the float32 GEMM elsewhere. A prompt's prompt_bits run already.)
        const bool eight = int8_activations && detail::q8_prompt_products(), sixteen = prompt && prompt_bits == 16;
        if (!gemm_here || !(eight || sixteen)) return {};
        bool used[2] = {false, false};
        for (const Matrix* m : parts)
          if (const int group = matrix_q8_group(*m)) used[group == 32 ? 0 : 1] = true;
        if (sixteen) {
          if (!(used[0] || used[1])) return {};
#pragma omp for schedule(static)
          for (int64_t t = 0; t < tokens; ++t)
            detail::quantize_q16(q16_values.data() + t * in, q16_scales.data() + t * (in / detail::kQ16Group),
                                 q16_sums.data() + t * (in / 16), x + t * in, in);
          q16 = {q16_values.data(), q16_scales.data(), q16_sums.data(), in};
          return {nullptr, &q16};
        }
        for (int i = 0; i < 2; ++i) {
          if (!used[i]) continue;
          const int group = i == 0 ? 32 : 256;
          int8_t* q = q8_values.data() + i * s.max_tokens * q8_cols;
          float* d = q8_scales.data() + i * s.max_tokens * (q8_cols / 32);
          int16_t* sums = q8_sums.data() + i * s.max_tokens * (q8_cols / 16);
#pragma omp for schedule(static)
          for (int64_t t = 0; t < tokens; ++t)
            detail::quantize_q8(q + t * in, d + t * (in / group), sums + t * (in / 16), x + t * in, in, group);
          q8[i] = {q, d, sums, in};
        }
        return {q8, nullptr};
      };
      // y (+)= [parts stacked by rows] x (+ bias) for this thread's rows, over `tokens` tokens
      // (each part its own format); then every thread waits for the others (the next phase
      // reads all of y).
      auto project = [&](auto accumulate, float* y, const float* x, std::initializer_list<const Matrix*> parts,
                         const float* bias, int64_t tokens) {
        const GemmActs acts = share_acts(x, (*parts.begin())->cols, tokens, parts);
        int64_t rows = 0;
        for (const Matrix* m : parts) rows += m->rows;
        int64_t r0, r1, base = 0;
        thread_range(rows, 4, tid, nt, r0, r1);
        for (const Matrix* m : parts) {
          const int64_t lo = std::max(r0, base) - base, hi = std::min(r1, base + m->rows) - base;
          if (lo < hi)
            with_rows(*m, [&](const auto& w) {
              product(accumulate, y + base, rows, x, m->cols, w, tokens, m->cols, lo, hi, acts);
            }, int8_activations);
          base += m->rows;
        }
        if (bias)
          for (int64_t t = 0; t < tokens; ++t)
            for (int64_t r = r0; r < r1; ++r) y[t * rows + r] += bias[r];
#pragma omp barrier
      };
      // The normed rows x (norm below). Decode calls (few tokens): every thread normalises
      // every row into its own copy, with no barrier (the last phase ended in one); prompt
      // chunks share the rows out.
      const bool own_rows = n <= kMaxRowTileTokens;
      float* x = own_rows ? xn_own.data() + static_cast<int64_t>(tid) * kMaxRowTileTokens * H : xn.data();
      // x[j] = rms_norm(resid row first + j, or pick[j]) * w for j < count.
      auto norm = [&](const float* w, int64_t count, int64_t first = 0, const int64_t* pick = nullptr) {
        auto row = [&](int64_t j) {
          detail::rms_norm_row(x + j * H, resid.data() + (pick ? pick[j] : first + j) * H, w, H, s.eps);
        };
        if (own_rows) {
          for (int64_t j = 0; j < count; ++j) row(j);
        } else {
#pragma omp for schedule(static)
          for (int64_t j = 0; j < count; ++j) row(j);
        }
      };
      // resid += rms_norm(y) * w for every token (y overwritten): a post-norm's residual add.
      auto add_normed = [&](float* y, const float* w) {
#pragma omp for schedule(static)
        for (int64_t t = 0; t < n; ++t) {
          float* yt = y + t * H;
          float* rt = resid.data() + t * H;
          detail::rms_norm_row(yt, yt, w, H, s.eps);
          for (int64_t i = 0; i < H; i += W) {
            const int m = static_cast<int>(std::min<int64_t>(W, H - i));
            store_n(load_n(rt + i, m) + load_n(yt + i, m), rt + i, m);
          }
        }
      };
      // The residual add of a projection [parts] x: straight into the residual, or through y and
      // its post-norm (Gemma 2/3).
      auto project_residual = [&](const float* post_norm, const float* x_in, std::initializer_list<const Matrix*> parts,
                                  const float* bias) {
        if (!post_norm) return project(std::true_type{}, resid.data(), x_in, parts, bias, n);
        project(std::false_type{}, post.data(), x_in, parts, bias, n);
        add_normed(post.data(), post_norm);
      };
      float* gate = tmp.data() + static_cast<int64_t>(tid) * 2 * s.max_tokens * chunk;
      float* up = gate + s.max_tokens * chunk;

#pragma omp for schedule(static)
      for (int64_t t = 0; t < n; ++t) {
        float* row = resid.data() + t * H;
        matrix_row_to_f32(row, s.embed, tokens[t]);
        if (s.embed_scale != 1.0f)
          for (int64_t i = 0; i < H; ++i) row[i] *= s.embed_scale;
      }
      mark(-1, Op::Embed);

      for (int l = 0; l < static_cast<int>(s.layers.size()); ++l) {
        const EngineLayer& L = s.layers[l];
        // This layer's cache [cache_rows, Hkv, S, D]: position p in slot p % S (a ring where S
        // < max_seq, on sliding-window layers).
        const int64_t S = slots[l];
        TC* kc = k_cache + cache_rows * Hkv * D * slot_offsets[l];
        TC* vc = v_cache + cache_rows * Hkv * D * slot_offsets[l];

        norm(L.attn_norm, n);
        mark(l, Op::AttnNorm);

        project(std::false_type{}, qkv.data(), x, {&L.q, &L.k, &L.v}, L.qkv_bias, n);
        mark(l, Op::QKV);

        // q heads normed (qk-norm) and rotated in place; k heads normed and rotated, then k and
        // v stored in the cache.
#pragma omp for schedule(static)
        for (int64_t item = 0; item < n * (Hq + Hkv); ++item) {
          const int64_t t = item / (Hq + Hkv), h = item % (Hq + Hkv), pos = positions[t];
          const float* cos = (L.rope_cos_sin ? L.rope_cos_sin : s.cos_sin) + pos * s.rot_dim;
          float* base = qkv.data() + t * qkv_dim;
          if (h < Hq) {
            float* q = base + h * D;
            if (L.q_norm) detail::rms_norm_row(q, q, L.q_norm, D, s.eps);
            detail::rotate_head(q, cos, cos + s.rot_dim / 2, s.rot_dim, s.is_neox);
          } else {
            const int64_t kh = h - Hq;
            float* k = base + q_dim + kh * D;
            if (L.k_norm) detail::rms_norm_row(k, k, L.k_norm, D, s.eps);
            detail::rotate_head(k, cos, cos + s.rot_dim / 2, s.rot_dim, s.is_neox);
            const int64_t head = (rows[t] * Hkv + kh) * S * D, slot = pos % S;
            if (k_tiled)
              detail::store_key_tiled(kc + head, slot, k, D);
            else
              detail::convert(kc + head + slot * D, k, D);
            detail::convert(vc + head + slot * D, base + q_dim + kv_dim + kh * D, D);
          }
        }
        mark(l, Op::RopeCache);

        const int wi = layer_window[l];
        for (const Span& sp : spans) {  // (each kernel ends in a barrier)
          const int64_t t0 = sp.begin, len = sp.end - sp.begin;
          if (sp.causal)  // a prompt chunk: blocks of queries meet blocks of keys
            detail::prefill_attention_team<float, TC>(attn.data() + t0 * q_dim, q_dim, qkv.data() + t0 * qkv_dim,
                                                      qkv_dim, kc + rows[t0] * Hkv * S * D,
                                                      vc + rows[t0] * Hkv * S * D, len, positions[t0],
                                                      Hq, Hkv, S, D, scale, L.sliding_window,
                                                      s.attn_softcap, prefill_ws.data(), k_tiled);
          else
            detail::gqa_decode_attention_team<float, TC>(
                attn.data() + t0 * q_dim, qkv.data() + t0 * qkv_dim, qkv_dim, kc, vc, rows + t0,
                seq_lens.data() + t0, wi < 0 ? nullptr : first_keys.data() + wi * s.max_tokens + t0, len, Hq,
                Hkv, S, D, scale, s.attn_softcap, plan, attn_ws.data(), k_tiled);
        }
        mark(l, Op::Attention);

        project_residual(L.post_attn_norm, attn.data(), {&L.o}, L.o_bias);
        mark(l, Op::OProj);

        norm(L.mlp_norm, n);
        mark(l, Op::MlpNorm);

        const GemmActs acts = share_acts(x, H, n, {&L.gate, &L.up});
        int64_t i0, i1;
        thread_range(I, W, tid, nt, i0, i1);
        if (i1 > i0) {
          with_rows(L.gate, [&](const auto& w) {
            product(std::false_type{}, gate, chunk, x, H, w.from(i0), n, H, 0, i1 - i0, acts);
          }, int8_activations);
          with_rows(L.up, [&](const auto& w) {
            product(std::false_type{}, up, chunk, x, H, w.from(i0), n, H, 0, i1 - i0, acts);
          }, int8_activations);
          const bool gelu = s.activation == Activation::GeluTanh;
          for (int64_t t = 0; t < n; ++t)
            for (int64_t i = 0; i < i1 - i0; i += W) {
              const int m = static_cast<int>(std::min<int64_t>(W, i1 - i0 - i));
              const VecF g = load_n(gate + t * chunk + i, m);
              store_n((gelu ? gelu_tanh(g) : silu(g)) * load_n(up + t * chunk + i, m), act.data() + t * I + i0 + i, m);
            }
        }
#pragma omp barrier
        mark(l, Op::GateUpSilu);

        project_residual(L.post_mlp_norm, act.data(), {&L.down}, nullptr);
        mark(l, Op::Down);
      }

      if (n_logits > 0) {  // the same on every thread: the barriers inside match
        norm(s.final_norm, n_logits, first_logit, logit_tokens);
        mark(-1, Op::FinalNorm);

        gemm_here = gemm && n_logits > kMaxRowTileTokens;
        project(std::false_type{}, logits, x, {&s.lm_head}, nullptr, n_logits);
        if (s.final_softcap > 0.0f) {
          const int64_t total = n_logits * s.vocab;
#pragma omp for schedule(static)
          for (int64_t i = 0; i < total; i += W) {
            const int m = static_cast<int>(std::min<int64_t>(W, total - i));
            store_n(soft_cap(load_n(logits + i, m), s.final_softcap), logits + i, m);
          }
        }
        mark(-1, Op::LMHead);
      }
    }
  }
};

}  // namespace

void matrix_product(float* y, const float* x, int64_t tokens, const Matrix& m, bool int8_activations,
                    int gemm_bits) {
  std::vector<float> packed(detail::gemm_pack_floats(m.cols));
  const bool gemm = tokens > kMaxRowTileTokens;
  // The integer GEMM's activations, as run's share_acts quantises them.
  const int group = gemm && detail::q8_prompt_products() ? matrix_q8_group(m) : 0;
  const int bits = !group ? 32 : detail::prompt_bits_run(int8_activations ? 8 : gemm_bits);
  const int64_t in = m.cols, g = bits == 8 ? group : detail::kQ16Group;
  std::vector<int8_t> q8(bits == 8 ? tokens * in : 0);
  std::vector<int16_t> q16(bits == 16 ? tokens * in : 0), sums8(bits == 8 ? tokens * (in / 16) : 0);
  std::vector<int32_t> sums16(bits == 16 ? tokens * (in / 16) : 0);
  std::vector<float> d(bits < 32 ? tokens * (in / g) : 0);
  for (int64_t t = 0; t < tokens && bits == 8; ++t)
    detail::quantize_q8(q8.data() + t * in, d.data() + t * (in / g), sums8.data() + t * (in / 16), x + t * in, in,
                        group);
  for (int64_t t = 0; t < tokens && bits == 16; ++t)
    detail::quantize_q16(q16.data() + t * in, d.data() + t * (in / g), sums16.data() + t * (in / 16), x + t * in, in);
  const detail::Q8Chunk chunk8[2] = {{q8.data(), d.data(), sums8.data(), in}, {q8.data(), d.data(), sums8.data(), in}};
  const detail::Q16Chunk chunk16{q16.data(), d.data(), sums16.data(), in};
  GemmActs acts;
  if (bits == 8) acts.q8 = chunk8;
  if (bits == 16) acts.q16 = &chunk16;
  with_rows(m, [&](const auto& w) {
    product_rows<false>(y, m.rows, x, m.cols, w, tokens, m.cols, 0, m.rows, packed.data(), gemm, acts);
  }, int8_activations);
}

int prompt_bits_run(int asked) { return detail::prompt_bits_run(asked); }

std::unique_ptr<Engine::Impl> make_engine_impl(EngineSpec s) {
  const int64_t H = s.hidden, I = s.inter, D = s.head_dim;
  const int64_t q_dim = s.num_heads * D, kv_dim = s.num_kv_heads * D;
  std::unique_ptr<Engine::Impl> impl;
  if (s.kv_dtype == DType::BFloat16)
    impl = std::make_unique<EngineImpl<bf16>>(std::move(s));
  else
    impl = std::make_unique<EngineImpl<float>>(std::move(s));
  Engine::Impl& m = *impl;
  const EngineSpec& sp = m.spec;
  m.isa = Isa::PYRUNTIME_ISA_ID;
  m.threads = sp.threads > 0 ? sp.threads : omp_get_max_threads();
  m.q_dim = q_dim;
  m.kv_dim = kv_dim;
  m.qkv_dim = q_dim + 2 * kv_dim;
  m.chunk = ceil_div(ceil_div(I, m.threads), W) * W;
  m.scale = sp.scale > 0.0f ? sp.scale : 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t N = sp.max_tokens;
  m.resid.assign(N * H, 0.0f);
  m.xn.assign(N * H, 0.0f);
  m.xn_own.assign(static_cast<int64_t>(m.threads) * kMaxRowTileTokens * H, 0.0f);
  m.qkv.assign(N * m.qkv_dim, 0.0f);
  m.attn.assign(N * q_dim, 0.0f);
  m.act.assign(N * I, 0.0f);
  for (const EngineLayer& L : sp.layers)
    if (L.post_attn_norm || L.post_mlp_norm) m.post.assign(N * H, 0.0f);
  m.tmp.assign(static_cast<int64_t>(m.threads) * 2 * N * m.chunk, 0.0f);
  m.seq_lens.assign(N, 0);
  m.spans.reserve(N);
  for (const EngineLayer& L : sp.layers) {
    int wi = -1;
    if (L.sliding_window > 0) {
      wi = static_cast<int>(std::find(m.windows.begin(), m.windows.end(), L.sliding_window) - m.windows.begin());
      if (wi == static_cast<int>(m.windows.size())) m.windows.push_back(L.sliding_window);
    }
    m.layer_window.push_back(wi);
    m.slot_offsets.push_back(m.slots.empty() ? 0 : m.slot_offsets.back() + m.slots.back());
    m.slots.push_back(kv_slots(L.sliding_window, sp.max_seq, N));
  }
  m.first_keys.assign(m.windows.size() * N, 0);
  m.pack_floats = detail::gemm_pack_floats(std::max({H, q_dim, I}));
  if (N > kPromptGemmTokens) {  // the GEMM's panels and activations: prompt calls over kPromptGemmTokens tokens
    m.pack.assign(static_cast<int64_t>(m.threads) * m.pack_floats, 0.0f);
    if (detail::q8_prompt_products()) {  // share_acts' buffers: 8 bits in groups of 32 and of 256; 16 bits
      m.q8_cols = std::max({H, q_dim, I});
      m.q8_values.assign(2 * N * m.q8_cols, 0);
      m.q8_scales.assign(2 * N * (m.q8_cols / 32), 0.0f);
      m.q8_sums.assign(2 * N * (m.q8_cols / 16), 0);
    }
    if (detail::q16_prompt_products()) {
      m.q16_values.assign(N * m.q8_cols, 0);
      m.q16_scales.assign(N * (m.q8_cols / detail::kQ16Group), 0.0f);
      m.q16_sums.assign(N * (m.q8_cols / 16), 0);
    }
  }
  if (N > kMaxRowTileTokens)  // causal prefill attention over prompt chunks of more tokens
    m.prefill_ws.assign(prefill_attention_workspace_floats(m.threads, sp.num_heads, sp.num_kv_heads, D), 0.0f);
  // Attention workspace for n tokens of the longest length; it grows when the OpenMP thread
  // count is raised later, or for a window whose splits, aligned to blocks, come to one more.
  std::vector<int32_t> longest(N, static_cast<int32_t>(sp.max_seq));
  DecodePlan plan = plan_gqa_decode(longest.data(), N, sp.num_kv_heads);
  plan.threads = std::max<int64_t>(plan.threads, m.threads);
  m.attn_ws.assign(gqa_decode_workspace_floats(plan, N, sp.num_heads, D), 0.0f);
  m.events.reserve(static_cast<size_t>(static_cast<int>(Op::Count)) * (sp.layers.size() + 1));
  return impl;
}

}  // namespace pyruntime::cpu::PYRUNTIME_ISA
