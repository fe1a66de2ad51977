// 3x3 convolutions with padding 1 (stride 1 or 2) and BatchNorm channel sums for XLA:CPU,
// as XLA FFI handlers (lt_jax/models/native.py builds this file for the host on first use).
//
// Layouts are the ones XLA holds for the ResNets: activations NHWC, kernels HWIO, float32.
//   lt_jax_conv3x3_fwd    y[n,o,p,m]  = sum_{a,b,k} x[n, s*o+a-1, s*p+b-1, k] * w[a,b,k,m]
//   lt_jax_conv3x3_dgrad  dx = the transpose of fwd applied to dy (same w)
//   lt_jax_conv3x3_wgrad  dw[a,b,k,m] = sum_{n,o,p} x[n, s*o+a-1, s*p+b-1, k] * dy[n,o,p,m]
//   lt_jax_channel_sums   per-channel sum(a) and sum(a * b) over all but the last axis
// Every convolution pass is direct: a tile of output pixels times blocks of 16 output
// channels is held in vector registers while the taps and input channels stream past,
// so no im2col matrix is written to memory. The stride-1 input gradient is the forward
// correlation with flipped, transposed taps; the stride-2 one is split by output parity
// into four small correlations (no multiplications by zero).
//
// Work is split into a fixed number of chunks (rows of the batch, images, or parts of
// dw) that XLA's intra-op thread pool works off; where chunks produce partial sums they
// are added in chunk order, so results never depend on the thread count or timing.
//
// The vector type is a GCC/Clang vector extension of 16 floats; the compiler maps it to
// the host's widest SIMD (AVX-512, AVX2, NEON, ...).

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64), aligned(4), may_alias));
constexpr int kV = 16;

inline v16 load(const float* p) {
  v16 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, v16 v) { __builtin_memcpy(p, &v, sizeof(v)); }
inline v16 splat(float x) { return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }

// ---------------------------------------------------------------------------------------------
// Work sharing on XLA's intra-op thread pool. The caller works too, so the call finishes
// even when every pool thread is busy; helpers that start after all chunks are taken
// return at once (the shared state outlives the call through shared_ptr).

struct Work {
  std::atomic<int64_t> next{0};
  int64_t chunks = 0;
  std::mutex mu;
  std::condition_variable cv;
  int64_t done = 0;
};

