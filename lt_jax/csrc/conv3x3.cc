// 3x3 convolutions with padding 1 (stride 1 or 2) for XLA:CPU, as XLA FFI handlers.
//
// Layouts are the ones XLA holds for ResNet-32: activations NHWC, kernels HWIO, float32.
// Three handlers, one per pass of a training step:
//   lt_jax_conv3x3_fwd    y[n,o,p,m]  = sum_{a,b,k} x[n, s*o+a-1, s*p+b-1, k] * w[a,b,k,m]
//   lt_jax_conv3x3_dgrad  dx = the transpose of fwd applied to dy (same w)
//   lt_jax_conv3x3_wgrad  dw[a,b,k,m] = sum_{n,o,p} x[n, s*o+a-1, s*p+b-1, k] * dy[n,o,p,m]
// Every pass is a direct convolution: a tile of output pixels times 16 output channels
// is held in vector registers while the 3x3xK taps stream past, so nothing like an
// im2col matrix is written to memory. Rows of the batch are split into a fixed number
// of chunks that XLA's intra-op thread pool works off; the weight gradient adds the
// chunks' partial sums in chunk order, so results do not depend on the thread count.
//
// The vector type is a GCC/Clang vector extension of 16 floats; the compiler maps it
// to the host's widest SIMD (AVX-512, AVX2, NEON, ...). lt_jax/models/native.py
// compiles this file for the host on first use.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
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

// Three input rows s*o-1 .. s*o+1 of image n, zero-padded by one pixel left and right:
// scratch[a][1 + q][k] = x[n, s*o+a-1, q, k].
void InputRows(const float* x, const Shape& d, int64_t n, int64_t o, float* scratch) {
  const int64_t wp = d.w + 2;
  std::memset(scratch, 0, sizeof(float) * 3 * wp * d.k);
  for (int a = 0; a < 3; ++a) {
    const int64_t r = d.s * o + a - 1;
    if (r < 0 || r >= d.h) continue;
    std::memcpy(scratch + (a * wp + 1) * d.k, x + ((n * d.h + r) * d.w) * d.k,
                sizeof(float) * d.w * d.k);
  }
}

