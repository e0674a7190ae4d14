// The instruction mix of kiln's AVX2 Q4_1 panel kernel (`q4_1_panel_256` in
// crates/kiln-cpu/src/kernels/x86.rs: 16 rows by 4 tokens a block, 8 rows a 32-bit lane) on
// panels that stay in L1 (4 panels of 5.6 KB, each taken 24 times), against the same loop without one of its parts: the tokens' values
// loaded and broadcast (`no-broadcast`: registers instead), the weights' nibbles unpacked
// (`no-unpack`: the bytes as they are), the per-block float work (`no-float`: the 16-bit sums
// folded in by an xor), or all three (`core`: only vpmaddubsw and vpaddw, the products' own
// work). Every variant in turn, 100 runs each; the best of each, in 8-bit products a cycle at
// the clock given (default 2.9 GHz: `scripts/simd_rate.c` measures it). What the kernel loses
// to the work around its products when nothing waits on memory.
// gcc -O3 -funroll-loops -march=native -o /tmp/q4_1_mix scripts/q4_1_mix.c
// /tmp/q4_1_mix [GHZ]
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NB 18     // blocks of 32 values a row: 576 columns (the default model's width)
#define PANELS 96 // 1,536 rows a run...
#define HELD 4     // ...through 4 panels' weights, which stay in L1

static uint8_t W[HELD][NB][320] __attribute__((aligned(64)));
static int8_t A[4][NB * 32] __attribute__((aligned(64)));
static float D[4][NB];
static __m256 OUT[5][PANELS][2][4];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static inline __m256i unpack(const uint8_t *p, int high, int raw) {
    __m256i x = _mm256_loadu_si256((const __m256i *)p);
    if (raw) return x;
    if (high) x = _mm256_srli_epi16(x, 4);
    return _mm256_and_si256(x, _mm256_set1_epi8(15));
}

#define VARIANT(V, NO_BCAST, RAW, NO_FLOAT)                                                    \
    static __attribute__((noinline)) void run##V(void) {                                      \
        for (int p = 0; p < PANELS; p++) {                                                    \
            __m256 acc[2][2][4];                                                              \
            memset(acc, 0, sizeof acc);                                                       \
            for (int b = 0; b < NB; b++) {                                                    \
                const uint8_t *base = W[p % HELD][b];                                                \
                __m256 dw[2] = {_mm256_set1_ps(0.5f), _mm256_set1_ps(0.25f)};                 \
                __m256i s[2][4], fixed[4];                                                    \
                for (int t = 0; t < 4; t++) {                                                 \
                    int32_t v;                                                                \
                    memcpy(&v, &A[t][32 * b], 4);                                             \
                    fixed[t] = _mm256_set1_epi32(v);                                          \
                    s[0][t] = s[1][t] = _mm256_setzero_si256();                               \
                }                                                                             \
                for (int k = 0; k < 8; k++) {                                                 \
                    __m256i lo = unpack(base + 64 + 64 * (k % 4), k >= 4, RAW);               \
                    __m256i hi = unpack(base + 64 + 64 * (k % 4) + 32, k >= 4, RAW);          \
                    int at = k < 4 ? 4 * k : 16 + 4 * (k - 4);                                \
                    for (int t = 0; t < 4; t++) {                                             \
                        __m256i av;                                                           \
                        if (NO_BCAST) {                                                       \
                            av = fixed[t];                                                    \
                        } else {                                                              \
                            int32_t v;                                                        \
                            memcpy(&v, &A[t][32 * b + at], 4);                                \
                            av = _mm256_set1_epi32(v);                                        \
                        }                                                                     \
                        s[0][t] = _mm256_add_epi16(s[0][t], _mm256_maddubs_epi16(lo, av));    \
                        s[1][t] = _mm256_add_epi16(s[1][t], _mm256_maddubs_epi16(hi, av));    \
                    }                                                                         \
                }                                                                             \
                for (int h = 0; h < 2; h++)                                                   \
                    for (int t = 0; t < 4; t++) {                                             \
                        __m256 *e = &acc[h][b & 1][t];                                        \
                        if (NO_FLOAT) {                                                       \
                            *e = _mm256_castsi256_ps(                                         \
                                _mm256_xor_si256(_mm256_castps_si256(*e), s[h][t]));          \
                        } else {                                                              \
                            __m256i sum = _mm256_madd_epi16(s[h][t], _mm256_set1_epi16(1));   \
                            __m256 da = _mm256_set1_ps(D[t][b]);                              \
                            *e = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum),                     \
                                                 _mm256_mul_ps(dw[h], da), *e);               \
                        }                                                                     \
                    }                                                                         \
            }                                                                                 \
            for (int h = 0; h < 2; h++)                                                       \
                for (int t = 0; t < 4; t++)                                                   \
                    OUT[V][p][h][t] = _mm256_add_ps(acc[h][0][t], acc[h][1][t]);              \
        }                                                                                     \
    }

VARIANT(0, 0, 0, 0)
VARIANT(1, 1, 0, 0)
VARIANT(2, 0, 1, 0)
VARIANT(3, 0, 0, 1)
VARIANT(4, 1, 1, 1)

int main(int argc, char **argv) {
    double ghz = argc > 1 ? atof(argv[1]) : 2.9;
    srand(1);
    for (size_t i = 0; i < sizeof W; i++) ((uint8_t *)W)[i] = (uint8_t)rand();
    for (size_t i = 0; i < sizeof A; i++) ((int8_t *)A)[i] = (int8_t)(rand() % 255 - 127);
    for (int t = 0; t < 4; t++)
        for (int b = 0; b < NB; b++) D[t][b] = 0.01f * (1 + rand() % 7);
    void (*f[5])(void) = {run0, run1, run2, run3, run4};
    const char *name[5] = {"kernel", "no-broadcast", "no-unpack", "no-float", "core"};
    double best[5] = {1e9, 1e9, 1e9, 1e9, 1e9};
    for (int rep = 0; rep < 500; rep++) {
        int v = rep % 5;
        double t0 = now();
        f[v]();
        double t = now() - t0;
        if (t < best[v]) best[v] = t;
    }
    const double products = (double)PANELS * 16 * NB * 32 * 4;
    float check = 0;
    for (int p = 0; p < PANELS; p++) check += ((float *)&OUT[0][p][1][3])[2];
    printf("%d panels of 16 x %d values by 4 tokens (check %g)\n", PANELS, NB * 32, check);
    for (int v = 0; v < 5; v++)
        printf("%-13s %7.1f us  %5.1f products a cycle at %.2f GHz\n", name[v], best[v] * 1e6,
               products / best[v] / (ghz * 1e9), ghz);
    return 0;
}