template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t chunks, const F& body) {
  if (chunks <= 0) return;
  auto work = std::make_shared<Work>();
  work->chunks = chunks;
  auto fn = std::make_shared<F>(body);
  auto run = [work, fn] {
    int64_t mine = 0;
    for (int64_t c; (c = work->next.fetch_add(1)) < work->chunks; ++mine) (*fn)(c);
    if (mine) {
      std::lock_guard<std::mutex> lock(work->mu);
      work->done += mine;
      if (work->done == work->chunks) work->cv.notify_all();
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(run)(run));
  run();
  std::unique_lock<std::mutex> lock(work->mu);
  work->cv.wait(lock, [&] { return work->done == work->chunks; });
}

// ---------------------------------------------------------------------------------------------
// Geometry. Input (n, h, w, k); output (n, ho, wo, m) with ho = (h - 1) / s + 1.

struct Shape {
  int64_t n, h, w, k, ho, wo, m, s;
};

// Register tiles. The machine needs many independent accumulators to keep its FMA units
// busy (about 24 vectors of 16 floats on the AVX-512 development machine), so a tile
// holds kR output rows x kP pixels x kQ blocks of 16 output channels, 24 vectors.
//
// Correlation of input rows with kTA x kTB taps w (kTA, kTB, k, m): output row r of the
// tile reads rows kS*r + a (a < kTA) of `rows` (each wp pixels x k channels), output
// pixel p reads pixel kS*p + b (b < kTB); output pixel p of row r is stored at
// out + r * out_row + p * ps. Each input value is broadcast once and multiplied with
// every tap b of every output pixel that reads it, so a load feeds up to kTB * kQ
// multiply-adds.
template <int kR, int kP, int kQ, int kS, int kTA, int kTB>
inline void Tile(const float* rows, int64_t wp, int64_t k, const float* w, int64_t m, int64_t m0,
                 int64_t p0, float* out, int64_t out_row, int64_t ps) {
  constexpr int kIn = kS * (kP - 1) + kTB;  // input pixels one tile row reads
  v16 acc[kR][kP][kQ];
  for (int r = 0; r < kR; ++r)
    for (int p = 0; p < kP; ++p)
      for (int q = 0; q < kQ; ++q) acc[r][p][q] = splat(0.f);
  for (int a = 0; a < kTA; ++a) {
    const float* wt = w + a * kTB * k * m + m0;
    const float* xs = rows + (a * wp + kS * p0) * k;
    for (int64_t c = 0; c < k; ++c) {
      v16 wv[kTB][kQ];
      for (int b = 0; b < kTB; ++b)
        for (int q = 0; q < kQ; ++q) wv[b][q] = load(wt + (b * k + c) * m + q * kV);
      for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 32
        for (int j = 0; j < kIn; ++j) {
          const v16 xv = splat(xs[(kS * r * wp + j) * k + c]);
#pragma GCC unroll 3
          for (int b = 0; b < kTB; ++b) {
            const int p = (j - b) / kS;
            if (j - b < 0 || (j - b) % kS || p >= kP) continue;
            for (int q = 0; q < kQ; ++q) acc[r][p][q] += xv * wv[b][q];
          }
        }
      }
    }
  }
  for (int r = 0; r < kR; ++r)
    for (int p = 0; p < kP; ++p)
      for (int q = 0; q < kQ; ++q)
        store(out + r * out_row + (p0 + p) * ps + m0 + q * kV, acc[r][p][q]);
}

// Output pixels [p, end) in tiles of kP, the rest in tiles of kP/2, kP/4, ..., 1 (small
// feature maps, 7x7 or 3x3, would otherwise run one pixel at a time).
template <int kR, int kQ, int kS, int kTA, int kTB, int kP>
void RowOfTiles(const float* rows, int64_t wp, int64_t k, const float* w, int64_t m, int64_t m0,
                int64_t p, int64_t end, float* out, int64_t out_row, int64_t ps) {
  for (; p + kP <= end; p += kP)
    Tile<kR, kP, kQ, kS, kTA, kTB>(rows, wp, k, w, m, m0, p, out, out_row, ps);
  if constexpr (kP > 1) {
    if (p < end)
      RowOfTiles<kR, kQ, kS, kTA, kTB, kP / 2>(rows, wp, k, w, m, m0, p, end, out, out_row, ps);
  }
}

// kR output rows of wo pixels (m channels each; rows out_row, pixels ps floats apart).
template <int kR, int kS, int kTA = 3, int kTB = 3>
void CorrelateRows(const float* rows, int64_t wp, int64_t k, const float* w, int64_t m, int64_t wo,
                   float* out, int64_t out_row, int64_t ps) {
  if (m % (2 * kV) == 0) {
    constexpr int kP = 24 / (kR * 2) > 0 ? 24 / (kR * 2) : 1;
    for (int64_t m0 = 0; m0 < m; m0 += 2 * kV)
      RowOfTiles<kR, 2, kS, kTA, kTB, kP>(rows, wp, k, w, m, m0, 0, wo, out, out_row, ps);
  } else {
    constexpr int kP = 24 / kR;
    for (int64_t m0 = 0; m0 < m; m0 += kV)
      RowOfTiles<kR, 1, kS, kTA, kTB, kP>(rows, wp, k, w, m, m0, 0, wo, out, out_row, ps);
  }
}

// At most kRows output rows at a time.
constexpr int kRows = 3;

