// oneDNN's convolution passes on the ResNet-32 layer shapes (batch 128, float32): what a CPU
// convolution library reaches on this machine, next to XLA:CPU's Eigen convolutions.
//
//   bash benchmarks/onednn_conv.sh          (downloads oneDNN 3.2 wheels with pip, builds, runs)
//
// Per layer shape: median of 10 runs of forward, backward-data and backward-weights, and the
// sum over a whole train step (each shape times its count in ResNet-32; the stem has no
// backward-data). Without an argument the tensors are in the plain layouts XLA holds (NHWC
// activations, HWIO weights); with one ("any") oneDNN picks its own blocked layouts
// (e.g. nChw16c), and the reorders to and from NHWC are NOT included.
#include <oneapi/dnnl/dnnl.hpp>
#include <chrono>
#include <cstdio>
#include <vector>
#include <algorithm>
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;
static engine eng(engine::kind::cpu, 0);
static stream strm(eng);
template <class F> double timeit(F f, int reps = 10) {
  f(); strm.wait();
  std::vector<double> t;
  for (int i = 0; i < reps; i++) {
    auto a = std::chrono::steady_clock::now(); f(); strm.wait();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end()); return t[reps / 2];
}
int main(int argc, char** argv) {
  bool anyfmt = argc > 1;  // "any": oneDNN's own layouts
  struct S { int h, ci, co, s, n; } shapes[] = {{32,3,16,1,1},{32,16,16,1,10},{32,16,32,2,1},{16,32,32,1,9},{16,32,64,2,1},{8,64,64,1,9}};
  int N = 128; double total = 0;
  for (auto sh : shapes) {
    int ho = sh.h / sh.s;
    memory::dims src{N, sh.ci, sh.h, sh.h}, wei{sh.co, sh.ci, 3, 3}, dst{N, sh.co, ho, ho};
    memory::dims strides{sh.s, sh.s}, padl{1, 1}, padr{sh.s == 2 ? 0 : 1, sh.s == 2 ? 0 : 1};
    auto smd = memory::desc(src, dt::f32, anyfmt ? tag::any : tag::nhwc);
    auto wmd = memory::desc(wei, dt::f32, anyfmt ? tag::any : tag::hwio);
    auto dmd = memory::desc(dst, dt::f32, anyfmt ? tag::any : tag::nhwc);
    auto fpd = convolution_forward::primitive_desc(eng, prop_kind::forward_training, algorithm::convolution_direct, smd, wmd, dmd, strides, padl, padr);
    auto dpd = convolution_backward_data::primitive_desc(eng, algorithm::convolution_direct, smd, wmd, dmd, strides, padl, padr, fpd);
    auto wpd = convolution_backward_weights::primitive_desc(eng, algorithm::convolution_direct, smd, wmd, dmd, strides, padl, padr, fpd);
    memory s(fpd.src_desc(), eng), w(fpd.weights_desc(), eng), d(fpd.dst_desc(), eng);
    memory ds(dpd.diff_src_desc(), eng), dd(dpd.diff_dst_desc(), eng), dw(wpd.diff_weights_desc(), eng);
    memory s2(wpd.src_desc(), eng), dd2(wpd.diff_dst_desc(), eng);
    for (auto* m : {&s, &w, &d, &ds, &dd, &dw, &s2, &dd2}) { float* p = (float*)m->get_data_handle(); size_t n = m->get_desc().get_size() / 4; for (size_t i = 0; i < n; i++) p[i] = (i % 7) * 0.1f; }
    convolution_forward f(fpd); convolution_backward_data bd(dpd); convolution_backward_weights bw(wpd);
    double tf = timeit([&] { f.execute(strm, {{DNNL_ARG_SRC, s}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, d}}); });
    double tbd = timeit([&] { bd.execute(strm, {{DNNL_ARG_DIFF_DST, dd}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, ds}}); });
    double tbw = timeit([&] { bw.execute(strm, {{DNNL_ARG_SRC, s2}, {DNNL_ARG_DIFF_DST, dd2}, {DNNL_ARG_DIFF_WEIGHTS, dw}}); });
    double sum = (tf + (sh.ci == 3 ? 0 : tbd) + tbw) * sh.n; total += sum;
    printf("%2dx%-2d %2d->%-2d s%d x%-2d fwd %6.2f  bwd_data %6.2f  bwd_w %6.2f ms  [%s | %s]  subtotal %.1f\n", sh.h, sh.h, sh.ci, sh.co, sh.s, sh.n, tf, tbd, tbw, fpd.impl_info_str(), wpd.impl_info_str(), sum);
  }
  printf("total conv ms per step (batch %d): %.1f\n", N, total);
}
