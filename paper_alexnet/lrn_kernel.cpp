// Fused CPU kernels for the §3.3 local response normalisation, forward and backward:
//
//     b[i] = a[i] / (k + alpha * sum_{j in W(i)} a[j]^2) ^ beta,   W(i) = i - before .. i + after
//
// lrn_*: the LRN alone. stage_*: §3.5's order after conv1 and conv2, ReLU (§3.1) -> LRN -> max-pool
// (§3.4), from the conv output z to the pooled map; the backward needs only z and, per pooled output,
// where in its window the maximum was (one byte).
// Eager PyTorch needs ~30 passes over the activation for the LRN's forward + backward, and the ReLU and
// the pooling a few more; these do each direction in one pass per (image, channel group), with the
// window's rows still in cache. Plain C++ with C entry points (called through ctypes, which releases the
// GIL); paper_alexnet/fused_lrn.py builds and loads it.
// Input layout: contiguous (N * groups) blocks of (channels_per_group, positions).
// Deterministic: every output element is written by one thread, in a fixed order of additions.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <thread>
#include <vector>

namespace {

struct Window {
    int64_t channels, positions, before, after;
    double alpha, beta, k;
};

// The §3.1 ReLU, NaN kept as torch keeps it.
template <typename T>
inline T relu(T x) { return x < T(0) ? T(0) : x; }

// out = rows[0] + rows[1] + ... + rows[count - 1], added left to right, elementwise over n positions.
// Up to five rows (the paper's window) in one pass that keeps the sum in registers.
template <typename T>
void sum_rows(const T* const* rows, int64_t count, int64_t n, T* out) {
    const T *r0 = rows[0], *r1 = rows[count > 1], *r2 = rows[2 * (count > 2)], *r3 = rows[3 * (count > 3)],
            *r4 = rows[4 * (count > 4)];
    switch (std::min<int64_t>(count, 5)) {
        case 1: std::copy(r0, r0 + n, out); break;
        case 2: for (int64_t p = 0; p < n; ++p) out[p] = r0[p] + r1[p]; break;
        case 3: for (int64_t p = 0; p < n; ++p) out[p] = r0[p] + r1[p] + r2[p]; break;
        case 4: for (int64_t p = 0; p < n; ++p) out[p] = r0[p] + r1[p] + r2[p] + r3[p]; break;
        default: for (int64_t p = 0; p < n; ++p) out[p] = r0[p] + r1[p] + r2[p] + r3[p] + r4[p];
    }
    for (int64_t j = 5; j < count; ++j)
        for (int64_t p = 0; p < n; ++p) out[p] += rows[j][p];
}

// The squares a[j]^2 of one block's channels (a = z, or relu(z) with Relu), each computed once and kept
// while a window needs it (a ring of before + 1 + after rows); channels must be asked for in order.
template <bool Relu, typename T>
class Squares {
  public:
    explicit Squares(const Window& w)
        : w_(w), rows_(w.before + w.after + 1), ring_(rows_ * w.positions), window_(rows_) {}

    void start(const T* block) { block_ = block, next_ = 0; }

    // out[p] = sum_{j in W(i)} a[j][p]^2, the window clipped at the block's edges.
    void window_sum(int64_t i, T* out) {
        const int64_t lo = std::max<int64_t>(0, i - w_.before), hi = std::min<int64_t>(w_.channels - 1, i + w_.after);
        const int64_t n = w_.positions;
        for (; next_ <= hi; ++next_) {
            const T* z = block_ + next_ * n;
            T* sq = row(next_);
            for (int64_t p = 0; p < n; ++p) {
                const T v = Relu ? relu(z[p]) : z[p];
                sq[p] = v * v;
            }
        }
        for (int64_t j = lo; j <= hi; ++j) window_[j - lo] = row(j);
        sum_rows(window_.data(), hi - lo + 1, n, out);
    }