// CorrelateRows for nr = 1..kRows rows, nr known at run time.
template <int kS, int kTA = 3, int kTB = 3>
void CorrelateRowsN(int64_t nr, const float* rows, int64_t wp, int64_t k, const float* w, int64_t m,
                    int64_t wo, float* out, int64_t out_row, int64_t ps) {
  if (nr == 3)
    CorrelateRows<3, kS, kTA, kTB>(rows, wp, k, w, m, wo, out, out_row, ps);
  else if (nr == 2)
    CorrelateRows<2, kS, kTA, kTB>(rows, wp, k, w, m, wo, out, out_row, ps);
  else if (nr == 1)
    CorrelateRows<1, kS, kTA, kTB>(rows, wp, k, w, m, wo, out, out_row, ps);
}

// Input rows s*o0-1 .. s*(o0+nr-1)+1 of image n, zero outside the image and zero-padded by
// one pixel left and right: scratch[i][1 + q][k] = x[n, s*o0-1+i, q, k].
void InputRows(const float* x, const Shape& d, int64_t n, int64_t o0, int64_t nr, float* scratch) {
  const int64_t wp = d.w + 2, count = d.s * (nr - 1) + 3;
  std::memset(scratch, 0, sizeof(float) * count * wp * d.k);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t r = d.s * o0 - 1 + i;
    if (r < 0 || r >= d.h) continue;
    std::memcpy(scratch + (i * wp + 1) * d.k, x + ((n * d.h + r) * d.w) * d.k,
                sizeof(float) * d.w * d.k);
  }
}

template <int kS>
void ForwardImageRows(const float* x, const float* w, float* y, const Shape& d, int64_t n,
                      int64_t o0, int64_t o1, float* scratch) {
  const int64_t wp = d.w + 2, out_row = d.wo * d.m;
  for (int64_t o = o0; o < o1;) {
    const int64_t nr = std::min<int64_t>(kRows, o1 - o);
    InputRows(x, d, n, o, nr, scratch);
    CorrelateRowsN<kS>(nr, scratch, wp, d.k, w, d.m, d.wo, y + (n * d.ho + o) * out_row, out_row,
                       d.m);
    o += nr;
  }
}

// Calls fn(n, o0, o1) for the pieces of flattened rows [r0, r1) of (n, rows_per_image).
template <typename F>
void ByImage(int64_t r0, int64_t r1, int64_t per_image, const F& fn) {
  while (r0 < r1) {
    const int64_t n = r0 / per_image, o0 = r0 % per_image;
    const int64_t o1 = std::min(per_image, o0 + (r1 - r0));
    fn(n, o0, o1);
    r0 += o1 - o0;
  }
}

// Rows [r0, r1) of the flattened (n, ho) output of the forward pass.
void ForwardRows(const float* x, const float* w, float* y, const Shape& d, int64_t r0, int64_t r1) {
  std::vector<float> scratch((d.s * (kRows - 1) + 3) * (d.w + 2) * d.k);
  ByImage(r0, r1, d.ho, [&](int64_t n, int64_t o0, int64_t o1) {
    if (d.s == 1)
      ForwardImageRows<1>(x, w, y, d, n, o0, o1, scratch.data());
    else
      ForwardImageRows<2>(x, w, y, d, n, o0, o1, scratch.data());
  });
}

// Stride-1 input-gradient rows [r0, r1) of the flattened (n, h) input:
// dx[q] = sum_a dy[q - 1 + a] wf[a] with wf[a,b,m,k] = w[2-a,2-b,k,m] (flipped and
// transposed taps), i.e. the forward correlation of 1-padded dy rows.
void DgradRows(const float* dy, const float* wf, float* dx, const Shape& d, int64_t r0,
               int64_t r1) {
  // dy read as a stride-1 input: its rows q-1 .. q+nr for output rows q .. q+nr-1 of dx.
  const Shape dyd{d.n, d.ho, d.wo, d.m, d.h, d.w, d.k, 1};
  const int64_t wp = d.w + 2, out_row = d.w * d.k;
  std::vector<float> scratch((kRows + 2) * wp * d.m);
  ByImage(r0, r1, d.h, [&](int64_t n, int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1;) {
      const int64_t nr = std::min<int64_t>(kRows, q1 - q);
      InputRows(dy, dyd, n, q, nr, scratch.data());
      CorrelateRowsN<1>(nr, scratch.data(), wp, d.m, wf, d.k, d.w, dx + (n * d.h + q) * out_row,
                        out_row, d.k);
      q += nr;
    }
  });
}

