// One cache line's round trip between two threads (each waits for the other's store, then
// stores): the cost of a transfer between cores that the pool's protocol pays per task.
// Build and run: gcc -O2 -pthread -o /tmp/pingpong scripts/pingpong.c && /tmp/pingpong
#include <stdio.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <x86intrin.h>
static _Alignas(128) _Atomic long a; static _Alignas(128) _Atomic long b;
#define N 200000
void* th(void*x){ for(long i=1;i<=N;i++){ while(atomic_load_explicit(&a,memory_order_acquire)!=i) _mm_pause(); atomic_store_explicit(&b,i,memory_order_release);} return 0;}
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
int main(){ pthread_t t; pthread_create(&t,0,th,0); double t0=now();
 for(long i=1;i<=N;i++){ atomic_store_explicit(&a,i,memory_order_release); while(atomic_load_explicit(&b,memory_order_acquire)!=i) _mm_pause(); }
 double dt=now()-t0; pthread_join(t,0); printf("round trip %.0f ns, one way ~%.0f ns\n", dt/N, dt/N/2); }
