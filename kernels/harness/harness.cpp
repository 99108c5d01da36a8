// Runs every kiln kernel on the test vectors `kiln kernels cases DIR` wrote (inputs and the
// CPU twins' outputs), compares under each case's tolerance, and reports time and bandwidth
// against this device's measured copy bandwidth.
//
// Build: AMD   hipcc --offload-arch=<gfx> -O2 -x hip kernels/harness/harness.cpp -o harness
//        NVIDIA nvcc -O2 -arch=<sm_XX> -x cu kernels/harness/harness.cpp -o harness
// Run:   ./harness CASES_DIR [PEAK_GB_S]     (exit 1 if any case fails)
#include "../compat.h"
#include "../norm.hip"
#include "../rope.hip"
#include "../router.hip"
#include "../moe_mxfp4.hip"
#include "../mla_decode.hip"
#include "../indexer.hip"
#include "../sample.hip"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#define CHECK(x)                                                                              \
    do {                                                                                      \
        kilnError_t e_ = (x);                                                                 \
        if (e_ != kilnSuccess) {                                                              \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, kilnGetErrorString(e_)); \
            std::exit(2);                                                                     \
        }                                                                                     \
    } while (0)

struct Case {
    std::string dir;
    std::map<std::string, std::string> meta;
    long i(const std::string& k) const { return std::stol(meta.at(k)); }
    double f(const std::string& k) const { return std::stod(meta.at(k)); }
    std::vector<char> bin(const std::string& name) const {
        std::ifstream in(dir + "/" + name + ".bin", std::ios::binary);
        return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    }
};

static Case load(const std::string& dir) {
    Case c{dir, {}};
    std::ifstream in(dir + "/meta.txt");
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ss(line);
        std::string k, v;
        ss >> k >> v;
        c.meta[k] = v;
    }
    return c;
}

// Device copy of a host buffer.
template <typename T = char>
static T* up(const std::vector<char>& h) {
    void* d = nullptr;
    CHECK(kilnMalloc(&d, std::max<size_t>(h.size(), 4)));
    CHECK(kilnMemcpy(d, h.data(), h.size(), kilnMemcpyHostToDevice));
    return static_cast<T*>(d);
}

template <typename T>
static T* alloc(size_t n) {
    void* d = nullptr;
    CHECK(kilnMalloc(&d, std::max<size_t>(n * sizeof(T), 4)));
    return static_cast<T*>(d);
}

template <typename T>
static std::vector<T> down(const T* d, size_t n) {
    std::vector<T> h(n);
    CHECK(kilnMemcpy(h.data(), d, n * sizeof(T), kilnMemcpyDeviceToHost));
    return h;
}

template <typename T>
static std::vector<T> as(const std::vector<char>& b) {
    std::vector<T> v(b.size() / sizeof(T));
    std::memcpy(v.data(), b.data(), v.size() * sizeof(T));
    return v;
}

// Average microseconds of `launch` over 20 runs after one warm-up.
template <typename F>
static double time_us(F launch) {
    launch();
    CHECK(kilnGetLastError());
    CHECK(kilnDeviceSynchronize());
    kilnEvent_t a, b;
    CHECK(kilnEventCreate(&a));
    CHECK(kilnEventCreate(&b));
    CHECK(kilnEventRecord(a, 0));
    for (int i = 0; i < 20; ++i) launch();
    CHECK(kilnEventRecord(b, 0));
    CHECK(kilnEventSynchronize(b));
    float ms = 0;
    CHECK(kilnEventElapsedTime(&ms, a, b));
    return 1000.0 * ms / 20.0;
}

// max |got - want| / max(1, max |want|)
static double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
    double d = 0, s = 1;
    for (size_t i = 0; i < want.size(); ++i) {
        d = std::max(d, (double)std::fabs(got[i] - want[i]));
        s = std::max(s, (double)std::fabs(want[i]));
    }
    return d / s;
}

// Fraction of rows whose index sets differ (rows of width k).
static double set_err(std::vector<int> got, std::vector<int> want, size_t k) {
    size_t bad = 0;
    for (size_t r = 0; r * k < want.size(); ++r) {
        std::sort(got.begin() + r * k, got.begin() + (r + 1) * k);
        std::sort(want.begin() + r * k, want.begin() + (r + 1) * k);
        bad += !std::equal(got.begin() + r * k, got.begin() + (r + 1) * k, want.begin() + r * k);
    }
    return (double)bad / (double)(want.size() / k);
}

struct Result {
    double err, us;
};