// Stride-2 input gradient by output parity: dx[2i + py, 2j + px] only receives taps a with
// a = 1 (py = 0) or a in {2, 0} from dy rows i, i + 1 (py = 1), likewise b for columns, so
// each of the four parity classes is a small correlation of dy (1x1, 1x2, 2x1 or 2x2
// taps) with no multiplications by zero. `classes` holds the four classes' taps,
// transposed ((ta, tb, m, k) each), one after the other.
constexpr int kTapRows[2][2] = {{1, -1}, {2, 0}};  // a per (parity, tap index)

void DgradParityRows(int64_t nr, const float* scratch, int64_t wpg, const float* cls, int ta,
                     int tb, const Shape& d, int64_t cols, float* out, int64_t out_row) {
  const int64_t ps = 2 * d.k;  // every other pixel of dx
  if (ta == 1 && tb == 1)
    CorrelateRowsN<1, 1, 1>(nr, scratch, wpg, d.m, cls, d.k, cols, out, out_row, ps);
  else if (ta == 1)
    CorrelateRowsN<1, 1, 2>(nr, scratch, wpg, d.m, cls, d.k, cols, out, out_row, ps);
  else if (tb == 1)
    CorrelateRowsN<1, 2, 1>(nr, scratch, wpg, d.m, cls, d.k, cols, out, out_row, ps);
  else
    CorrelateRowsN<1, 2, 2>(nr, scratch, wpg, d.m, cls, d.k, cols, out, out_row, ps);
}

// Rows [r0, r1) of the flattened (n, i) half-resolution grid, i < ceil(h / 2).
void DgradStride2Rows(const float* dy, const float* classes, float* dx, const Shape& d, int64_t r0,
                      int64_t r1) {
  const int64_t hi = (d.h + 1) / 2, wpg = d.wo + 1;
  std::vector<float> scratch((kRows + 1) * wpg * d.m);
  ByImage(r0, r1, hi, [&](int64_t n, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1;) {
      const int64_t nr = std::min<int64_t>(kRows, i1 - i);
      // dy rows i .. i + nr, zero beyond the last row and one zero pixel at the right.
      std::memset(scratch.data(), 0, sizeof(float) * scratch.size());
      for (int64_t t = 0; t <= nr && i + t < d.ho; ++t)
        std::memcpy(scratch.data() + t * wpg * d.m, dy + ((n * d.ho + i + t) * d.wo) * d.m,
                    sizeof(float) * d.wo * d.m);
      const float* cls = classes;
      for (int py = 0; py < 2; ++py) {
        for (int px = 0; px < 2; ++px) {
          const int ta = py + 1, tb = px + 1;
          const int64_t rows = std::min<int64_t>(nr, (d.h - py + 1) / 2 - i);
          const int64_t cols = (d.w - px + 1) / 2;
          float* out = dx + ((n * d.h + 2 * i + py) * d.w + px) * d.k;
          const int64_t out_row = 2 * d.w * d.k;
          DgradParityRows(rows, scratch.data(), wpg, cls, ta, tb, d, cols, out, out_row);
          cls += ta * tb * d.m * d.k;
        }
      }
      i += nr;
    }
  });
}

