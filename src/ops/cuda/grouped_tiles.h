// How the grouped GEMM kernels (grouped_gemm.cu) split their work into output tiles, written once
// for the device and the host, so that a CPU test can check that the tiles cover every output
// element exactly once for any routing.
//
// Each expert contributes a run of tiles; the runs are laid end to end in expert order, and a
// kernel's CTAs walk the flat list. Within an expert's run the row tile varies fastest, so CTAs
// that run at the same time read the same columns of that expert's weights.
#pragma once

#if defined(__CUDACC__)
#define G4_TILES_FN __host__ __device__ __forceinline__
#else
#define G4_TILES_FN inline
#endif

namespace g4::ops::cuda::grouped {

constexpr int kBM = 128, kBN = 128, kBK = 64;  // output tile rows x columns, K slice per stage

// forward:     y_e   [rows_e, Nd] = xs_e · w_e         fixed n = Nd, k = Kd
// input grad:  dxs_e [rows_e, Kd] = dy_e · w_eᵀ        fixed n = Kd, k = Nd
// weight grad: dw_e  [Kd, Nd]     = xs_eᵀ · dy_e       fixed m = Kd, n = Nd; K = rows_e
enum Kind : int { kForward, kInputGrad, kWeightGrad };

struct Sizes {
  int m, n, k;  // the fixed sizes of the kind (the varying one is unused)
};

struct Tile {
  int expert, row0, rows;  // the expert's rows [row0, row0 + rows) of the sorted row tensors
  int m0, n0;              // the tile's first output row (within the expert, or of dw_e) and column
  int k_steps;             // K slices of kBK
};

G4_TILES_FN int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Tiles of an expert with `rows` rows. Every expert has weight-gradient tiles, even without rows:
// they write beta·dw_e.
G4_TILES_FN int tiles_of(Kind kind, int rows, const Sizes& s) {
  const int m_tiles = kind == kWeightGrad ? ceil_div(s.m, kBM) : ceil_div(rows, kBM);
  return m_tiles * ceil_div(s.n, kBN);
}

// Flat tile t, given start[e] = the first tile of expert e (start[experts] = the total) and the row
// offsets: the expert is the last e with start[e] <= t, which skips experts without tiles.
G4_TILES_FN Tile locate(Kind kind, int t, const int* start, const int* row_off, int experts, const Sizes& s) {
  int lo = 0, hi = experts - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (start[mid] <= t) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  Tile tl;
  tl.expert = lo;
  tl.row0 = row_off[lo];
  tl.rows = row_off[lo + 1] - tl.row0;
  const int local = t - start[lo];
  const int m_tiles = kind == kWeightGrad ? ceil_div(s.m, kBM) : ceil_div(tl.rows, kBM);
  tl.m0 = (local % m_tiles) * kBM;
  tl.n0 = (local / m_tiles) * kBN;
  tl.k_steps = ceil_div(kind == kWeightGrad ? tl.rows : s.k, kBK);
  return tl;
}

}  // namespace g4::ops::cuda::grouped

#undef G4_TILES_FN