// Register tiles. The machine needs many independent accumulators to keep its FMA units
// busy (about 24 vectors of 16 floats on the AVX-512 development machine), so a tile
// holds kR output rows x kP pixels x kQ blocks of 16 output channels, 24 vectors.
//
// Correlation of padded input rows with 3x3 taps w (3, 3, k, m): output row r of the
// tile reads padded rows kS*r + a (a = 0..2) of `rows` (each wp pixels x k channels),
// output pixel p reads padded pixel kS*p + b. Each input value is broadcast once and
// multiplied with the taps b = 0..2 of every output pixel that reads it, so a load
// feeds up to 3 * kQ multiply-adds.
template <int kR, int kP, int kQ, int kS>
inline void Tile(const float* rows, int64_t wp, int64_t k, const float* w, int64_t m,
                 int64_t m0, int64_t p0, float* out, int64_t out_row) {
  constexpr int kIn = kS * (kP - 1) + 3;  // input pixels one tile row reads
  v16 acc[kR][kP][kQ];
  for (int r = 0; r < kR; ++r)
    for (int p = 0; p < kP; ++p)
      for (int q = 0; q < kQ; ++q) acc[r][p][q] = splat(0.f);
  for (int a = 0; a < 3; ++a) {
    const float* wt = w + a * 3 * k * m + m0;
    const float* xs = rows + (a * wp + kS * p0) * k;
    for (int64_t c = 0; c < k; ++c) {
      v16 wv[3][kQ];
      for (int b = 0; b < 3; ++b)
        for (int q = 0; q < kQ; ++q) wv[b][q] = load(wt + (b * k + c) * m + q * kV);
      for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 32
        for (int j = 0; j < kIn; ++j) {
          const v16 xv = splat(xs[(kS * r * wp + j) * k + c]);
#pragma GCC unroll 3
          for (int b = 0; b < 3; ++b) {
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
      for (int q = 0; q < kQ; ++q) store(out + r * out_row + (p0 + p) * m + m0 + q * kV, acc[r][p][q]);
}

// kR output rows (wo pixels, m channels each, out_row floats apart).
template <int kR, int kQ, int kS>
void CorrelateRowsQ(const float* rows, int64_t wp, int64_t k, const float* w, int64_t m,
                    int64_t wo, float* out, int64_t out_row) {
  constexpr int kP = 24 / (kR * kQ) > 0 ? 24 / (kR * kQ) : 1;
  for (int64_t m0 = 0; m0 < m; m0 += kQ * kV) {
    int64_t p = 0;
    for (; p + kP <= wo; p += kP) Tile<kR, kP, kQ, kS>(rows, wp, k, w, m, m0, p, out, out_row);
    for (; p < wo; ++p) Tile<kR, 1, kQ, kS>(rows, wp, k, w, m, m0, p, out, out_row);
  }
}

template <int kR, int kS>
void CorrelateRows(const float* rows, int64_t wp, int64_t k, const float* w, int64_t m,
                   int64_t wo, float* out, int64_t out_row) {
  if (m % (2 * kV) == 0 && wo <= 16) {
    CorrelateRowsQ<kR, 2, kS>(rows, wp, k, w, m, wo, out, out_row);
  } else {
    CorrelateRowsQ<kR, 1, kS>(rows, wp, k, w, m, wo, out, out_row);
  }
}

// Output rows [o0, o0 + nr) of image n (nr <= 3 at a time) from padded input rows.
constexpr int kRows = 3;

// Padded input rows s*o0-1 .. s*(o0+nr-1)+1 of image n: scratch[i][1 + q][k] = x[n, s*o0-1+i, q, k].
int64_t InputRowsN(const float* x, const Shape& d, int64_t n, int64_t o0, int64_t nr, float* scratch) {
  const int64_t wp = d.w + 2, count = d.s * (nr - 1) + 3;
  std::memset(scratch, 0, sizeof(float) * count * wp * d.k);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t r = d.s * o0 - 1 + i;
    if (r < 0 || r >= d.h) continue;
    std::memcpy(scratch + (i * wp + 1) * d.k, x + ((n * d.h + r) * d.w) * d.k,
                sizeof(float) * d.w * d.k);
  }
  return count;
}

template <int kS>
void ForwardImageRows(const float* x, const float* w, float* y, const Shape& d, int64_t n,
                      int64_t o0, int64_t o1, float* scratch) {
  const int64_t wp = d.w + 2, out_row = d.wo * d.m;
  for (int64_t o = o0; o < o1;) {
    const int64_t nr = std::min<int64_t>(kRows, o1 - o);
    InputRowsN(x, d, n, o, nr, scratch);
    float* out = y + (n * d.ho + o) * out_row;
    if (nr == 3) CorrelateRows<3, kS>(scratch, wp, d.k, w, d.m, d.wo, out, out_row);
    else if (nr == 2) CorrelateRows<2, kS>(scratch, wp, d.k, w, d.m, d.wo, out, out_row);
    else CorrelateRows<1, kS>(scratch, wp, d.k, w, d.m, d.wo, out, out_row);
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
void ForwardRows(const float* x, const float* w, float* y, const Shape& d, int64_t r0,
                 int64_t r1) {
  std::vector<float> scratch((d.s * (kRows - 1) + 3) * (d.w + 2) * d.k);
  ByImage(r0, r1, d.ho, [&](int64_t n, int64_t o0, int64_t o1) {
    if (d.s == 1) ForwardImageRows<1>(x, w, y, d, n, o0, o1, scratch.data());
    else ForwardImageRows<2>(x, w, y, d, n, o0, o1, scratch.data());
  });
}

// Input-gradient rows [r0, r1) of the flattened (n, h) input: dx[q] = sum_a dyd[q-1+a] wf[a],
// where dyd is dy dilated by the stride (dyd[s*o] = dy[o], zero elsewhere) and
// wf[a,b,m,k] = w[2-a,2-b,k,m] (flipped and transposed taps): a stride-1 correlation.
void DgradRows(const float* dy, const float* wf, float* dx, const Shape& d, int64_t r0,
               int64_t r1) {
  const int64_t wp = d.w + 2, out_row = d.w * d.k;
  std::vector<float> scratch((kRows + 2) * wp * d.m);
  ByImage(r0, r1, d.h, [&](int64_t n, int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1;) {
      const int64_t nr = std::min<int64_t>(kRows, q1 - q);
      std::memset(scratch.data(), 0, sizeof(float) * scratch.size());
      for (int64_t i = 0; i < nr + 2; ++i) {
        const int64_t t = q - 1 + i;  // dilated row
        if (t < 0 || t % d.s || t / d.s >= d.ho) continue;
        const float* src = dy + ((n * d.ho + t / d.s) * d.wo) * d.m;
        float* dst = scratch.data() + (i * wp + 1) * d.m;
        if (d.s == 1) {
          std::memcpy(dst, src, sizeof(float) * d.wo * d.m);
        } else {
          for (int64_t p = 0; p < d.wo && d.s * p < d.w; ++p)
            std::memcpy(dst + d.s * p * d.m, src + p * d.m, sizeof(float) * d.m);
        }
      }
      float* out = dx + (n * d.h + q) * out_row;
      if (nr == 3) CorrelateRows<3, 1>(scratch.data(), wp, d.m, wf, d.k, d.w, out, out_row);
      else if (nr == 2) CorrelateRows<2, 1>(scratch.data(), wp, d.m, wf, d.k, d.w, out, out_row);
      else CorrelateRows<1, 1>(scratch.data(), wp, d.m, wf, d.k, d.w, out, out_row);
      q += nr;
    }
  });
}

// Weight gradient of image n, added into dw. `image` is the zero-padded image
// ((h + 2) x (w + 2) x k). For each tap row a, the three taps b = 0..2 of kC input
// channels and kQ blocks of output channels are accumulated at once (3 * kC * kQ = 24
// vectors) over every output pixel of the image, then added to dw.
template <int kC, int kQ, int kS>
void WgradImage(const float* image, const float* g, const Shape& d, float* dw) {
  const int64_t wp = d.w + 2;
  for (int a = 0; a < 3; ++a) {
    for (int64_t m0 = 0; m0 < d.m; m0 += kQ * kV) {
      for (int64_t c0 = 0; c0 + kC <= d.k; c0 += kC) {
        v16 acc[3][kC][kQ];
        for (int b = 0; b < 3; ++b)
          for (int c = 0; c < kC; ++c)
            for (int q = 0; q < kQ; ++q) acc[b][c][q] = splat(0.f);
        for (int64_t o = 0; o < d.ho; ++o) {
          const float* xs = image + ((kS * o + a) * wp) * d.k + c0;
          const float* gs = g + o * d.wo * d.m + m0;
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
            for (int q = 0; q < kQ; ++q) {
              float* out = dw + ((a * 3 + b) * d.k + c0 + c) * d.m + m0 + q * kV;
              store(out, load(out) + acc[b][c][q]);
            }
      }
    }
  }
}

template <int kS>
void WgradImageAny(const float* image, const float* g, const Shape& d, float* dw) {
  if (d.m % (4 * kV) == 0 && d.k % 2 == 0) WgradImage<2, 4, kS>(image, g, d, dw);
  else if (d.m % (2 * kV) == 0 && d.k % 4 == 0) WgradImage<4, 2, kS>(image, g, d, dw);
  else if (d.k % 8 == 0) WgradImage<8, 1, kS>(image, g, d, dw);
  else WgradImage<1, 1, kS>(image, g, d, dw);
}

// Images [n0, n1): partial weight gradient added into dw.
void WgradImages(const float* x, const float* g, float* dw, const Shape& d, int64_t n0,
                 int64_t n1) {
  const int64_t wp = d.w + 2;
  // One spare padded row below: a stride-2 layer of odd height reads row h + 1.
  std::vector<float> image((d.h + 3) * wp * d.k, 0.f);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t r = 0; r < d.h; ++r)
      std::memcpy(image.data() + ((r + 1) * wp + 1) * d.k, x + ((n * d.h + r) * d.w) * d.k,
                  sizeof(float) * d.w * d.k);
    const float* gn = g + n * d.ho * d.wo * d.m;
    if (d.s == 1) WgradImageAny<1>(image.data(), gn, d, dw);
    else WgradImageAny<2>(image.data(), gn, d, dw);
  }
}

// ---------------------------------------------------------------------------------------------
// Checks and chunking.

constexpr int64_t kChunks = 32;  // fixed, so that partial sums are added in the same order

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

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
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

ffi::Error Dgrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                 ffi::ResultBuffer<ffi::F32> dx, int64_t stride) {
  const Shape d = Geometry(dx->dimensions(), dy.dimensions(), stride);
  if (ffi::Error e = Check(d); e.failure()) return e;
  if (d.k % kV) return ffi::Error::InvalidArgument("input channels must be a multiple of 16");
  std::vector<float> wf(9 * d.k * d.m);  // wf[a,b,m,k] = w[2-a,2-b,k,m]
  const float* wp = w.typed_data();
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b)
      for (int64_t kk = 0; kk < d.k; ++kk)
        for (int64_t mm = 0; mm < d.m; ++mm)
          wf[((a * 3 + b) * d.m + mm) * d.k + kk] = wp[(((2 - a) * 3 + 2 - b) * d.k + kk) * d.m + mm];
  const int64_t rows = d.n * d.h, chunks = std::min(rows, kChunks);
  const float* gp = dy.typed_data();
  float* xp = dx->typed_data();
  const float* wfp = wf.data();
  ParallelFor(pool, chunks, [&](int64_t c) {
    DgradRows(gp, wfp, xp, d, ChunkBegin(rows, chunks, c), ChunkBegin(rows, chunks, c + 1));
  });
  return ffi::Error::Success();
}

ffi::Error Wgrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                 ffi::ResultBuffer<ffi::F32> dw, int64_t stride) {
  const Shape d = Geometry(x.dimensions(), dy.dimensions(), stride);
  if (ffi::Error e = Check(d); e.failure()) return e;
  const int64_t size = 9 * d.k * d.m;
  const int64_t chunks = std::min(d.n, kChunks);
  std::vector<float> partial(chunks * size, 0.f);
  const float *xp = x.typed_data(), *gp = dy.typed_data();
  float* pp = partial.data();
  ParallelFor(pool, chunks, [&](int64_t c) {
    WgradImages(xp, gp, pp + c * size, d, ChunkBegin(d.n, chunks, c),
                ChunkBegin(d.n, chunks, c + 1));
  });
  float* out = dw->typed_data();
  std::memcpy(out, pp, sizeof(float) * size);
  for (int64_t c = 1; c < chunks; ++c)
    for (int64_t i = 0; i < size; ++i) out[i] += pp[c * size + i];
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------
// Per-channel sums for BatchNorm: out[0, c] = sum(a[..., c]), out[1, c] = sum(a[..., c] * b[..., c])
// over all but the last axis. Each block of rows (one image) is summed in float32 vectors,
// four interleaved accumulators per sum, and the block totals are added in double, block by
// block in a fixed order: more accurate than one float32 sum, and independent of threads.

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

ffi::Error ChannelSums(ffi::ThreadPool pool, ffi::AnyBuffer a_buf, ffi::AnyBuffer b_buf,
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

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LtJaxConv3x3Fwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LtJaxConv3x3Dgrad, Dgrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LtJaxConv3x3Wgrad, Wgrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LtJaxChannelSums, ChannelSums,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
