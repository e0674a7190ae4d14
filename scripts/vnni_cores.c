// How much slower one core runs 512-bit integer dot products (vpdpbusd) while the other
// cores do the same: each thread runs ten independent chains, 2 x 10^8 instructions.
// gcc -O2 -mavx512f -mavx512bw -mavx512vnni -o /tmp/vnni scripts/vnni_cores.c -lpthread
// /tmp/vnni 1; /tmp/vnni 2   (seconds for the same work a thread; equal means no slowdown)
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define N 200000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *run(void *out) {
    __m512i a[10];
    const __m512i w = _mm512_set1_epi8(3), x = _mm512_set1_epi8(5);
    for (int i = 0; i < 10; i++) a[i] = _mm512_set1_epi32(i);
    for (long i = 0; i < N / 10; i++)
        for (int j = 0; j < 10; j++) a[j] = _mm512_dpbusd_epi32(a[j], w, x);
    int s = 0;
    for (int i = 0; i < 10; i++) s += _mm512_reduce_add_epi32(a[i]);
    *(int *)out = s;
    return NULL;
}

int main(int argc, char **argv) {
    int nt = argc > 1 ? atoi(argv[1]) : 1;
    if (nt < 1 || nt > 64) {
        fprintf(stderr, "threads: 1 to 64\n");
        return 2;
    }
    pthread_t t[64];
    int r[64];
    double t0 = now();
    for (int i = 0; i < nt; i++) pthread_create(&t[i], NULL, run, &r[i]);
    for (int i = 0; i < nt; i++) pthread_join(t[i], NULL);
    printf("%d threads: %.3f s for 2e8 vpdpbusd each\n", nt, now() - t0);
    return 0;
}