// Weight gradient, taps (a, b = 0..2), input channels [c0, c0 + kC), output channels
// [m0, m0 + 16 kQ), over images [n0, n1) of `images` (zero-padded, (h + 3) x (w + 2) x k
// each: one spare row below for strided layers of odd height) and their output gradients
// g. The 3 * kC * kQ = 24 vectors are accumulated in float32 registers over one image's
// pixels, then added up across images in double (a long float32 running sum would lose
// accuracy on large batches), and stored to dw.
template <int kC, int kQ, int kS>
void WgradItem(const float* images, int64_t n0, int64_t n1, const float* g, const Shape& d, int a,
               int64_t m0, int64_t c0, float* dw) {
  const int64_t wp = d.w + 2, image_size = (d.h + 3) * wp * d.k, g_size = d.ho * d.wo * d.m;
  double total[3][kC][kQ][kV] = {};
  for (int64_t n = n0; n < n1; ++n) {
    v16 acc[3][kC][kQ];
    for (int b = 0; b < 3; ++b)
      for (int c = 0; c < kC; ++c)
        for (int q = 0; q < kQ; ++q) acc[b][c][q] = splat(0.f);
    for (int64_t o = 0; o < d.ho; ++o) {
      const float* xs = images + n * image_size + ((kS * o + a) * wp) * d.k + c0;
      const float* gs = g + n * g_size + o * d.wo * d.m + m0;
      for (int64_t p = 0; p < d.wo; ++p) {
        v16 gv[kQ];
        for (int q = 0; q < kQ; ++q) gv[q] = load(gs + p * d.m + q * kV);
        const float* xp = xs + kS * p * d.k;
        for (int b = 0; b < 3; ++b)
          for (int c = 0; c < kC; ++c) {
            const v16 xv = splat(xp[b * d.k + c]);
            for (int q = 0; q < kQ; ++q) acc[b][c][q] += xv * gv[q];
          }
      }
    }
    for (int b = 0; b < 3; ++b)
      for (int c = 0; c < kC; ++c)
        for (int q = 0; q < kQ; ++q)
          for (int l = 0; l < kV; ++l) total[b][c][q][l] += acc[b][c][q][l];
  }
  for (int b = 0; b < 3; ++b)
    for (int c = 0; c < kC; ++c)
      for (int q = 0; q < kQ; ++q)
        for (int l = 0; l < kV; ++l)
          dw[((a * 3 + b) * d.k + c0 + c) * d.m + m0 + q * kV + l] =
              static_cast<float>(total[b][c][q][l]);
}

// The register tile (kC, kQ) for a layer, with WgradItem instantiated for it per stride.
using WgradItemFn = void (*)(const float*, int64_t, int64_t, const float*, const Shape&, int,
                             int64_t, int64_t, float*);
struct WgradTile {
  int c, q;
  WgradItemFn stride1, stride2;
};

template <int kC, int kQ>
constexpr WgradTile MakeWgradTile() {
  return {kC, kQ, &WgradItem<kC, kQ, 1>, &WgradItem<kC, kQ, 2>};
}

WgradTile ChooseWgradTile(const Shape& d) {
  if (d.m % (4 * kV) == 0 && d.k % 2 == 0) return MakeWgradTile<2, 4>();
  if (d.m % (2 * kV) == 0 && d.k % 4 == 0) return MakeWgradTile<4, 2>();
  if (d.k % 8 == 0) return MakeWgradTile<8, 1>();
  if (d.k % 3 == 0) return MakeWgradTile<3, 1>();
  return MakeWgradTile<1, 1>();
}

// Items (a, m0, c0) of dw in [i0, i1), over images [n0, n1).
void WgradItems(const WgradTile& t, const float* images, int64_t n0, int64_t n1, const float* g,
                const Shape& d, int64_t i0, int64_t i1, float* dw) {
  const int64_t mb = d.m / (t.q * kV), cb = d.k / t.c;
  for (int64_t i = i0; i < i1; ++i) {
    const int a = static_cast<int>(i / (mb * cb));
    const int64_t m0 = (i / cb) % mb * t.q * kV, c0 = i % cb * t.c;
    (d.s == 1 ? t.stride1 : t.stride2)(images, n0, n1, g, d, a, m0, c0, dw);
  }
}

