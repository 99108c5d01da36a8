// Elementwise ops and data movement on f32 rows. CPU twins: backend::cpu's Backend ops
// (add, scale, silu_mul, split, concat, gather); declared in src/ops/elementwise.rs.
#include "compat.h"

// acc [n] += x [n]. One thread per element.
KILN_EXPORT void kiln_add_f32(float* __restrict__ acc, const float* __restrict__ x, int n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] += x[i];
}

// x [n] *= s. One thread per element.
KILN_EXPORT void kiln_scale_f32(float* __restrict__ x, float s, int n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

// y [n] = silu(g) * u = g / (1 + exp(-g)) * u. One thread per element.
KILN_EXPORT void kiln_silu_mul_f32(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ y,
                                   int n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

// x [n] = v. One thread per element.
KILN_EXPORT void kiln_fill_i32(int* __restrict__ x, int v, int n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = v;
}

// y [rows, y_width] columns [y_offset, y_offset + cols) = x [rows, x_width] columns
// [x_offset, x_offset + cols) (split and concat of rows). One thread per (row, column).
KILN_EXPORT void kiln_copy_cols_f32(const float* __restrict__ x, float* __restrict__ y, int rows, int x_width,
                                    int x_offset, int y_width, int y_offset, int cols) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * cols) return;
    const long long r = i / cols, c = i % cols;
    y[r * y_width + y_offset + c] = x[r * x_width + x_offset + c];
}

// y [n, width] = x [rows[i], :] for each i. One thread per (i, column).
KILN_EXPORT void kiln_gather_rows_f32(const float* __restrict__ x, const int* __restrict__ rows,
                                      float* __restrict__ y, int n, int width) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * width) return;
    const long long r = i / width, c = i % width;
    y[i] = x[(long long)rows[r] * width + c];
}
