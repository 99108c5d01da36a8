// RMSNorm over rows. CPU twin: backend::cpu::rms_norm_rows.
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
