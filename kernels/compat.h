// kiln kernels: the one place that knows HIP from CUDA.
//
// Every kernel source includes only this header. It provides the runtime header, the
// wave/warp width as a compile-time constant (warpSize is not constexpr since ROCm 7), cross-lane
// shuffles with the right mask width, and decoders for the stored formats (bf16, fp8 e4m3,
// E2M1 + E8M0) on raw bytes, so no vendor-specific bf16/fp8 type appears in a kernel. Three
// platforms: AMD HIP (hipcc / clang), the emulated HIP device (HIP-CPU, g++), CUDA (nvcc).
// Host code lives in Rust (src/device), which launches every kernel by its extern "C" name.
#pragma once

#include <stdint.h>

#if defined(__HIP_CPU_RT__)
// The emulated device: AMD's HIP-CPU runtime runs each GPU thread as a fiber on the CPU, so
// kernels execute (slowly) on any machine; what they need beyond what it provides is here.
// Its shuffles and barriers are block-wide, so every thread of a block must reach each one.
#define KILN_HIP_CPU 1
#include <hip/hip_runtime.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#define KILN_WAVE 64
inline float __uint_as_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline uint32_t __float_as_uint(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// glibc declares an internal __expf that no library exports; the device intrinsic is expf.
#define __expf(x) expf(x)
using std::max;
using std::min;
inline float kiln_shfl_xor(float v, int lane_mask) { return __shfl_xor(v, lane_mask, KILN_WAVE); }
inline int kiln_shfl_xor_int(int v, int lane_mask) { return __shfl_xor(v, lane_mask, KILN_WAVE); }
#elif defined(__HIP_PLATFORM_AMD__) || defined(__HIP__)
#define KILN_HIP 1
#include <hip/hip_runtime.h>
// CDNA (gfx90a, gfx940/942, gfx950) runs wave64.
#define KILN_WAVE 64
__device__ inline float kiln_shfl_xor(float v, int lane_mask) { return __shfl_xor(v, lane_mask, KILN_WAVE); }
__device__ inline int kiln_shfl_xor_int(int v, int lane_mask) { return __shfl_xor(v, lane_mask, KILN_WAVE); }
#elif defined(__CUDACC__)
#define KILN_CUDA 1
#include <cuda_runtime.h>
#define KILN_WAVE 32
__device__ inline float kiln_shfl_xor(float v, int lane_mask) { return __shfl_xor_sync(0xffffffffu, v, lane_mask, KILN_WAVE); }
__device__ inline int kiln_shfl_xor_int(int v, int lane_mask) { return __shfl_xor_sync(0xffffffffu, v, lane_mask, KILN_WAVE); }
#else
#error "kiln kernels build with hipcc/clang (HIP), nvcc (CUDA), or g++ after HIP-CPU's hip_runtime.h (emulated)"
#endif

#define KILN_EXPORT extern "C" __global__

// ---- reductions --------------------------------------------------------------------------

struct KilnSum {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct KilnMax {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename Op>
__device__ inline float kiln_wave_reduce(float v, Op op) {
#pragma unroll
    for (int m = KILN_WAVE / 2; m > 0; m >>= 1) v = op(v, kiln_shfl_xor(v, m));
    return v;
}

// Block-wide reduction; `scratch` holds one float per wave, `identity` pads the lanes of
// wave 0 past the wave count. Every thread gets the result.
template <typename Op>
__device__ inline float kiln_block_reduce(float v, float* scratch, float identity, Op op) {
    const int lane = threadIdx.x % KILN_WAVE, wave = threadIdx.x / KILN_WAVE;
    const int waves = (blockDim.x + KILN_WAVE - 1) / KILN_WAVE;
    v = kiln_wave_reduce(v, op);
    __syncthreads();
    if (lane == 0) scratch[wave] = v;
    __syncthreads();
    // Every wave reduces (only wave 0's result is used): shuffles stay block-uniform, which
    // the emulated device needs and a GPU does not mind.
    float t = (threadIdx.x < waves) ? scratch[threadIdx.x] : identity;
    t = kiln_wave_reduce(t, op);
    if (threadIdx.x == 0) scratch[0] = t;
    __syncthreads();
    return scratch[0];
}

__device__ inline float kiln_wave_sum(float v) { return kiln_wave_reduce(v, KilnSum{}); }
__device__ inline float kiln_wave_max(float v) { return kiln_wave_reduce(v, KilnMax{}); }
__device__ inline float kiln_block_sum(float v, float* scratch) { return kiln_block_reduce(v, scratch, 0.0f, KilnSum{}); }
__device__ inline float kiln_block_max(float v, float* scratch) {
    return kiln_block_reduce(v, scratch, -INFINITY, KilnMax{});
}

// ---- ranking ------------------------------------------------------------------------------

// The one ranking rule of every top-k (indexer, router, sampling), shared with the CPU
// (backend::cpu::topk::rank_order): larger values first, -0 equal to +0, NaN after every
// number, and among equals the lower index first.
__device__ inline bool kiln_ranks_before(float a, int ia, float b, int ib) {
    const bool an = a != a, bn = b != b;
    if (an != bn) return bn;
    if (!an && a != b) return a > b;
    return ia < ib;
}

// A row group's rows: offsets [G + 1] when grouped, else the single group 0 .. m.
__device__ inline int kiln_group_begin(const int* offsets, int g) { return offsets ? offsets[g] : 0; }
__device__ inline int kiln_group_end(const int* offsets, int g, int m) { return offsets ? offsets[g + 1] : m; }

// ---- stored formats ----------------------------------------------------------------------

__device__ inline float kiln_bf16(uint16_t bits) { return __uint_as_float(((uint32_t)bits) << 16); }

__device__ inline uint16_t kiln_to_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);                     // round to nearest even
    return (uint16_t)(u >> 16);
}

// A stored weight element as f32 (bf16 kept as its raw 16 bits).
__device__ inline float kiln_load(const float* p) { return *p; }
__device__ inline float kiln_load(const uint16_t* p) { return kiln_bf16(*p); }

// OCP fp8 e4m3 (fn): bias 7, no infinities, S.1111.111 is NaN.
__device__ inline float kiln_e4m3(uint8_t b) {
    const uint32_t exp = (b >> 3) & 0xF, man = b & 7;
    float mag;
    if ((b & 0x7F) == 0x7F) mag = __uint_as_float(0x7fc00000u);
    else if (exp == 0) mag = (float)man * (1.0f / 512.0f);
    else mag = __uint_as_float(((exp + 120u) << 23) | (man << 20));
    return (b & 0x80) ? -mag : mag;
}

// Nearest e4m3 code of x (ties to even), saturating at +-448; NaN to the NaN code. The same
// steps as the CPU's kv::fp8::to_e4m3, so caches written on either side hold the same bytes.
__device__ inline uint8_t kiln_to_e4m3(float x) {
    if (x != x) return 0x7F;
    const uint8_t sign = (__float_as_uint(x) >> 31) ? 0x80 : 0;
    const float a = fminf(fabsf(x), 448.0f);
    uint32_t code;
    if (a < 0.015625f) {
        // Subnormals step by 2^-9: 0..8 (8 is the smallest normal).
        code = (uint32_t)rintf(a * 512.0f);
    } else {
        const int e = (int)((__float_as_uint(a) >> 23) & 0xFF) - 127;  // floor(log2 a)
        const float step = __uint_as_float((uint32_t)(e - 3 + 127) << 23);
        const uint32_t m = (uint32_t)rintf(a / step);  // 8..16
        const uint32_t field = (uint32_t)(e + 7);
        code = m >= 16 ? (field + 1) << 3 : (field << 3) | (m - 8);
    }
    return sign | (uint8_t)(code < 0x7Eu ? code : 0x7Eu);
}

// E2M1 (fp4) code in the low 4 bits.
__device__ inline float kiln_e2m1(uint32_t code) {
    const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    const float v = mag[code & 7];
    return (code & 8) ? -v : v;
}

// E8M0 scale: 2^(b - 127); 0xFF is NaN.
__device__ inline float kiln_e8m0(uint8_t b) {
    if (b == 0xFF) return __uint_as_float(0x7fc00000u);
    if (b == 0) return __uint_as_float(1u << 22);
    return __uint_as_float(((uint32_t)b) << 23);
}

// Element (row, c) of an MXFP4 matrix of `cols` inputs: codes [rows, cols/2] (low nibble =
// even element), scales [rows, cols/32].
__device__ inline float kiln_mxfp4_at(const uint8_t* codes, const uint8_t* scales, long long row, int c, int cols) {
    const uint8_t b = codes[row * (cols / 2) + c / 2];
    return kiln_e2m1((c & 1) ? (b >> 4) : (b & 0xF)) * kiln_e8m0(scales[row * (cols / 32) + c / 32]);
}
