// What one AMX tile operation costs on this CPU (docs/PERF.md, forty-first session): a loop of
// 4 independent `tdpbsud`, `tileloadd`, `tilestored` or `tilezero`, A and C tiles of ROWS rows
// (B always 16 rows of 64 bytes); nanoseconds each.
// gcc -O2 -march=native -mamx-tile -mamx-int8 -o /tmp/amx_ops scripts/amx/tile_ops.c; /tmp/amx_ops 16
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <time.h>
typedef struct { uint8_t palette, start; uint8_t res[14]; uint16_t colsb[16]; uint8_t rows[16]; } __attribute__((packed)) cfg_t;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  syscall(SYS_arch_prctl, 0x1023, 18);
  int rows=atoi(argv[1]); long n=20000000;
  cfg_t cfg; memset(&cfg,0,sizeof cfg); cfg.palette=1;
  for(int i=0;i<8;i++){ cfg.rows[i]=rows; cfg.colsb[i]=64; } cfg.rows[4]=16; cfg.rows[5]=16;
  _tile_loadconfig(&cfg);
  static uint8_t buf[8][1024] __attribute__((aligned(64)));
  memset(buf,1,sizeof buf);
  _tile_loadd(2,buf[0],64);_tile_loadd(3,buf[1],64);_tile_loadd(4,buf[2],64);_tile_loadd(5,buf[3],64);
  _tile_zero(0);_tile_zero(1);_tile_zero(6);_tile_zero(7);
  double t0=now();
  for(long i=0;i<n;i++){ _tile_dpbsud(0,2,4); _tile_dpbsud(1,3,5); _tile_dpbsud(6,2,5); _tile_dpbsud(7,3,4);}
  double t1=now();
  for(long i=0;i<n;i++){ _tile_loadd(2,buf[0],64); _tile_loadd(3,buf[1],64); _tile_loadd(4,buf[2],64); _tile_loadd(5,buf[3],64);}
  double t2=now();
  for(long i=0;i<n;i++){ _tile_stored(0,buf[4],64); _tile_stored(1,buf[5],64); _tile_stored(6,buf[6],64); _tile_stored(7,buf[7],64);}
  double t3=now();
  for(long i=0;i<n;i++){ _tile_zero(0); _tile_zero(1); _tile_zero(6); _tile_zero(7);}
  double t4=now();
  double f=1e9/(4.0*n);
  printf("rows %d: dp %.2f ns  load %.2f ns  store %.2f ns  zero %.2f ns (each)\n",rows,(t1-t0)*f,(t2-t1)*f,(t3-t2)*f,(t4-t3)*f);
  _tile_release();
}
