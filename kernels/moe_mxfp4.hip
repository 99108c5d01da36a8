// Routed experts in AMD Quark MXFP4 times f32 activations, grouped by expert.
// CPU twin: backend::cpu::matmul over weights::Linear (MXFP4 storage), per expert; declared in
// src/ops/moe_mxfp4.rs.
//
// Layout (all experts of a layer contiguous, as the weight packer writes them):
//   codes  [E, N, K/2] u8   two E2M1 codes per byte, low nibble = even element
//   scales [E, N, K/32] u8  E8M0, one per 32 inputs of a row
//   x      [M, K] f32       activations sorted by expert
//   offsets[E + 1] int32    expert e owns rows offsets[e] .. offsets[e+1] of x and y; null
//                           for one matrix (E = 1) over all M rows (a dense MXFP4 linear)
//   y      [M, N] f32
#include "compat.h"

// One 32-element group of a weight row dotted with 32 activations.
__device__ inline float kiln_mxfp4_group_dot(const uint8_t* __restrict__ codes, uint8_t scale,
                                             const float* __restrict__ xg) {
    float acc = 0.0f;
#if defined(__gfx950__)
    // gfx950 decodes packed E2M1 with the scale in hardware: 2 values per instruction.
    const float s = kiln_e8m0(scale);
    const uint32_t* w = reinterpret_cast<const uint32_t*>(codes);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const auto v = __builtin_amdgcn_cvt_scalef32_pk_f32_fp4(w[q], s, b);
            acc += v[0] * xg[8 * q + 2 * b] + v[1] * xg[8 * q + 2 * b + 1];
        }
    }
#else
    // Software dequant (gfx90a, gfx940/942, CUDA): 16-entry LUT, scale applied once.
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const uint32_t b = codes[j];
        acc += kiln_e2m1(b & 0xF) * xg[2 * j] + kiln_e2m1(b >> 4) * xg[2 * j + 1];
    }
    acc *= kiln_e8m0(scale);
#endif
    return acc;
}

// E2M1 value of |x| by the grid's nearest point, ties to the even code, saturating at 6.
__device__ inline float kiln_round_e2m1(float x) {
    const float grid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    const float a = fabsf(x);
    int best = 0;
    for (int i = 1; i < 8; ++i) {
        const float d_best = fabsf(a - grid[best]), d = fabsf(a - grid[i]);
        if (d < d_best || (d == d_best && i % 2 == 0)) best = i;
    }
    const float v = a >= 6.0f ? 6.0f : grid[best];
    return x < 0.0f ? -v : v;
}

// W4A4: activations rounded to the MXFP4 grid before an MXFP4 GEMM, per row and group of 32:
// scale 2^(floor(log2(amax rounded on its top two mantissa bits)) - 2), then each value to
// the nearest E2M1 times the scale. CPU twin: backend::cpu::quantize_mxfp4_activations.
// x [rows, k] f32 -> y [rows, k] f32 (may alias x). One thread per group; k % 32 == 0.
KILN_EXPORT void kiln_mxfp4_quantize_act(const float* x, float* y, int rows, int k) {
    const long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int groups = k / 32;
    if (g >= (long long)rows * groups) return;
    const float* xg = x + g * 32;
    float* yg = y + g * 32;
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(xg[i]));
    const uint32_t rounded = (__float_as_uint(amax) + 0x200000u) & 0x7F800000u;
    int e = rounded == 0 ? -127 : (int)(rounded >> 23) - 127 - 2;
    e = e < -127 ? -127 : (e > 127 ? 127 : e);
    const float scale = e >= -126 ? __uint_as_float((uint32_t)(e + 127) << 23) : __uint_as_float(1u << 22);
    for (int i = 0; i < 32; ++i) yg[i] = kiln_round_e2m1(xg[i] / scale) * scale;
}