static Result run(const Case& c) {
    const std::string k = c.meta.at("kernel");
    const dim3 b256(256);
    if (k == "kiln_rmsnorm_f32") {
        const long rows = c.i("rows"), d = c.i("d");
        float *x = up<float>(c.bin("x")), *w = up<float>(c.bin("w")), *y = alloc<float>(rows * d);
        double us = time_us([&] { kiln_rmsnorm_f32<<<rows, b256>>>(x, w, y, (int)d, 1e-5f); });
        return {rel_err(down(y, rows * d), as<float>(c.bin("expected"))), us};
    }
    if (k == "kiln_rope_interleaved_f32") {
        const long rows = c.i("rows"), heads = c.i("heads"), stride = c.i("stride"), off = c.i("offset"), rot = c.i("rot");
        const std::vector<char> x0 = c.bin("x");
        float* x = up<float>(x0);
        int* pos = up<int>(c.bin("positions"));
        float* inv = up<float>(c.bin("inv_freq"));
        const long n = rows * heads * (rot / 2);
        auto launch = [&] { kiln_rope_interleaved_f32<<<(n + 255) / 256, b256>>>(x, pos, inv, (int)rows, (int)heads, (int)stride, (int)off, (int)rot); };
        double us = time_us(launch);
        CHECK(kilnMemcpy(x, x0.data(), x0.size(), kilnMemcpyHostToDevice));  // timing rotated it 21 times
        launch();
        return {rel_err(down(x, rows * heads * stride), as<float>(c.bin("expected"))), us};
    }
    if (k == "kiln_router_sigmoid_topk") {
        const long t = c.i("t"), d = c.i("d"), e = c.i("e"), kk = c.i("k");
        float *x = up<float>(c.bin("x")), *w = up<float>(c.bin("w")), *bias = up<float>(c.bin("bias"));
        int* idx = alloc<int>(t * kk);
        float* wts = alloc<float>(t * kk);
        double us = time_us([&] {
            kiln_router_sigmoid_topk<<<t, b256>>>(x, w, bias, idx, wts, (int)d, (int)e, (int)kk, (int)c.i("groups"),
                                                  (int)c.i("keep_groups"), 1, (float)c.f("scaling"));
        });
        const bool same = down(idx, t * kk) == as<int>(c.bin("expected_idx"));
        return {same ? rel_err(down(wts, t * kk), as<float>(c.bin("expected"))) : 1.0, us};
    }
    if (k == "kiln_moe_mxfp4_decode" || k == "kiln_moe_mxfp4_prefill") {
        const long e = c.i("experts"), n = c.i("n"), kk = c.i("k"), m = c.i("m");
        uint8_t *codes = up<uint8_t>(c.bin("codes")), *scales = up<uint8_t>(c.bin("scales"));
        float* x = up<float>(c.bin("x"));
        const std::vector<int> off = as<int>(c.bin("offsets"));
        int* offsets = up<int>(c.bin("offsets"));
        float* y = alloc<float>(m * n);
        long max_m = 0;
        for (long i = 0; i < e; ++i) max_m = std::max<long>(max_m, off[i + 1] - off[i]);
        double us;
        if (k == "kiln_moe_mxfp4_decode") {
            const int rows_per_block = 4;
            us = time_us([&] {
                kiln_moe_mxfp4_decode<<<dim3((n + rows_per_block - 1) / rows_per_block, e), rows_per_block * KILN_WAVE>>>(codes, scales, x, offsets, y, (int)n, (int)kk);
            });
        } else {
            us = time_us([&] {
                kiln_moe_mxfp4_prefill<<<dim3((n + 63) / 64, (max_m + 31) / 32, e), b256>>>(codes, scales, x, offsets, y, (int)n, (int)kk);
            });
        }
        return {rel_err(down(y, m * n), as<float>(c.bin("expected"))), us};
    }
    if (k == "kiln_mla_decode_bf16" || k == "kiln_mla_decode_fp8") {
        const long t = c.i("t"), h = c.i("heads"), r = c.i("r");
        float *qa = up<float>(c.bin("q_abs")), *qr = up<float>(c.bin("q_rope"));
        uint8_t* kv = up<uint8_t>(c.bin("kv"));
        int *pages = up<int>(c.bin("pages")), *lens = up<int>(c.bin("lens")), *sel = up<int>(c.bin("sel"));
        float* out = alloc<float>(t * h * r);
        const bool fp8 = k == "kiln_mla_decode_fp8";
        double us = time_us([&] {
            auto f = fp8 ? kiln_mla_decode_fp8 : kiln_mla_decode_bf16;
            f<<<dim3(t, h), b256>>>(qa, qr, kv, pages, lens, sel, out, (int)h, (int)r, (int)c.i("dr"), (int)c.i("entry"),
                                   (int)c.i("page"), (int)c.i("max_pages"), (int)c.i("topk"), (float)c.f("scale"));
        });
        return {rel_err(down(out, t * h * r), as<float>(c.bin("expected"))), us};
    }
    if (k == "kiln_indexer_scores_bf16" || k == "kiln_indexer_scores_fp8") {
        const long t = c.i("t"), stride = c.i("stride");
        float *q = up<float>(c.bin("q")), *w = up<float>(c.bin("w"));
        uint8_t* keys = up<uint8_t>(c.bin("keys"));
        int *pages = up<int>(c.bin("pages")), *lens = up<int>(c.bin("lens"));
        float* scores = alloc<float>(t * stride);
        const bool fp8 = k == "kiln_indexer_scores_fp8";
        double us = time_us([&] {
            auto f = fp8 ? kiln_indexer_scores_fp8 : kiln_indexer_scores_bf16;
            f<<<dim3(t, (stride + 255) / 256), b256>>>(q, w, keys, pages, lens, scores, (int)c.i("hi"), (int)c.i("di"),
                                                      (int)c.i("entry"), (int)c.i("page"), (int)c.i("max_pages"), (int)stride,
                                                      (float)c.f("dot_scale"));
        });
        return {rel_err(down(scores, t * stride), as<float>(c.bin("expected"))), us};
    }
    if (k == "kiln_topk_f32") {
        const long t = c.i("t"), stride = c.i("stride"), kk = c.i("k");
        float* scores = up<float>(c.bin("scores"));
        int* lens = up<int>(c.bin("lens"));
        int* idx = alloc<int>(t * kk);
        double us = time_us([&] { kiln_topk_f32<<<t, b256>>>(scores, lens, idx, (int)stride, (int)kk); });
        return {set_err(down(idx, t * kk), as<int>(c.bin("expected_idx")), kk), us};
    }
    if (k == "kiln_sample_greedy") {
        const long t = c.i("t"), v = c.i("v");
        float* logits = up<float>(c.bin("logits"));
        int* out = alloc<int>(t);
        double us = time_us([&] { kiln_sample_greedy<<<t, b256>>>(logits, out, (int)v); });
        return {down(out, t) == as<int>(c.bin("expected_idx")) ? 0.0 : 1.0, us};
    }
    std::fprintf(stderr, "unknown kernel %s\n", k.c_str());
    std::exit(2);
}