// Zero-padded copies of images [n0, n1) of x, at their place in `images`.
void PadImages(const float* x, const Shape& d, int64_t n0, int64_t n1, float* images) {
  const int64_t wp = d.w + 2, image_size = (d.h + 3) * wp * d.k;
  std::memset(images + n0 * image_size, 0, sizeof(float) * (n1 - n0) * image_size);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t r = 0; r < d.h; ++r)
      std::memcpy(images + n * image_size + ((r + 1) * wp + 1) * d.k,
                  x + ((n * d.h + r) * d.w) * d.k, sizeof(float) * d.w * d.k);
}

// ---------------------------------------------------------------------------------------------
// Checks and chunking.

constexpr int64_t kChunks = 32;           // fixed, so that partial sums are added in the same order
constexpr int64_t kSmallWgrad = 64 * 64;  // k * m up to which dw is summed per image chunk

ffi::Error Check(const Shape& d) {
  if (d.s != 1 && d.s != 2) return ffi::Error::InvalidArgument("stride must be 1 or 2");
  if (d.m % kV) return ffi::Error::InvalidArgument("output channels must be a multiple of 16");
  if (d.ho != (d.h - 1) / d.s + 1 || d.wo != (d.w - 1) / d.s + 1)
    return ffi::Error::InvalidArgument("output spatial shape does not match the input");
  return ffi::Error::Success();
}

Shape Geometry(ffi::Span<const int64_t> in, ffi::Span<const int64_t> out, int64_t s) {
  return Shape{in[0], in[1], in[2], in[3], out[1], out[2], out[3], s};
}

inline int64_t ChunkBegin(int64_t rows, int64_t chunks, int64_t c) { return rows * c / chunks; }

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride) {
  const Shape d = Geometry(x.dimensions(), y->dimensions(), stride);
  if (ffi::Error e = Check(d); e.failure()) return e;
  const int64_t rows = d.n * d.ho, chunks = std::min(rows, kChunks);
  const float *xp = x.typed_data(), *wp = w.typed_data();
  float* yp = y->typed_data();
  ParallelFor(pool, chunks, [&](int64_t c) {
    ForwardRows(xp, wp, yp, d, ChunkBegin(rows, chunks, c), ChunkBegin(rows, chunks, c + 1));
  });
  return ffi::Error::Success();
}

ffi::Error DgradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                     ffi::ResultBuffer<ffi::F32> dx, int64_t stride) {
  const Shape d = Geometry(dx->dimensions(), dy.dimensions(), stride);
  if (ffi::Error e = Check(d); e.failure()) return e;
  if (d.k % kV) return ffi::Error::InvalidArgument("input channels must be a multiple of 16");
  // Transposed taps, (m, k) per tap, in 16x16 blocks: stride 1 flips them (wf[a,b] =
  // w[2-a,2-b]^T), stride 2 orders them by parity class (see DgradStride2Rows).
  int64_t src_tap[9];
  if (d.s == 1) {
    for (int t = 0; t < 9; ++t) src_tap[t] = 8 - t;
  } else {
    int t = 0;
    for (int py = 0; py < 2; ++py)
      for (int px = 0; px < 2; ++px)
        for (int ta = 0; ta <= py; ++ta)
          for (int tb = 0; tb <= px; ++tb) src_tap[t++] = kTapRows[py][ta] * 3 + kTapRows[px][tb];
  }
  std::vector<float> wf(9 * d.k * d.m);
  const float* wp = w.typed_data();
  float* wfp_out = wf.data();
  ParallelFor(pool, 9, [&](int64_t tap) {
    const float* src = wp + src_tap[tap] * d.k * d.m;
    float* dst = wfp_out + tap * d.m * d.k;
    for (int64_t k0 = 0; k0 < d.k; k0 += kV)
      for (int64_t m0 = 0; m0 < d.m; m0 += kV)
        for (int64_t kk = k0; kk < std::min(d.k, k0 + kV); ++kk)
          for (int64_t mm = m0; mm < std::min(d.m, m0 + kV); ++mm)
            dst[mm * d.k + kk] = src[kk * d.m + mm];
  });
  // Stride 2 works through the half-resolution rows (both parities of a dx row pair).
  const int64_t rows = d.n * (d.s == 2 ? (d.h + 1) / 2 : d.h), chunks = std::min(rows, kChunks);
  const auto rows_fn = d.s == 2 ? DgradStride2Rows : DgradRows;
  const float* gp = dy.typed_data();
  float* xp = dx->typed_data();
  const float* wfp = wf.data();
  ParallelFor(pool, chunks, [&](int64_t c) {
    rows_fn(gp, wfp, xp, d, ChunkBegin(rows, chunks, c), ChunkBegin(rows, chunks, c + 1));
  });
  return ffi::Error::Success();
}