// Decode buckets (a few tokens per expert): one wave per output row, lanes split K by groups;
// the row is read from memory once and reused from cache for each token.
// Grid: (ceil(N / rows_per_block), E); block: rows_per_block * KILN_WAVE threads.
KILN_EXPORT void kiln_moe_mxfp4_decode(const uint8_t* __restrict__ codes, const uint8_t* __restrict__ scales,
                                       const float* __restrict__ x, const int* __restrict__ offsets,
                                       float* __restrict__ y, int n, int k, int m_rows) {
    const int e = blockIdx.y;
    const int rows_per_block = blockDim.x / KILN_WAVE;
    const int row = blockIdx.x * rows_per_block + threadIdx.x / KILN_WAVE;
    const int lane = threadIdx.x % KILN_WAVE;
    // Waves past the last row still take part in the reductions (every thread of a block
    // reaches each shuffle), they just add nothing and store nothing.
    const bool live = row < n;
    const int groups = live ? k / 32 : 0;
    const uint8_t* wc = codes + ((size_t)e * n + (live ? row : 0)) * (k / 2);
    const uint8_t* ws = scales + ((size_t)e * n + (live ? row : 0)) * (k / 32);
    const int m_end = kiln_group_end(offsets, e, m_rows);
    for (int m = kiln_group_begin(offsets, e); m < m_end; ++m) {
        const float* xm = x + (size_t)m * k;
        float acc = 0.0f;
        for (int g = lane; g < groups; g += KILN_WAVE) acc += kiln_mxfp4_group_dot(wc + 16 * g, ws[g], xm + 32 * g);
        acc = kiln_wave_sum(acc);
        if (live && lane == 0) y[(size_t)m * n + row] = acc;
    }
}

#define KILN_TILE_N 64
#define KILN_TILE_M 32
#define KILN_TILE_K 64

// Prefill buckets: a 64-row x 32-token output tile per block, K in steps of 64 through
// shared memory (weights dequantized once per tile; a K tail of 32 is zero-padded). Block: 256 threads, 4 rows x 2 tokens
// each. Grid: (ceil(N / 64), ceil(max tokens of an expert / 32), E).
KILN_EXPORT void kiln_moe_mxfp4_prefill(const uint8_t* __restrict__ codes, const uint8_t* __restrict__ scales,
                                        const float* __restrict__ x, const int* __restrict__ offsets,
                                        float* __restrict__ y, int n, int k, int m_rows) {
    __shared__ float wt[KILN_TILE_N][KILN_TILE_K + 1];
    __shared__ float xt[KILN_TILE_M][KILN_TILE_K + 1];
    const int e = blockIdx.z;
    const int m0 = kiln_group_begin(offsets, e) + blockIdx.y * KILN_TILE_M;
    const int m_end = kiln_group_end(offsets, e, m_rows);
    if (m0 >= m_end) return;
    const int n0 = blockIdx.x * KILN_TILE_N;
    const int tr = (threadIdx.x / 16) * 4;  // 4 rows
    const int tm = (threadIdx.x % 16) * 2;  // 2 tokens
    float acc[4][2] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};
    const size_t row_bytes = k / 2, row_groups = k / 32;
    for (int k0 = 0; k0 < k; k0 += KILN_TILE_K) {
        // Dequantize 64 rows x 64 inputs: each thread decodes 8 bytes (16 values).
        for (int i = threadIdx.x; i < KILN_TILE_N * (KILN_TILE_K / 16); i += blockDim.x) {
            const int r = i / (KILN_TILE_K / 16), c16 = (i % (KILN_TILE_K / 16)) * 16;
            const int gr = n0 + r;
            if (gr < n && k0 + c16 < k) {
                const uint8_t* wc = codes + ((size_t)e * n + gr) * row_bytes + (k0 + c16) / 2;
                const float s = kiln_e8m0(scales[((size_t)e * n + gr) * row_groups + (k0 + c16) / 32]);
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    wt[r][c16 + 2 * j] = kiln_e2m1(wc[j] & 0xF) * s;
                    wt[r][c16 + 2 * j + 1] = kiln_e2m1(wc[j] >> 4) * s;
                }
            } else {
                for (int j = 0; j < 16; ++j) wt[r][c16 + j] = 0.0f;
            }
        }
        for (int i = threadIdx.x; i < KILN_TILE_M * KILN_TILE_K; i += blockDim.x) {
            const int r = i / KILN_TILE_K, c = i % KILN_TILE_K;
            xt[r][c] = (m0 + r < m_end && k0 + c < k) ? x[(size_t)(m0 + r) * k + k0 + c] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int c = 0; c < KILN_TILE_K; ++c) {
            const float x0 = xt[tm][c], x1 = xt[tm + 1][c];
#pragma unroll
            for (int a = 0; a < 4; ++a) {
                acc[a][0] += wt[tr + a][c] * x0;
                acc[a][1] += wt[tr + a][c] * x1;
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b) {
            const int gr = n0 + tr + a, gm = m0 + tm + b;
            if (gr < n && gm < m_end) y[(size_t)gm * n + gr] = acc[a][b];
        }
}
