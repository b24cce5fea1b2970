// The CUDA kernels of fastconv's ``cupy`` backend (see _gpu_ops.py for how they are used).
//
// Compiled once per element type: the including code defines ``T`` (float or double) and
// ``FC_INFINITY`` first (_cuda_source.py). Every kernel is a grid-stride loop with one thread
// per output element that *gathers* what it needs, in a fixed order: no atomics, no shared
// memory, so results are the same on every run, and the same source also compiles as plain
// C++ for the host, where the test suite runs it against PyTorch on machines without a GPU.
//
// Arrays are contiguous, 5-D (N, C, D, H, W) as in the other backends. Sizes are 64-bit.

typedef long long i64;

#define GRID_LOOP(i, total)                                                 \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (total);   \
         i += (i64)blockDim.x * gridDim.x)

// A window's input position along one axis, or -1 outside the input (the zero padding).
__device__ __forceinline__ i64 input_pos(i64 o, i64 r, i64 s, i64 p, i64 d, i64 size)
{
    const i64 i = o * s - p + r * d;
    return (i >= 0 && i < size) ? i : -1;
}

// The output position along one axis whose window's tap r reads input position i, or -1.
__device__ __forceinline__ i64 output_pos(i64 i, i64 r, i64 s, i64 p, i64 d, i64 size)
{
    const i64 a = i + p - r * d;
    if (a < 0 || a % s != 0) return -1;
    const i64 o = a / s;
    return o < size ? o : -1;
}

// A window's shape and placement: kernel, stride, low-side padding, dilation.
#define WINDOW KD, KH, KW, SD, SH, SW, PD, PH, PW, DD, DH, DW
#define WINDOW_PARAMS                                                       \
    i64 KD, i64 KH, i64 KW, i64 SD, i64 SH, i64 SW, i64 PD, i64 PH, i64 PW, \
    i64 DD, i64 DH, i64 DW

// The forward gather: f(tap, at) for each tap of the window of output (od, oh, ow) that reads
// inside the (D, H, W) input, ``at`` its flat position there; taps in order.
template <typename F>
__device__ __forceinline__ void for_window(i64 od, i64 oh, i64 ow, i64 D, i64 H, i64 W,
                                           WINDOW_PARAMS, F f)
{
    for (i64 rd = 0; rd < KD; ++rd) {
        const i64 id = input_pos(od, rd, SD, PD, DD, D);
        if (id < 0) continue;
        for (i64 rh = 0; rh < KH; ++rh) {
            const i64 ih = input_pos(oh, rh, SH, PH, DH, H);
            if (ih < 0) continue;
            for (i64 rw = 0; rw < KW; ++rw) {
                const i64 iw = input_pos(ow, rw, SW, PW, DW, W);
                if (iw < 0) continue;
                f((rd * KH + rh) * KW + rw, (id * H + ih) * W + iw);
            }
        }
    }
}

// The adjoint gather: f(tap, o) for each (tap, output position o of the (OD, OH, OW) output)
// whose window reads input position (id, ih, iw); taps in order.
template <typename F>
__device__ __forceinline__ void for_covering(i64 id, i64 ih, i64 iw, i64 OD, i64 OH, i64 OW,
                                             WINDOW_PARAMS, F f)
{
    for (i64 rd = 0; rd < KD; ++rd) {
        const i64 od = output_pos(id, rd, SD, PD, DD, OD);
        if (od < 0) continue;
        for (i64 rh = 0; rh < KH; ++rh) {
            const i64 oh = output_pos(ih, rh, SH, PH, DH, OH);
            if (oh < 0) continue;
            for (i64 rw = 0; rw < KW; ++rw) {
                const i64 ow = output_pos(iw, rw, SW, PW, DW, OW);
                if (ow < 0) continue;
                f((rd * KH + rh) * KW + rw, (od * OH + oh) * OW + ow);
            }
        }
    }
}

// One convolution's geometry, in the order _gpu_ops.conv_geometry builds it. For the forward
// convolution: N images of C channels and size (D, H, W) in; K channels of size (OD, OH, OW)
// out; the window; G groups.
#define CONV_GEOMETRY                                                       \
    i64 N, i64 C, i64 D, i64 H, i64 W, i64 K, i64 OD, i64 OH, i64 OW,       \
    WINDOW_PARAMS, i64 G

// y[n, k, o] = sum_{c, r} x[n, g*Cg + c, o*s - p + r*d] * w[k, c, r]: the direct convolution,
// for depthwise and other convolutions with too little work per output for a GEMM.
extern "C" __global__ void conv_direct(const T* __restrict__ x, const T* __restrict__ w,
                                       T* __restrict__ y, CONV_GEOMETRY)
{
    const i64 cg = C / G, kg = K / G, taps = KD * KH * KW;
    GRID_LOOP(i, N * K * OD * OH * OW) {
        const i64 ow = i % OW, oh = (i / OW) % OH, od = (i / (OW * OH)) % OD;
        const i64 k = (i / (OW * OH * OD)) % K, n = i / (OW * OH * OD * K);
        const i64 c0 = (k / kg) * cg;
        T acc = 0;
        for (i64 c = 0; c < cg; ++c) {
            const T* xc = x + (n * C + c0 + c) * D * H * W;
            const T* wc = w + (k * cg + c) * taps;
            for_window(od, oh, ow, D, H, W, WINDOW,
                       [&](i64 r, i64 at) { acc += xc[at] * wc[r]; });
        }
        y[i] = acc;
    }
}