// Device-to-device copy bandwidth (read + write), the practical ceiling for these kernels.
static double copy_gb_s() {
    const size_t n = 256u << 20;
    char *a = alloc<char>(n), *b = alloc<char>(n);
    double us = time_us([&] { CHECK(kilnMemcpy(b, a, n, kilnMemcpyDeviceToDevice)); });
    return 2.0 * n / (us * 1e3);
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s CASES_DIR [PEAK_GB_S]\n", argv[0]);
        return 2;
    }
    int devices = 0;
    if (kilnGetDeviceCount(&devices) != kilnSuccess || devices == 0) {
        std::printf("SKIPPED: no GPU\n");
        return 0;
    }
    kilnDeviceProp prop;
    CHECK(kilnGetDeviceProperties(&prop, 0));
    const double peak = argc > 2 ? std::atof(argv[2]) : 0.0;
    const double copy = copy_gb_s();
    std::printf("device: %s; device-to-device copy %.0f GB/s%s\n", prop.name, copy,
                peak > 0 ? (" (" + std::to_string((int)(100 * copy / peak)) + "% of the " + std::to_string((int)peak) + " GB/s peak)").c_str() : "");
    std::printf("| case | max error | tolerance | ok | us | GB/s | of copy | of peak |\n|---|---|---|---|---|---|---|---|\n");
    const char* names[] = {"rmsnorm", "rope", "router", "moe_decode", "moe_prefill", "mla_decode_bf16", "mla_decode_fp8",
                           "indexer_bf16", "indexer_fp8", "topk", "sample_greedy"};
    int failed = 0;
    for (const char* name : names) {
        const Case c = load(std::string(argv[1]) + "/" + name);
        const Result r = run(c);
        const double tol = c.f("tolerance");
        const bool ok = r.err <= tol;
        failed += !ok;
        const double gbs = c.f("bytes") / (r.us * 1e3);
        std::printf("| %s | %.2e | %.0e | %s | %.1f | %.0f | %.0f%% | %s |\n", name, r.err, tol, ok ? "yes" : "NO", r.us, gbs,
                    100 * gbs / copy, peak > 0 ? (std::to_string((int)(100 * gbs / peak)) + "%").c_str() : "-");
    }
    return failed ? 1 : 0;
}
