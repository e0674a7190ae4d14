// A loop of PAUSE instructions against a loop of plain work, timed with the TSC: under a
// hypervisor that exits on pause loops (pause-loop exiting), the PAUSE loop shows many long gaps.
// Build and run: gcc -O2 -o /tmp/pause_gaps scripts/pause_gaps.c && /tmp/pause_gaps
#include <stdio.h>
#include <x86intrin.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
int main(){
  for(int mode=0;mode<2;mode++){
    double t0=now(); unsigned long long prev=__rdtsc(), maxgap=0, gaps=0; long N=2000000;
    for(long i=0;i<N;i++){ if(mode==0) _mm_pause(); else {for(volatile int j=0;j<8;j++);} unsigned long long t=__rdtsc(); if(t-prev>maxgap)maxgap=t-prev; if(t-prev>3000)gaps++; prev=t;}
    double ns=(now()-t0)/N;
    printf("mode %s: %.1f ns/iter, max gap %llu cycles, gaps>3000cyc: %llu\n", mode==0?"pause":"loads", ns, maxgap, gaps);
  }
}
