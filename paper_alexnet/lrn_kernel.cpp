// Fused CPU kernel for the §3.3 local response normalisation (forward and backward).
//
//     b[i] = a[i] / (k + alpha * sum_{j in W(i)} a[j]^2) ^ beta,   W(i) = i - before .. i + after
//
// Eager PyTorch needs ~30 passes over the activation for forward + backward; this does each in one
// pass per (image, channel group), with the window's rows still in cache. Plain C++ with C entry points
// (called through ctypes, which releases the GIL); paper_alexnet/fused_lrn.py builds and loads it.
// Input layout: contiguous (N * groups) blocks of (channels_per_group, positions).
// Deterministic: every output element is written by one thread, in a fixed order of additions.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

struct Window {
    int64_t channels, positions, before, after;
    double alpha, beta, k;
};

// out[p] = sum_{j in window} a[j][p]^2 for channel i of a block (rows of `positions` values).
template <typename T>
void square_sum(const T* block, int64_t i, const Window& w, T* out) {
    const int64_t lo = std::max<int64_t>(0, i - w.before), hi = std::min<int64_t>(w.channels - 1, i + w.after);
    const int64_t n = w.positions;
    const T* row = block + lo * n;
    for (int64_t p = 0; p < n; ++p) out[p] = row[p] * row[p];
    for (int64_t j = lo + 1; j <= hi; ++j) {
        row = block + j * n;
        for (int64_t p = 0; p < n; ++p) out[p] += row[p] * row[p];
    }
}

// scale = k + alpha * sum;  inv = scale ^ -beta (for beta = 3/4 as 1 / sqrt(s * sqrt(s)), exact and fast).
template <typename T>
void inverse_power(T* sum_in_scale_out, T* inv, const Window& w) {
    const T alpha = T(w.alpha), k = T(w.k), beta = T(w.beta);
    const int64_t n = w.positions;
    if (w.beta == 0.75) {
        for (int64_t p = 0; p < n; ++p) {
            const T s = k + alpha * sum_in_scale_out[p];
            sum_in_scale_out[p] = s;
            inv[p] = T(1) / std::sqrt(s * std::sqrt(s));
        }
    } else {
        for (int64_t p = 0; p < n; ++p) {
            const T s = k + alpha * sum_in_scale_out[p];
            sum_in_scale_out[p] = s;
            inv[p] = std::pow(s, -beta);
        }
    }
}

template <typename T>
void forward_blocks(const T* a, T* b, int64_t first, int64_t last, Window w) {
    const int64_t n = w.positions, size = w.channels * n;
    std::vector<T> scale(n), inv(n);
    for (int64_t blk = first; blk < last; ++blk) {
        const T* x = a + blk * size;
        T* y = b + blk * size;
        for (int64_t i = 0; i < w.channels; ++i) {
            square_sum(x, i, w, scale.data());
            inverse_power(scale.data(), inv.data(), w);
            const T* xi = x + i * n;
            T* yi = y + i * n;
            for (int64_t p = 0; p < n; ++p) yi[p] = xi[p] * inv[p];
        }
    }
}

// grad_a[i] = g[i] * inv[i] - 2 alpha beta a[i] * sum_{j : i in W(j)} g[j] a[j] inv[j] / scale[j]
template <typename T>
void backward_blocks(const T* a, const T* g, T* ga, int64_t first, int64_t last, Window w) {
    const int64_t n = w.positions, size = w.channels * n;
    const T two_alpha_beta = T(2.0 * w.alpha * w.beta);
    std::vector<T> scale(n), inv(n), t(size);
    for (int64_t blk = first; blk < last; ++blk) {
        const T* x = a + blk * size;
        const T* gy = g + blk * size;
        T* gx = ga + blk * size;
        for (int64_t j = 0; j < w.channels; ++j) {
            square_sum(x, j, w, scale.data());
            inverse_power(scale.data(), inv.data(), w);
            const T *xj = x + j * n, *gj = gy + j * n;
            T *tj = t.data() + j * n, *gxj = gx + j * n;
            for (int64_t p = 0; p < n; ++p) {
                tj[p] = gj[p] * xj[p] * inv[p] / scale[p];
                gxj[p] = gj[p] * inv[p];
            }
        }
        for (int64_t i = 0; i < w.channels; ++i) {   // the transposed window: j = i - after .. i + before
            const int64_t lo = std::max<int64_t>(0, i - w.after), hi = std::min<int64_t>(w.channels - 1, i + w.before);
            T* cross = scale.data();
            const T* row = t.data() + lo * n;
            for (int64_t p = 0; p < n; ++p) cross[p] = row[p];
            for (int64_t j = lo + 1; j <= hi; ++j) {
                row = t.data() + j * n;
                for (int64_t p = 0; p < n; ++p) cross[p] += row[p];
            }
            const T* xi = x + i * n;
            T* gxi = gx + i * n;
            for (int64_t p = 0; p < n; ++p) gxi[p] -= two_alpha_beta * xi[p] * cross[p];
        }
    }
}

// Blocks shared out to `threads` threads in contiguous runs (the caller's thread takes the first).
template <typename F>
void parallel(int64_t blocks, int threads, F work) {
    threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, blocks)));
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t)
        pool.emplace_back(work, blocks * t / threads, blocks * (t + 1) / threads);
    work(int64_t(0), blocks / threads);
    for (auto& th : pool) th.join();
}

}  // namespace

#define PAPER_LRN_ENTRY(T, SUFFIX)                                                                        \
    extern "C" void lrn_forward_##SUFFIX(const T* a, T* b, int64_t blocks, int64_t channels,             \
                                         int64_t positions, int64_t before, int64_t after, double alpha, \
                                         double beta, double k, int threads) {                           \
        const Window w{channels, positions, before, after, alpha, beta, k};                             \
        parallel(blocks, threads, [&](int64_t s, int64_t e) { forward_blocks<T>(a, b, s, e, w); });     \
    }                                                                                                    \
    extern "C" void lrn_backward_##SUFFIX(const T* a, const T* g, T* ga, int64_t blocks, int64_t channels, \
                                          int64_t positions, int64_t before, int64_t after, double alpha, \
                                          double beta, double k, int threads) {                          \
        const Window w{channels, positions, before, after, alpha, beta, k};                             \
        parallel(blocks, threads, [&](int64_t s, int64_t e) { backward_blocks<T>(a, g, ga, s, e, w); }); \
    }

PAPER_LRN_ENTRY(float, f32)
PAPER_LRN_ENTRY(double, f64)
