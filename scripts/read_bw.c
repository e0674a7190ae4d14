// How fast this machine reads a 96 MiB buffer (the default model's weights are about that
// size) with 512-bit loads (256-bit where the compiler targets no AVX-512), on 1 or more
// threads each reading its share, 20 passes, three rounds: the bandwidth a one-token decode
// step's products can reach at best.
// gcc -O2 -march=native -o /tmp/read_bw scripts/read_bw.c -lpthread
// /tmp/read_bw 1; /tmp/read_bw 2
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define SZ (96L << 20)
#define PASSES 20
#define MAXT 64

static char *buf;
static int nt;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// Each thread's share: a multiple of 256 bytes (the loop's step), so every load is aligned.
static long part;

#ifdef __AVX512F__
typedef __m512i vec;
#define ZERO() _mm512_setzero_si512()
#define ADD(s, p) _mm512_add_epi32(s, _mm512_load_si512(p))
#define REDUCE(s) _mm512_reduce_add_epi32(s)
#else
typedef __m256i vec;
#define ZERO() _mm256_setzero_si256()
// Two loads of 32 bytes for each 64 (a cache line), as one 512-bit load reads.
#define ADD(s, p)                                                                              \
    _mm256_add_epi32(_mm256_add_epi32(s, _mm256_load_si256((const __m256i *)(p))),           \
                     _mm256_load_si256((const __m256i *)((p) + 32)))
#define REDUCE(s) (_mm256_extract_epi32(s, 0) + _mm256_extract_epi32(s, 7))
#endif

static void *run(void *arg) {
    long i = (long)arg;
    vec s = ZERO();
    for (int r = 0; r < PASSES; r++) {
        const char *p = buf + i * part;
        for (long o = 0; o < part; o += 256) {
            s = ADD(s, p + o);
            s = ADD(s, p + o + 64);
            s = ADD(s, p + o + 128);
            s = ADD(s, p + o + 192);
        }
    }
    return (void *)(long)REDUCE(s);
}

int main(int argc, char **argv) {
    nt = argc > 1 ? atoi(argv[1]) : 1;
    if (nt < 1 || nt > MAXT) {
        fprintf(stderr, "threads: 1 to %d\n", MAXT);
        return 2;
    }
    part = SZ / nt / 256 * 256;
    buf = aligned_alloc(64, SZ);
    if (!buf) return 1;
    for (long i = 0; i < SZ; i++) buf[i] = (char)i;
    pthread_t th[MAXT];
    for (int k = 0; k < 3; k++) {
        double t = now();
        for (long i = 0; i < nt; i++)
            if (pthread_create(&th[i], 0, run, (void *)i) != 0) return 1;
        for (int i = 0; i < nt; i++) pthread_join(th[i], 0);
        t = now() - t;
        printf("%d threads: %.1f GB/s\n", nt, (double)PASSES * nt * part / t / 1e9);
    }
    return 0;
}
