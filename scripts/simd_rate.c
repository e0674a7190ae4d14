// What one core of this machine does now, in two numbers taken back to back: its clock, from a
// chain of dependent integer additions (one a cycle), and its rate of the integer
// multiply-adds the 8-bit products are made of (`vpmaddubsw` with a 16-bit add, four
// independent chains: the pair the AVX2 kernels issue for every 32 products of a token). On a
// core shared with another machine's thread (SMT), the second moves while the first does not:
// the vector units are shared, the clock is not. Three rounds; each figure the best of 5 runs of
// 20 to 35 ms.
// gcc -O2 -march=native -o /tmp/simd_rate scripts/simd_rate.c
// /tmp/simd_rate
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// Cycles a second: 4 dependent additions an iteration.
static double clock_ghz(void) {
    const long n = 25000000;
    unsigned long x = 1;
    double t0 = now();
    for (long i = 0; i < n; i++)
        __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    return 4.0 * n / (now() - t0) / 1e9;
}

// vpmaddubsw + vpaddw pairs a second, four independent accumulators.
static double pairs_g(void) {
#ifdef __AVX2__
    const long n = 25000000;
    double t0 = now();
    for (long i = 0; i < n; i++)
        __asm__ volatile(
            "vpmaddubsw %%ymm9, %%ymm8, %%ymm0\n\t"
            "vpmaddubsw %%ymm9, %%ymm11, %%ymm1\n\t"
            "vpmaddubsw %%ymm12, %%ymm8, %%ymm2\n\t"
            "vpmaddubsw %%ymm12, %%ymm11, %%ymm3\n\t"
            "vpaddw %%ymm0, %%ymm4, %%ymm4\n\t"
            "vpaddw %%ymm1, %%ymm5, %%ymm5\n\t"
            "vpaddw %%ymm2, %%ymm6, %%ymm6\n\t"
            "vpaddw %%ymm3, %%ymm7, %%ymm7\n\t" ::
                : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7");
    return 4.0 * n / (now() - t0) / 1e9;
#else
    return 0.0;
#endif
}

int main(void) {
    for (int r = 0; r < 3; r++) {
        double ghz = 0, g = 0;
        for (int k = 0; k < 5; k++) {
            double a = clock_ghz(), b = pairs_g();
            if (a > ghz) ghz = a;
            if (b > g) g = b;
        }
        printf("round %d: clock %.2f GHz, %.2f G vpmaddubsw+vpaddw a second (%.2f a cycle, "
               "%.1f G 8-bit products a second)\n",
               r + 1, ghz, g, g / ghz, 32 * g);
    }
    return 0;
}
