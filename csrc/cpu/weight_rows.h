// The weight formats as the CPU products read them: rows of a dense (float32, bfloat16) or an
// int8 (one scale per group) matrix, and how far ahead of a block of rows the products prefetch.
#pragma once

#include <type_traits>

#include "vec.h"

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

// Rows of a dense weight matrix [*, in] (float32 or bfloat16) with row stride `stride`. A tile
// takes rows 0, 1, .. of the view, tile_stride elements apart (0: stride, consecutive rows; more:
// rows of runs side by side).
template <typename T>
struct DenseRows {
  const T* w;
  int64_t stride;
  int64_t tile_stride = 0;
  int64_t row_step() const { return tile_stride ? tile_stride : stride; }
  // The view from row r on (with runs side by side: from row r of each run).
  DenseRows from(int64_t r) const { return {w + r * stride, stride, tile_stride}; }
  VecF load(int64_t r, int64_t i, int n) const { return load_n(w + r * row_step() + i, n); }
  // Requests row r's line at column i, `ahead` rows further on (once per 64-byte line).
  void prefetch_ahead(int64_t r, int64_t i, int64_t ahead) const {
    if ((i * static_cast<int64_t>(sizeof(T))) % 64 == 0) __builtin_prefetch(w + r * row_step() + ahead * stride + i, 0, 3);
  }
  static int64_t row_bytes(int64_t in) { return in * static_cast<int64_t>(sizeof(T)); }
};

// Rows of an int8 weight matrix [*, in] with one float32 scale per group of
// (1 << group_shift) columns: weight = q * scale. Groups are whole vectors, so there are
// no partial loads. The tiles sum q * x over a group first and scale that once. The rows are
// plain (block_shift 0) or interleaved in blocks of 1 << block_shift rows (engine.h's Matrix):
// group g of row r of a block at g * (block rows) * group + r * group within the block.
struct Q8Rows {
  static constexpr bool kGrouped = true;
  const int8_t* w;      // the matrix's first row (a block's start)
  const float* scales;  // its scales
  int64_t cols;
  int64_t row0;  // the first row of this view
  int group_shift, block_shift;
  Q8Rows from(int64_t r) const { return {w, scales, cols, row0 + r, group_shift, block_shift}; }
  // Column i of row r of this view, and the scale of its group g. Along a row, group g + 1
  // follows group g group_step() values and scale_step() scales further on.
  const int8_t* at(int64_t r, int64_t i) const {
    const auto [block_row, in_block] = split_row(r);
    return w + block_row * cols + ((i >> group_shift) << (group_shift + block_shift)) +
           (in_block << group_shift) + (i & ((int64_t(1) << group_shift) - 1));
  }
  const float* scale_at(int64_t r, int64_t g) const {
    const auto [block_row, in_block] = split_row(r);
    return scales + block_row * (cols >> group_shift) + (g << block_shift) + in_block;
  }
  float scale(int64_t r, int64_t g) const { return *scale_at(r, g); }
  int64_t group_step() const { return int64_t(1) << (group_shift + block_shift); }
  int64_t scale_step() const { return int64_t(1) << block_shift; }
  VecF load(int64_t r, int64_t i, int) const { return VecF::load(at(r, i)) * VecF::set1(scale(r, i >> group_shift)); }
  static int64_t row_bytes(int64_t in) { return in; }  // the scales are a separate, 1/16 as dense stream

 private:
  // Row r of this view as (its block's first row, its place in the block).
  std::pair<int64_t, int64_t> split_row(int64_t r) const {
    const int64_t row = row0 + r, in_block = row & ((int64_t(1) << block_shift) - 1);
    return {row - in_block, in_block};
  }
};

// How many rows ahead of a block of R rows [in columns] the tiles prefetch: whole blocks, at
// least kPrefetchAheadBytes ahead. One block ahead is too close for short int8 rows (576 bytes:
// a 2.3 KiB block), whose requests must go out two blocks ahead.
template <int R, typename Rows>
inline int64_t prefetch_rows_ahead(int64_t in) {
  const int64_t block = R * Rows::row_bytes(in);
  return R * ((kPrefetchAheadBytes + block - 1) / block);
}

template <typename Rows, typename = void>
struct IsGrouped : std::false_type {};
template <typename Rows>
struct IsGrouped<Rows, std::void_t<decltype(Rows::kGrouped)>> : std::bool_constant<Rows::kGrouped> {};

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
