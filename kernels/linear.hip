// Dense linears over weights as the checkpoint stores them (bf16 or f32), y = x W^T, for one
// matrix or a group of them (routed experts). CPU twin: backend::cpu::matmul; declared in
// src/ops/linear.rs. MXFP4 weights go through moe_mxfp4.hip with the same grouping.
//
//   w       [G, N, K]   G matrices of [N, K] (PyTorch Linear layout), back to back
//   x       [M, K] f32  rows of group g at offsets[g] .. offsets[g + 1]
//   offsets [G + 1]     int32, or null for one matrix over all M rows
//   y       [M, N] f32
// Grid: (ceil(N / rows per block), G); block: rows per block x 64 threads, one wave per
// output row; the row is read once per token of its group.
#include "compat.h"

template <typename T>
__device__ inline void kiln_linear(const T* __restrict__ w, const float* __restrict__ x,
                                   const int* __restrict__ offsets, float* __restrict__ y, int n, int k,
                                   int m_rows) {
    const int g = blockIdx.y;
    const int rows_per_block = blockDim.x / KILN_WAVE;
    const int row = blockIdx.x * rows_per_block + threadIdx.x / KILN_WAVE;
    const int lane = threadIdx.x % KILN_WAVE;
    // Waves past the last row still take part in the reductions.
    const bool live = row < n;
    const T* wr = w + ((size_t)g * n + (live ? row : 0)) * k;
    const int kk = live ? k : 0;
    const int m_end = kiln_group_end(offsets, g, m_rows);
    for (int m = kiln_group_begin(offsets, g); m < m_end; ++m) {
        const float* xm = x + (size_t)m * k;
        float acc = 0.0f;
        for (int c = lane; c < kk; c += KILN_WAVE) acc += kiln_load(wr + c) * xm[c];
        acc = kiln_wave_sum(acc);
        if (live && lane == 0) y[(size_t)m * n + row] = acc;
    }
}

KILN_EXPORT void kiln_linear_bf16(const uint16_t* w, const float* x, const int* offsets, float* y, int n, int k,
                                  int m_rows) {
    kiln_linear(w, x, offsets, y, n, k, m_rows);
}

KILN_EXPORT void kiln_linear_f32(const float* w, const float* x, const int* offsets, float* y, int n, int k,
                                 int m_rows) {
    kiln_linear(w, x, offsets, y, n, k, m_rows);
}