ffi::Error WgradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                     ffi::ResultBuffer<ffi::F32> dw, int64_t stride) {
  const Shape d = Geometry(x.dimensions(), dy.dimensions(), stride);
  if (ffi::Error e = Check(d); e.failure()) return e;
  const WgradTile t = ChooseWgradTile(d);
  const int64_t size = 9 * d.k * d.m, items = 3 * (d.m / (t.q * kV)) * (d.k / t.c);
  const int64_t image_size = (d.h + 3) * (d.w + 2) * d.k;
  const float *xp = x.typed_data(), *gp = dy.typed_data();
  float* out = dw->typed_data();
  if (d.k * d.m > kSmallWgrad) {
    // Wide layers: every work item is a disjoint part of dw over the whole batch, so no
    // partial copies of dw (megabytes each) are written and added up.
    std::vector<float> images(d.n * image_size);
    const int64_t pads = std::min(d.n, kChunks);
    ParallelFor(pool, pads, [&](int64_t c) {
      PadImages(xp, d, ChunkBegin(d.n, pads, c), ChunkBegin(d.n, pads, c + 1), images.data());
    });
    const int64_t chunks = std::min(items, 8 * kChunks);
    ParallelFor(pool, chunks, [&](int64_t c) {
      WgradItems(t, images.data(), 0, d.n, gp, d, ChunkBegin(items, chunks, c),
                 ChunkBegin(items, chunks, c + 1), out);
    });
    return ffi::Error::Success();
  }
  // Narrow layers (ResNet-32): chunks of images, each summing its padded images (kept in
  // cache) into its own partial dw; the partials are added in chunk order.
  const int64_t chunks = std::min(d.n, kChunks);
  std::vector<float> partial(chunks * size);
  float* pp = partial.data();
  ParallelFor(pool, chunks, [&](int64_t c) {
    const int64_t n0 = ChunkBegin(d.n, chunks, c), n1 = ChunkBegin(d.n, chunks, c + 1);
    std::vector<float> images((n1 - n0) * image_size);
    PadImages(xp + n0 * d.h * d.w * d.k, d, 0, n1 - n0, images.data());
    WgradItems(t, images.data(), 0, n1 - n0, gp + n0 * d.ho * d.wo * d.m, d, 0, items,
               pp + c * size);
  });
  std::memcpy(out, pp, sizeof(float) * size);
  for (int64_t c = 1; c < chunks; ++c)
    for (int64_t i = 0; i < size; ++i) out[i] += pp[c * size + i];
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------
// Per-channel sums for BatchNorm: out[0, c] = sum(a[..., c]), out[1, c] = sum(a[..., c] * b[...,
// c]) over all but the last axis. Each block of rows (one image) is summed in float32 vectors, four
// interleaved accumulators per sum, and the block totals are added in double, block by block in a
// fixed order: more accurate than one float32 sum, and independent of threads.

void ChannelSumsBlock(const float* a, const float* b, int64_t rows, int64_t c, double* out) {
  for (int64_t c0 = 0; c0 < c; c0 += kV) {
    v16 s[4], q[4];
    for (int i = 0; i < 4; ++i) s[i] = q[i] = splat(0.f);
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4)
      for (int i = 0; i < 4; ++i) {
        const v16 x = load(a + (r + i) * c + c0), y = load(b + (r + i) * c + c0);
        s[i] += x;
        q[i] += x * y;
      }
    for (; r < rows; ++r) {
      const v16 x = load(a + r * c + c0), y = load(b + r * c + c0);
      s[0] += x;
      q[0] += x * y;
    }
    const v16 st = (s[0] + s[1]) + (s[2] + s[3]), qt = (q[0] + q[1]) + (q[2] + q[3]);
    for (int l = 0; l < kV; ++l) {
      out[c0 + l] += st[l];
      out[c + c0 + l] += qt[l];
    }
  }
}