// cols[n - n0, c * taps + r, o] = x[n, c, o*s - p + r*d] (0 in the padding), for images
// n0 .. n0 + count: the packed operand of the GEMM paths.
extern "C" __global__ void im2col(const T* __restrict__ x, T* __restrict__ cols, i64 n0,
                                  i64 count, CONV_GEOMETRY)
{
    const i64 taps = KD * KH * KW, outs = OD * OH * OW;
    GRID_LOOP(i, count * C * taps * outs) {
        const i64 o = i % outs, r = (i / outs) % taps;
        const i64 c = (i / (outs * taps)) % C, n = n0 + i / (outs * taps * C);
        const i64 id = input_pos(o / (OH * OW), r / (KH * KW), SD, PD, DD, D);
        const i64 ih = input_pos((o / OW) % OH, (r / KW) % KH, SH, PH, DH, H);
        const i64 iw = input_pos(o % OW, r % KW, SW, PW, DW, W);
        cols[i] = (id < 0 || ih < 0 || iw < 0)
                      ? T(0) : x[(((n * C + c) * D + id) * H + ih) * W + iw];
    }
}

// The adjoint of im2col, gathered: y[n, c, i] = sum over the (tap r, output o) pairs that
// read input position i of cols[n - n0, c * taps + r, o]. With cols = W^T x this is the
// transposed convolution (and the convolution's input gradient).
extern "C" __global__ void col2im(const T* __restrict__ cols, T* __restrict__ y, i64 n0,
                                  i64 count, CONV_GEOMETRY)
{
    const i64 taps = KD * KH * KW, outs = OD * OH * OW, plane = D * H * W;
    GRID_LOOP(i, count * C * plane) {
        const i64 iw = i % W, ih = (i / W) % H, id = (i / (W * H)) % D;
        const T* col = cols + (i / plane) * taps * outs;  // (image, channel) of this chunk
        T acc = 0;
        for_covering(id, ih, iw, OD, OH, OW, WINDOW,
                     [&](i64 r, i64 o) { acc += col[r * outs + o]; });
        y[(n0 * C) * plane + i] = acc;
    }
}

// The transposed convolution, direct: y[n, g*Cog + co, i] = sum over input channels ci of the
// group and the (tap, position o) pairs reaching i of x[n, g*Cig + ci, o] * w[g*Cig + ci, co, r].
// Here (C, D, H, W) describe y and (K, OD, OH, OW) describe x (the forward convolution's
// output side); w is (K, C / G, KD, KH, KW).
extern "C" __global__ void conv_transpose_direct(const T* __restrict__ x,
                                                 const T* __restrict__ w,
                                                 T* __restrict__ y, CONV_GEOMETRY)
{
    const i64 cog = C / G, cig = K / G, taps = KD * KH * KW, outs = OD * OH * OW;
    const i64 plane = D * H * W;
    GRID_LOOP(i, N * C * plane) {
        const i64 iw = i % W, ih = (i / W) % H, id = (i / (W * H)) % D;
        const i64 c = (i / plane) % C, n = i / (plane * C);
        const i64 g = c / cog, co = c % cog;
        T acc = 0;
        for (i64 ci = 0; ci < cig; ++ci) {
            const i64 k = g * cig + ci;
            const T* xk = x + (n * K + k) * outs;
            const T* wk = w + (k * cog + co) * taps;
            for_covering(id, ih, iw, OD, OH, OW, WINDOW,
                         [&](i64 r, i64 o) { acc += xk[o] * wk[r]; });
        }
        y[i] = acc;
    }
}

// One image's share of the weight gradient, direct: partial[n, k, c, r] =
// sum_o gy[n, k, o] * x[n, g*Cg + c, o*s - p + r*d]. The caller sums over n.
extern "C" __global__ void conv_weight_grad_direct(const T* __restrict__ x,
                                                   const T* __restrict__ gy,
                                                   T* __restrict__ partial, CONV_GEOMETRY)
{
    const i64 cg = C / G, kg = K / G, taps = KD * KH * KW;
    GRID_LOOP(i, N * K * cg * taps) {
        const i64 r = i % taps, c = (i / taps) % cg, k = (i / (taps * cg)) % K;
        const i64 n = i / (taps * cg * K);
        const i64 rd = r / (KH * KW), rh = (r / KW) % KH, rw = r % KW;
        const T* xc = x + (n * C + (k / kg) * cg + c) * D * H * W;
        const T* g = gy + (n * K + k) * OD * OH * OW;
        T acc = 0;
        for (i64 od = 0; od < OD; ++od) {
            const i64 id = input_pos(od, rd, SD, PD, DD, D);
            if (id < 0) continue;
            for (i64 oh = 0; oh < OH; ++oh) {
                const i64 ih = input_pos(oh, rh, SH, PH, DH, H);
                if (ih < 0) continue;
                for (i64 ow = 0; ow < OW; ++ow) {
                    const i64 iw = input_pos(ow, rw, SW, PW, DW, W);
                    if (iw < 0) continue;
                    acc += g[(od * OH + oh) * OW + ow] * xc[(id * H + ih) * W + iw];
                }
            }
        }
        partial[i] = acc;
    }
}

