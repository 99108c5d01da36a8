// RMSNorm and LayerNorm over rows. CPU twins: backend::cpu::rms_norm_rows, layer_norm_rows.
#include "compat.h"

// x [rows, d] f32, w [d] f32 -> y [rows, d] f32: y = x * rsqrt(mean(x^2) + eps) * w.
// Grid: rows blocks; block: any multiple of the wave (256 typical).
KILN_EXPORT void kiln_rmsnorm_f32(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                                  int d, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (size_t)blockIdx.x * d;
    float* yr = y + (size_t)blockIdx.x * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
    ss = kiln_block_sum(ss, scratch);
    const float r = rsqrtf(ss / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = xr[i] * r * w[i];
}

// LayerNorm over rows. CPU twin: backend::cpu::layer_norm_rows.
// x [rows, d], w [d], b [d] -> y [rows, d]: (x - mean) / sqrt(var + eps) * w + b, biased
// variance. Grid: rows blocks; block: any multiple of the wave.
KILN_EXPORT void kiln_layernorm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                    const float* __restrict__ b, float* __restrict__ y, int d, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (size_t)blockIdx.x * d;
    float* yr = y + (size_t)blockIdx.x * d;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += xr[i];
    const float mean = kiln_block_sum(s, scratch) / (float)d;
    float v = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
    const float r = 1.0f / sqrtf(kiln_block_sum(v, scratch) / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = (xr[i] - mean) * r * w[i] + b[i];
}