ffi::Error ChannelSumsImpl(ffi::ThreadPool pool, ffi::AnyBuffer a_buf, ffi::AnyBuffer b_buf,
                           ffi::ResultBuffer<ffi::F32> out) {
  if (a_buf.element_type() != ffi::F32 || b_buf.element_type() != ffi::F32)
    return ffi::Error::InvalidArgument("channel sums take float32 inputs");
  const auto dims = a_buf.dimensions();
  if (dims.size() < 2 || b_buf.dimensions().size() != dims.size())
    return ffi::Error::InvalidArgument("channel sums need inputs of equal rank >= 2");
  for (size_t i = 0; i < dims.size(); ++i)
    if (dims[i] != b_buf.dimensions()[i])
      return ffi::Error::InvalidArgument("channel sums need inputs of equal shape");
  const int64_t c = dims[dims.size() - 1], blocks = dims[0];
  if (c % kV) return ffi::Error::InvalidArgument("channels must be a multiple of 16");
  int64_t rows = 1;  // per block
  for (size_t i = 1; i + 1 < dims.size(); ++i) rows *= dims[i];
  const float* a = static_cast<const float*>(a_buf.untyped_data());
  const float* b = static_cast<const float*>(b_buf.untyped_data());
  const int64_t chunks = std::min(blocks, kChunks);
  std::vector<double> partial(chunks * 2 * c, 0.0);
  double* pp = partial.data();
  ParallelFor(pool, chunks, [&](int64_t k) {
    for (int64_t n = ChunkBegin(blocks, chunks, k); n < ChunkBegin(blocks, chunks, k + 1); ++n)
      ChannelSumsBlock(a + n * rows * c, b + n * rows * c, rows, c, pp + k * 2 * c);
  });
  float* o = out->typed_data();
  for (int64_t i = 0; i < 2 * c; ++i) {
    double t = 0.0;
    for (int64_t k = 0; k < chunks; ++k) t += pp[k * 2 * c + i];
    o[i] = static_cast<float>(t);
  }
  return ffi::Error::Success();
}

// The handlers XLA calls: an exception (an allocation failure) becomes an XLA error.
template <auto kImpl, typename... Args>
ffi::Error Guarded(Args... args) {
  try {
    return kImpl(args...);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("lt_jax native kernel: ") + e.what());
  }
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;
constexpr auto Forward = Guarded<ForwardImpl, ffi::ThreadPool, F32, F32, F32Out, int64_t>;
constexpr auto Dgrad = Guarded<DgradImpl, ffi::ThreadPool, F32, F32, F32Out, int64_t>;
constexpr auto Wgrad = Guarded<WgradImpl, ffi::ThreadPool, F32, F32, F32Out, int64_t>;
constexpr auto ChannelSums =
    Guarded<ChannelSumsImpl, ffi::ThreadPool, ffi::AnyBuffer, ffi::AnyBuffer, F32Out>;

}  // namespace

// The convolution handlers' signature: thread pool; two float32 arrays in, one out; stride.
inline auto ConvBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LtJaxConv3x3Fwd, Forward, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LtJaxConv3x3Dgrad, Dgrad, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LtJaxConv3x3Wgrad, Wgrad, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LtJaxChannelSums, ChannelSums,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