  private:
    T* row(int64_t j) { return ring_.data() + (j % rows_) * w_.positions; }
    Window w_;
    int64_t rows_, next_ = 0;
    std::vector<T> ring_;
    std::vector<const T*> window_;
    const T* block_ = nullptr;
};

// With s = k + alpha * sum: inv = s ^ -beta, and sum is replaced by inv / s (what the backward needs).
// For beta = 3/4 as sqrt(r * sqrt(r)) with r = 1 / s: exact to rounding, and far faster than pow.
template <typename T>
void inverse_power(T* sum_in_inv_over_scale_out, T* inv, const Window& w) {
    const T alpha = T(w.alpha), k = T(w.k), beta = T(w.beta);
    T* sum = sum_in_inv_over_scale_out;
    const int64_t n = w.positions;
    if (w.beta == 0.75) {
        for (int64_t p = 0; p < n; ++p) {
            const T r = T(1) / (k + alpha * sum[p]), v = std::sqrt(r * std::sqrt(r));
            inv[p] = v;
            sum[p] = v * r;
        }
    } else {
        for (int64_t p = 0; p < n; ++p) {
            const T s = k + alpha * sum[p], v = std::pow(s, -beta);
            inv[p] = v;
            sum[p] = v / s;
        }
    }
}

// Max-pooling of §3.4 (size x size windows, stride apart, no padding, PyTorch's floor rounding); size 0: none.
struct Pool {
    int64_t height, width, size, stride, out_height, out_width;
    int64_t outputs() const { return out_height * out_width; }
};

// The pooling of a height x width plane by size x size windows, stride apart (floor rounding, §3.4).
inline Pool make_pool(int64_t height, int64_t width, int64_t size, int64_t stride) {
    return Pool{height, width, size, stride, (height - size) / stride + 1, (width - size) / stride + 1};
}

// PyTorch's max-pooling rule for v against the best so far: larger wins, and a NaN wins.
template <typename T>
inline bool wins(T v, T top) { return (v > top) | (v != v); }

// a where the mask is all ones, else b, through the bits (the compiler makes a blend, never a masked store).
template <typename T>
inline T pick(int32_t mask, T a, T b) {
    using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    Bits x, y;
    std::memcpy(&x, &a, sizeof(T));
    std::memcpy(&y, &b, sizeof(T));
    const Bits m = Bits(int64_t(mask));
    x = (x & m) | (y & ~m);
    std::memcpy(&a, &x, sizeof(T));
    return a;
}

// Working memory of max_pool for one thread (int32 positions: as wide as float, so the selects vectorise).
template <typename T>
struct PoolScratch {
    std::vector<T> column, window;
    std::vector<int32_t> column_at, window_row, window_at;
    explicit PoolScratch(const Pool& p)
        : column(p.width), window(p.width), column_at(p.width), window_row(p.width), window_at(p.width) {}
};

// Max-pooling of a (height, width) plane into out (out_height, out_width), and in `at` the position of
// each output's maximum in its window (row * size + column). Per output row: the best of each column
// down the window's rows, then of each window along the row (at every column, then every stride-th
// taken). Contiguous runs of branch-free selects, which the compiler vectorises. What is picked is what
// PyTorch's row-major scan of a window picks: the first maximum, or the last NaN.
template <typename T>
void max_pool(const T* plane, const Pool& p, PoolScratch<T>& s, T* out, uint8_t* at) {
    const int64_t width = p.width, span = width - p.size + 1, size = p.size, stride = p.stride, wo = p.out_width;
    T *column = s.column.data(), *window = s.window.data();
    int32_t *column_at = s.column_at.data(), *window_row = s.window_row.data(), *window_at = s.window_at.data();
    for (int64_t oh = 0; oh < p.out_height; ++oh) {
        const T* top = plane + oh * stride * width;
        std::copy(top, top + width, column);
        std::fill(column_at, column_at + width, 0);
        for (int64_t k = 1; k < size; ++k) {        // down: a later row wins only if larger (or NaN)
            const T* row = top + k * width;
            for (int64_t x = 0; x < width; ++x) {
                const int32_t win = -int32_t(wins(row[x], column[x]));   // all ones or zero: selects, not branches
                column[x] = pick(win, row[x], column[x]);
                column_at[x] = (win & int32_t(k * size)) | (~win & column_at[x]);
            }
        }
        std::copy(column, column + span, window);
        std::copy(column_at, column_at + span, window_row);
        std::copy(column_at, column_at + span, window_at);
        for (int64_t k = 1; k < size; ++k)           // along: a later column wins if larger, or if as large
            for (int64_t x = 0; x < span; ++x) {      // from an earlier row (NaN: unless from an earlier row)
                const T v = column[x + k], best = window[x];
                const int32_t row = column_at[x + k], best_row = window_row[x];
                const int32_t win = -int32_t((v > best) | ((v == best) & (row < best_row)) |
                                             ((v != v) & ((best == best) | (row >= best_row))));
                window[x] = pick(win, v, best);
                window_row[x] = (win & row) | (~win & best_row);
                window_at[x] = (win & (row + int32_t(k))) | (~win & window_at[x]);
            }
        for (int64_t ow = 0; ow < wo; ++ow) {
            out[oh * wo + ow] = window[ow * stride];
            at[oh * wo + ow] = uint8_t(window_at[ow * stride]);
        }
    }
}

// Channel i of a block normalised: b = a * inv with a = z (or relu(z)); inv and inv / scale are kept.
template <bool Relu, typename T>
void normalise(Squares<Relu, T>& squares, const T* block, int64_t i, const Window& w, T* inv_over_scale, T* inv,
               T* b) {
    squares.window_sum(i, inv_over_scale);
    inverse_power(inv_over_scale, inv, w);
    const T* zi = block + i * w.positions;
    for (int64_t p = 0; p < w.positions; ++p) b[p] = (Relu ? relu(zi[p]) : zi[p]) * inv[p];
}

// Forward over blocks first..last: the LRN of z (Relu: of relu(z)), then (Pooled) its max-pool, with
// each output's position in its window in `at`.
template <bool Relu, bool Pooled, typename T>
void forward_blocks(const T* z, T* out, uint8_t* at, int64_t first, int64_t last, Window w, Pool pool) {
    const int64_t n = w.positions, size = w.channels * n, per = Pooled ? pool.outputs() : n;
    std::vector<T> scratch(n), inv(n), plane(Pooled ? n : 0);
    PoolScratch<T> pooling(Pooled ? pool : Pool{});
    Squares<Relu, T> squares(w);
    for (int64_t blk = first; blk < last; ++blk) {
        const T* x = z + blk * size;
        T* y = out + blk * w.channels * per;
        squares.start(x);
        for (int64_t i = 0; i < w.channels; ++i) {
            if (!Pooled) {
                normalise<Relu>(squares, x, i, w, scratch.data(), inv.data(), y + i * n);
                continue;
            }
            normalise<Relu>(squares, x, i, w, scratch.data(), inv.data(), plane.data());
            max_pool(plane.data(), pool, pooling, y + i * per, at + (blk * w.channels + i) * per);
        }
    }
}

// d loss / d z from d loss / d out, for the forward above. With gb = d loss / d b (Pooled: the pooled
// gradient sent back to each window's maximum, where `at` says), a = relu(z) or z:
//     grad_a[i] = gb[i] * inv[i] - 2 alpha beta a[i] * sum_{j : i in W(j)} gb[j] a[j] inv[j] / scale[j]
// and (Relu) grad_z = grad_a where z > 0, else 0.
template <bool Relu, bool Pooled, typename T>
void backward_blocks(const T* z, const uint8_t* at, const T* g, T* gz, int64_t first, int64_t last, Window w,
                     Pool pool) {
    const int64_t n = w.positions, size = w.channels * n, per = Pooled ? pool.outputs() : n;
    const T two_alpha_beta = T(2.0 * w.alpha * w.beta);
    std::vector<T> inv_over_scale(n), inv(n), t(size);
    std::vector<int64_t> offset(Pooled ? pool.size * pool.size : 0);     // window position -> plane offset
    for (int64_t o = 0; o < int64_t(offset.size()); ++o) offset[o] = (o / pool.size) * pool.width + o % pool.size;
    Squares<Relu, T> squares(w);
    std::vector<const T*> rows(w.before + w.after + 1);                 // the transposed window's rows of t
    for (int64_t blk = first; blk < last; ++blk) {
        const T* x = z + blk * size;
        const T* gy = g + blk * w.channels * per;
        T* gx = gz + blk * size;
        squares.start(x);
        for (int64_t j = 0; j < w.channels; ++j) {
            const T* xj = x + j * n;
            T *tj = t.data() + j * n, *gxj = gx + j * n;
            const T* gbj = gy + j * n;
            if (Pooled) {          // gb[j], scattered into gx's row j (overlapping windows add up)
                std::fill(gxj, gxj + n, T(0));
                const T* gj = gy + j * per;
                const uint8_t* aj = at + (blk * w.channels + j) * per;
                for (int64_t oh = 0; oh < pool.out_height; ++oh)
                    for (int64_t ow = 0; ow < pool.out_width; ++ow) {
                        const int64_t o = oh * pool.out_width + ow;
                        gxj[oh * pool.stride * pool.width + ow * pool.stride + offset[aj[o]]] += gj[o];
                    }
                gbj = gxj;
            }
            squares.window_sum(j, inv_over_scale.data());
            inverse_power(inv_over_scale.data(), inv.data(), w);
            for (int64_t p = 0; p < n; ++p) {
                const T a = Relu ? relu(xj[p]) : xj[p], gb = gbj[p];
                tj[p] = gb * a * inv_over_scale[p];
                gxj[p] = gb * inv[p];
            }
        }
        for (int64_t i = 0; i < w.channels; ++i) {   // the transposed window: j = i - after .. i + before
            const int64_t lo = std::max<int64_t>(0, i - w.after), hi = std::min<int64_t>(w.channels - 1, i + w.before);
            T* cross = inv.data();
            for (int64_t j = lo; j <= hi; ++j) rows[j - lo] = t.data() + j * n;
            sum_rows(rows.data(), hi - lo + 1, n, cross);
            const T* xi = x + i * n;
            T* gxi = gx + i * n;
            for (int64_t p = 0; p < n; ++p) {
                const T a = Relu ? relu(xi[p]) : xi[p], grad = gxi[p] - two_alpha_beta * a * cross[p];
                gxi[p] = (Relu && xi[p] <= T(0)) ? T(0) : grad;   // torch's ReLU backward: 0 where relu(z) <= 0
            }
        }
    }
}

// --- The same stage on a channels-last map -------------------------------------------------------------
// z is (N, H, W, C) in memory with C = groups * w.channels; out and at are (N, Ho, Wo, C). A position's
// channels are contiguous, so the window sum of a whole row of positions is one pass of shifted adds over
// a padded copy: each (position, group) block holds `lead` zeros, the group's channels, `trail` zeros, and
// the sum at a block's channel c adds the block's entries c .. c + lead + trail (the window, clipped at the
// group's edges by the zeros). The pooling takes each window's positions in row-major order, every
// channel at once.
struct Rows {
    int64_t positions, groups, channels, lead, trail;  // channels: per group
    int64_t block() const { return channels + lead + trail; }
    int64_t padded() const { return positions * groups * block(); }
    int64_t summed() const { return padded() - lead - trail; }  // where a window starts in the padded row
};

// Into padded (zeros already in the gaps): value(x) of each channel of a row of positions, x from src.
template <typename T, typename F>
void pad_row(const T* src, const Rows& r, T* padded, F value) {
    for (int64_t q = 0; q < r.positions * r.groups; ++q) {
        const T* s = src + q * r.channels;
        T* d = padded + q * r.block() + r.lead;
        for (int64_t c = 0; c < r.channels; ++c) d[c] = value(s[c]);
    }
}

// out[i] = padded[i] + padded[i + 1] + ... + padded[i + lead + trail], for every start i of the row.
template <typename T>
void window_row(const T* padded, const Rows& r, std::vector<const T*>& shifted, T* out) {
    for (int64_t d = 0; d <= r.lead + r.trail; ++d) shifted[d] = padded + d;
    sum_rows(shifted.data(), r.lead + r.trail + 1, r.summed(), out);
}

// The LRN of relu(z) for one row of positions: b (C per position); inv and inv / scale in padded layout.
template <typename T>
void normalise_row(const T* z, const Rows& r, const Window& w, T* squares, std::vector<const T*>& shifted,
                   T* inv_over_scale, T* inv, T* b) {
    pad_row(z, r, squares, [](T v) { const T a = relu(v); return a * a; });
    window_row(squares, r, shifted, inv_over_scale);
    Window all = w;
    all.positions = r.summed();
    inverse_power(inv_over_scale, inv, all);
    for (int64_t q = 0; q < r.positions * r.groups; ++q) {
        const T *zq = z + q * r.channels, *iq = inv + q * r.block();
        T* bq = b + q * r.channels;
        for (int64_t c = 0; c < r.channels; ++c) bq[c] = relu(zq[c]) * iq[c];
    }
}

template <typename T>
void forward_nhwc(const T* z, T* out, uint8_t* at, int64_t first, int64_t last, Window w, int64_t groups,
                  Pool p) {
    const Rows r{p.width, groups, w.channels, w.before, w.after};
    const int64_t C = groups * w.channels, row = p.width * C;
    std::vector<T> squares(r.padded(), T(0)), scale(r.padded()), inv(r.padded()), ring(p.size * row);
    std::vector<const T*> shifted(r.lead + r.trail + 1);
    std::vector<int32_t> where(C);
    std::vector<T> best(C);
    for (int64_t n = first; n < last; ++n) {
        const T* zn = z + n * p.height * row;
        int64_t next = 0;  // the next input row to normalise into the ring
        for (int64_t oh = 0; oh < p.out_height; ++oh) {
            for (; next < oh * p.stride + p.size; ++next)
                normalise_row(zn + next * row, r, w, squares.data(), shifted, scale.data(), inv.data(),
                              ring.data() + (next % p.size) * row);
            for (int64_t ow = 0; ow < p.out_width; ++ow) {
                const T* top = ring.data() + ((oh * p.stride) % p.size) * row + ow * p.stride * C;
                std::copy(top, top + C, best.data());
                std::fill(where.begin(), where.end(), 0);
                for (int64_t kh = 0; kh < p.size; ++kh)
                    for (int64_t kw = kh == 0; kw < p.size; ++kw) {  // row-major; (0, 0) is the start
                        const T* v = ring.data() + ((oh * p.stride + kh) % p.size) * row +
                                     (ow * p.stride + kw) * C;
                        const int32_t k = int32_t(kh * p.size + kw);
                        for (int64_t c = 0; c < C; ++c) {
                            const int32_t win = -int32_t(wins(v[c], best[c]));
                            best[c] = pick(win, v[c], best[c]);
                            where[c] = (win & k) | (~win & where[c]);
                        }
                    }
                const int64_t o = ((n * p.out_height + oh) * p.out_width + ow) * C;
                std::copy(best.begin(), best.end(), out + o);
                for (int64_t c = 0; c < C; ++c) at[o + c] = uint8_t(where[c]);
            }
        }
    }
}

// The backward of forward_nhwc: the pooled gradient sent back to each window's maximum, then per position
// the LRN's gradient (as backward_blocks) and the ReLU's mask.
template <typename T>
void backward_nhwc(const T* z, const uint8_t* at, const T* g, T* gz, int64_t first, int64_t last, Window w,
                   int64_t groups, Pool p) {
    const Rows r{p.width, groups, w.channels, w.before, w.after};
    const Rows tr{p.width, groups, w.channels, w.after, w.before};  // the transposed window
    const int64_t C = groups * w.channels, row = p.width * C;
    const T two_alpha_beta = T(2.0 * w.alpha * w.beta);
    std::vector<T> squares(r.padded(), T(0)), scale(r.padded()), inv(r.padded()), t(tr.padded(), T(0)),
        cross(tr.padded());
    std::vector<const T*> shifted(r.lead + r.trail + 1);
    for (int64_t n = first; n < last; ++n) {
        const T* zn = z + n * p.height * row;
        T* gn = gz + n * p.height * row;
        std::fill(gn, gn + p.height * row, T(0));
        for (int64_t oh = 0; oh < p.out_height; ++oh)
            for (int64_t ow = 0; ow < p.out_width; ++ow) {
                const int64_t o = ((n * p.out_height + oh) * p.out_width + ow) * C;
                for (int64_t c = 0; c < C; ++c) {
                    const int64_t kh = at[o + c] / p.size, kw = at[o + c] % p.size;
                    gn[((oh * p.stride + kh) * p.width + ow * p.stride + kw) * C + c] += g[o + c];
                }
            }
        for (int64_t h = 0; h < p.height; ++h) {
            const T* zh = zn + h * row;
            T* gh = gn + h * row;  // holds d loss / d b on entry, d loss / d z on exit
            pad_row(zh, r, squares.data(), [](T v) { const T a = relu(v); return a * a; });
            window_row(squares.data(), r, shifted, scale.data());
            Window all = w;
            all.positions = r.summed();
            inverse_power(scale.data(), inv.data(), all);  // scale now holds inv / scale
            for (int64_t q = 0; q < r.positions * r.groups; ++q) {
                const T *zq = zh + q * r.channels, *gq = gh + q * r.channels, *sq = scale.data() + q * r.block();
                T* tq = t.data() + q * tr.block() + tr.lead;
                for (int64_t c = 0; c < r.channels; ++c) tq[c] = gq[c] * relu(zq[c]) * sq[c];
            }
            window_row(t.data(), tr, shifted, cross.data());
            for (int64_t q = 0; q < r.positions * r.groups; ++q) {
                const T *zq = zh + q * r.channels, *iq = inv.data() + q * r.block(), *xq = cross.data() + q * tr.block();
                T* gq = gh + q * r.channels;
                for (int64_t c = 0; c < r.channels; ++c) {
                    const T grad = gq[c] * iq[c] - two_alpha_beta * relu(zq[c]) * xq[c];
                    gq[c] = zq[c] <= T(0) ? T(0) : grad;  // torch's ReLU backward: 0 where relu(z) <= 0
                }
            }
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
        parallel(blocks, threads, [&](int64_t s, int64_t e) {                                            \
            forward_blocks<false, false, T>(a, b, nullptr, s, e, w, Pool{});                             \
        });                                                                                              \
    }                                                                                                    \
    extern "C" void lrn_backward_##SUFFIX(const T* a, const T* g, T* ga, int64_t blocks, int64_t channels, \
                                          int64_t positions, int64_t before, int64_t after, double alpha, \
                                          double beta, double k, int threads) {                          \
        const Window w{channels, positions, before, after, alpha, beta, k};                             \
        parallel(blocks, threads, [&](int64_t s, int64_t e) {                                            \
            backward_blocks<false, false, T>(a, nullptr, g, ga, s, e, w, Pool{});                        \
        });                                                                                              \
    }                                                                                                    \
    extern "C" void stage_forward_##SUFFIX(const T* z, T* out, uint8_t* at, int64_t blocks, int64_t channels, \
                                           int64_t height, int64_t width, int64_t before, int64_t after, \
                                           double alpha, double beta, double k, int64_t pool_size,       \
                                           int64_t pool_stride, int threads) {                           \
        const Window w{channels, height * width, before, after, alpha, beta, k};                        \
        const Pool p = make_pool(height, width, pool_size, pool_stride);                                  \
        parallel(blocks, threads, [&](int64_t s, int64_t e) {                                            \
            forward_blocks<true, true, T>(z, out, at, s, e, w, p);                                       \
        });                                                                                              \
    }                                                                                                    \
    extern "C" void stage_backward_##SUFFIX(const T* z, const uint8_t* at, const T* g, T* gz, int64_t blocks, \
                                            int64_t channels, int64_t height, int64_t width, int64_t before, \
                                            int64_t after, double alpha, double beta, double k,          \
                                            int64_t pool_size, int64_t pool_stride, int threads) {       \
        const Window w{channels, height * width, before, after, alpha, beta, k};                        \
        const Pool p = make_pool(height, width, pool_size, pool_stride);                                  \
        parallel(blocks, threads, [&](int64_t s, int64_t e) {                                            \
            backward_blocks<true, true, T>(z, at, g, gz, s, e, w, p);                                    \
        });                                                                                              \
    }

