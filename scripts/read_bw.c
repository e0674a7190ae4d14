// How fast this machine reads a 96 MiB buffer (the default model's weights are about that
// size) with 512-bit loads, on 1 or more threads each reading its share, 20 passes, three
// rounds: the bandwidth a one-token decode step's products can reach at best.
// gcc -O2 -mavx512f -o /tmp/read_bw scripts/read_bw.c -lpthread
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

static void *run(void *arg) {
    long i = (long)arg;
    __m512i s = _mm512_setzero_si512();
    for (int r = 0; r < PASSES; r++) {
        const char *p = buf + i * part;
        for (long o = 0; o < part; o += 256) {
            s = _mm512_add_epi32(s, _mm512_load_si512(p + o));
            s = _mm512_add_epi32(s, _mm512_load_si512(p + o + 64));
            s = _mm512_add_epi32(s, _mm512_load_si512(p + o + 128));
            s = _mm512_add_epi32(s, _mm512_load_si512(p + o + 192));
        }
    }
    return (void *)(long)_mm512_reduce_add_epi32(s);
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