// Pooling geometry: P planes (images x channels) of size (D, H, W) in, (OD, OH, OW) out; the
// window.
#define POOL_GEOMETRY i64 P, i64 D, i64 H, i64 W, i64 OD, i64 OH, i64 OW, WINDOW_PARAMS

// Each window's sum over the input it covers (the zero padding adds nothing), divided by
// divisor[o] (shape (OD, OH, OW), from fastconv's pooling rules).
extern "C" __global__ void avg_pool_forward(const T* __restrict__ x,
                                            const T* __restrict__ divisor,
                                            T* __restrict__ y, POOL_GEOMETRY)
{
    const i64 outs = OD * OH * OW;
    GRID_LOOP(i, P * outs) {
        const i64 o = i % outs;
        const T* xp = x + (i / outs) * D * H * W;
        T acc = 0;
        for_window(o / (OH * OW), (o / OW) % OH, o % OW, D, H, W, WINDOW,
                   [&](i64, i64 at) { acc += xp[at]; });
        y[i] = acc / divisor[o];
    }
}

// The adjoint, gathered: gx[i] = sum over the windows covering input position i of
// gy[o] / divisor[o].
extern "C" __global__ void avg_pool_backward(const T* __restrict__ gy,
                                             const T* __restrict__ divisor,
                                             T* __restrict__ gx, POOL_GEOMETRY)
{
    const i64 outs = OD * OH * OW, plane = D * H * W;
    GRID_LOOP(i, P * plane) {
        const i64 iw = i % W, ih = (i / W) % H, id = (i / (W * H)) % D;
        const T* g = gy + (i / plane) * outs;
        T acc = 0;
        for_covering(id, ih, iw, OD, OH, OW, WINDOW,
                     [&](i64, i64 o) { acc += g[o] / divisor[o]; });
        gx[i] = acc;
    }
}

// The first window position along an axis that is not in the low padding (PyTorch's index
// for a window of only -inf); it may lie past the input for a window of padding only.
__device__ __forceinline__ i64 first_in_bounds(i64 o, i64 s, i64 p, i64 d)
{
    const i64 start = o * s - p;
    return start >= 0 ? start : start + ((-start + d - 1) / d) * d;
}

// Max over each window and the flat index in its plane of the element taken, by PyTorch's
// rule: the first maximum wins, a NaN beats every number and the last NaN wins.
extern "C" __global__ void max_pool_forward(const T* __restrict__ x, T* __restrict__ y,
                                            i64* __restrict__ idx, POOL_GEOMETRY)
{
    const i64 outs = OD * OH * OW;
    GRID_LOOP(i, P * outs) {
        const i64 o = i % outs;
        const i64 od = o / (OH * OW), oh = (o / OW) % OH, ow = o % OW;
        const T* xp = x + (i / outs) * D * H * W;
        T best = -FC_INFINITY;
        i64 where = (first_in_bounds(od, SD, PD, DD) * H + first_in_bounds(oh, SH, PH, DH)) * W
                    + first_in_bounds(ow, SW, PW, DW);
        for_window(od, oh, ow, D, H, W, WINDOW, [&](i64, i64 at) {
            const T v = xp[at];
            if (v > best || v != v) {  // v != v: NaN
                best = v;
                where = at;
            }
        });
        y[i] = best;
        idx[i] = where;
    }
}

// The adjoint, gathered (as PyTorch's CUDA kernel): gx[i] = sum of gy[o] over the windows o
// that cover input position i and took it (idx[o] == i).
extern "C" __global__ void max_pool_backward(const T* __restrict__ gy,
                                             const i64* __restrict__ idx,
                                             T* __restrict__ gx, POOL_GEOMETRY)
{
    const i64 outs = OD * OH * OW, plane = D * H * W;
    GRID_LOOP(i, P * plane) {
        const i64 at = i % plane, iw = at % W, ih = (at / W) % H, id = at / (W * H);
        const T* g = gy + (i / plane) * outs;
        const i64* taken = idx + (i / plane) * outs;
        T acc = 0;
        for_covering(id, ih, iw, OD, OH, OW, WINDOW, [&](i64, i64 o) {
            if (taken[o] == at) acc += g[o];
        });
        gx[i] = acc;
    }
}