#define PAPER_NHWC_ENTRY(T, SUFFIX)                                                                       \
    extern "C" void stage_forward_nhwc_##SUFFIX(const T* z, T* out, uint8_t* at, int64_t images, int64_t groups, \
                                                int64_t channels, int64_t height, int64_t width, int64_t before, \
                                                int64_t after, double alpha, double beta, double k,           \
                                                int64_t pool_size, int64_t pool_stride, int threads) {        \
        const Window w{channels, height * width, before, after, alpha, beta, k};                             \
        const Pool p = make_pool(height, width, pool_size, pool_stride);                                       \
        parallel(images, threads, [&](int64_t s, int64_t e) { forward_nhwc<T>(z, out, at, s, e, w, groups, p); }); \
    }                                                                                                         \
    extern "C" void stage_backward_nhwc_##SUFFIX(const T* z, const uint8_t* at, const T* g, T* gz, int64_t images, \
                                                 int64_t groups, int64_t channels, int64_t height, int64_t width, \
                                                 int64_t before, int64_t after, double alpha, double beta,     \
                                                 double k, int64_t pool_size, int64_t pool_stride, int threads) { \
        const Window w{channels, height * width, before, after, alpha, beta, k};                             \
        const Pool p = make_pool(height, width, pool_size, pool_stride);                                       \
        parallel(images, threads, [&](int64_t s, int64_t e) { backward_nhwc<T>(z, at, g, gz, s, e, w, groups, p); }); \
    }

PAPER_NHWC_ENTRY(float, f32)
PAPER_NHWC_ENTRY(double, f64)
PAPER_LRN_ENTRY(float, f32)
PAPER_LRN_ENTRY(double, f64)
