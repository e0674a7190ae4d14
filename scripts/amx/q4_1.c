// The Q4_1 panel's work for 8 tokens (16 rows, NB blocks, REPS passes), kiln's `vpdpbusd` way
// written in C, against AMX: each block's nibbles decoded and stored as the B tile, two blocks
// a `tdpbsud` (each token's A row zero on the other block's half), the C tile stored and read
// back for the block's scales. Prints ns a token and block both ways (docs/PERF.md,
// forty-first session).
// - `G [SKIP]`: G blocks a phase (decode all, tile all, scale all); SKIP (bits) leaves out
//   phases: 1 the decode, 2 the tile work, 4 the scales (with the decode left out the scales
//   read garbage: time the decode and tile phases only that way).
// - `p L`: the tile work of block pair p + L issued before the scales of pair p and the decode
//   of pair p + L + 1 (a software pipeline, rings of 8 pairs): whether the phases overlap.
// gcc -O2 -march=native -mamx-tile -mamx-int8 -o /tmp/amx_q4_1 scripts/amx/q4_1.c
// /tmp/amx_q4_1 128 3000 16 [SKIP]; /tmp/amx_q4_1 128 3000 p L
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <time.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
typedef struct { uint8_t palette, start; uint8_t res[14]; uint16_t colsb[16]; uint8_t rows[16]; } __attribute__((packed)) cfg_t;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define NB 2048   /* blocks in a panel sequence: 2048*320 = 640KB -> L2 */
#define T 8
int main(int argc,char**argv){
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) { perror("perm"); return 1; }
  int npanel = 1; int nbk = atoi(argv[1]); // blocks
  uint8_t *w = aligned_alloc(64, nbk*320); for (int i=0;i<nbk*320;i++) w[i]=rand();
  for (int b=0;b<nbk;b++) for(int j=0;j<64;j+=4){ w[b*320+j+1]=0x3c; w[b*320+j+3]=0x3c; w[b*320+j]=0; w[b*320+j+2]=0;}
  int8_t *a = aligned_alloc(64, T*nbk*32); for (int i=0;i<T*nbk*32;i++) a[i]=(rand()%200)-100;
  float *da = malloc(T*nbk*4); for(int i=0;i<T*nbk;i++) da[i]=1.0f;
  float out1[T][16], out2[T][16];
  int reps = atoi(argv[2]);
  // vnni path
  double t0=now();
  for (int r=0;r<reps;r++){
    __m512 acc[T]; for(int t=0;t<T;t++) acc[t]=_mm512_setzero_ps();
    for (int b=0;b<nbk;b++){
      const uint8_t*base=w+b*320;
      __m512i dm=_mm512_loadu_si512(base);
      __m512 dw=_mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
      __m512i m4=_mm512_set1_epi8(15), wk[8];
      for(int q=0;q<4;q++){__m512i x=_mm512_loadu_si512(base+64+64*q); wk[q]=_mm512_and_si512(x,m4); wk[q+4]=_mm512_and_si512(_mm512_srli_epi16(x,4),m4);}
      for(int t=0;t<T;t++){
        const int8_t*ap=a+(t*nbk+b)*32; __m512i s=_mm512_setzero_si512();
        for(int k=0;k<8;k++) s=_mm512_dpbusd_epi32(s,wk[k],_mm512_set1_epi32(*(int*)(ap+4*k)));
        acc[t]=_mm512_fmadd_ps(_mm512_cvtepi32_ps(s),_mm512_mul_ps(dw,_mm512_set1_ps(da[t*nbk+b])),acc[t]);
      }
    }
    for(int t=0;t<T;t++) _mm512_storeu_ps(out1[t],acc[t]);
  }
  double t1=now();
  // amx path: activations laid out token-major per block: a2[b][t][32]
  int8_t *a2 = aligned_alloc(64, T*nbk*32);
  for(int b=0;b<nbk;b++)for(int t=0;t<T;t++) memcpy(a2+(b*T+t)*32, a+(t*nbk+b)*32, 32);
  // A3: per pair p, 16 rows: row 2t+h? use row h*T+t : [a_{t,b0} | 0] for h=0, [0 | a_{t,b1}] for h=1
  int8_t *a3 = aligned_alloc(64, nbk/2*16*64); memset(a3,0,nbk/2*16*64);
  for(int p=0;p<nbk/2;p++)for(int h=0;h<2;h++)for(int t=0;t<T;t++) memcpy(a3+(p*16+h*T+t)*64+32*h, a+(t*nbk+2*p+h)*32, 32);
  cfg_t cfg; memset(&cfg,0,sizeof cfg); cfg.palette=1;
  for(int i=0;i<8;i++){ cfg.rows[i]=16; cfg.colsb[i]=64; }
  _tile_loadconfig(&cfg);
  double t2=now();
  if (argv[3][0] != 'p') {
  int G = atoi(argv[3]); int skip=argc>4?atoi(argv[4]):0;
  uint8_t *wb = aligned_alloc(64, G*512); int32_t *cbx = aligned_alloc(64, G*T*64); __m512 dwg[256];
  for (int r=0;r<reps;r++){
    __m512 acc[T]; for(int t=0;t<T;t++) acc[t]=_mm512_setzero_ps();
    for (int g=0; g<nbk; g+=G){
      if(!(skip&1)) for(int h=0;h<G;h++){
      const uint8_t*base=w+(g+h)*320;
      __m512i dm=_mm512_loadu_si512(base);
      dwg[h]=_mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
      __m512i m4=_mm512_set1_epi8(15);
      for(int q=0;q<4;q++){__m512i x=_mm512_loadu_si512(base+64+64*q); _mm512_store_si512(wb+512*h+64*q,_mm512_and_si512(x,m4)); _mm512_store_si512(wb+512*h+256+64*q,_mm512_and_si512(_mm512_srli_epi16(x,4),m4));}
      }
      if(!(skip&2)) for(int h=0;h<G;h+=4){
      _tile_loadd(4,wb+512*h,64); _tile_loadd(5,wb+512*(h+2),64);
      _tile_loadd(2,a3+((g+h)/2*16)*64,64); _tile_loadd(3,a3+((g+h)/2*16+16)*64,64);
      _tile_zero(0); _tile_zero(1);
      _tile_dpbsud(0,2,4); _tile_dpbsud(1,3,5);
      _tile_stored(0,cbx+h*T*16,64); _tile_stored(1,cbx+(h+2)*T*16,64);
      }
      if(!(skip&4)) for(int h=0;h<G;h++)
      for(int t=0;t<T;t++){
        __m512i s=_mm512_load_si512(cbx+h*T*16+16*t);
        acc[t]=_mm512_fmadd_ps(_mm512_cvtepi32_ps(s),_mm512_mul_ps(dwg[h],_mm512_set1_ps(da[t*nbk+g+h])),acc[t]);
      }
    }
    for(int t=0;t<T;t++) _mm512_storeu_ps(out2[t],acc[t]);
  }
  } else {
  int R = 8; // ring of pairs
  uint8_t *wb = aligned_alloc(64, R*1024); int32_t *cbx = aligned_alloc(64, R*2*T*64); __m512 dwr[8][2];
  int np = nbk/2;
  #define DECODE(p) do{ int s_=(p)%R; for(int h=0;h<2;h++){ const uint8_t*base=w+(2*(p)+h)*320; \
      __m512i dm=_mm512_loadu_si512(base); dwr[s_][h]=_mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm)); __m512i m4=_mm512_set1_epi8(15); \
      for(int q=0;q<4;q++){__m512i x=_mm512_loadu_si512(base+64+64*q); _mm512_store_si512(wb+1024*s_+512*h+64*q,_mm512_and_si512(x,m4)); _mm512_store_si512(wb+1024*s_+512*h+256+64*q,_mm512_and_si512(_mm512_srli_epi16(x,4),m4));} } }while(0)
  #define TILE(p,tc,ta,tb) do{ int s_=(p)%R; _tile_loadd(tb,wb+1024*s_,64); _tile_loadd(ta,a3+((p)*16)*64,64); _tile_zero(tc); _tile_dpbsud(tc,ta,tb); _tile_stored(tc,cbx+s_*2*T*16,64);}while(0)
  #define SCALE(p) do{ int s_=(p)%R; for(int h=0;h<2;h++) for(int t=0;t<T;t++){ __m512i s=_mm512_load_si512(cbx+s_*2*T*16+(h*T+t)*16); \
        acc[t]=_mm512_fmadd_ps(_mm512_cvtepi32_ps(s),_mm512_mul_ps(dwr[s_][h],_mm512_set1_ps(da[t*nbk+2*(p)+h])),acc[t]); } }while(0)
  for (int r=0;r<reps;r++){
    __m512 acc[T]; for(int t=0;t<T;t++) acc[t]=_mm512_setzero_ps();
    int L = argc>4?atoi(argv[4]):2;
    for(int p=0;p<L+1 && p<np;p++) DECODE(p);
    for(int p=0;p<L && p<np;p++) { if(p&1) TILE(p,1,3,5); else TILE(p,0,2,4);} 
    for (int p=0;p<np;p++){
      if(p+L<np){ if((p+L)&1) TILE(p+L,1,3,5); else TILE(p+L,0,2,4);} 
      if(p+L+1<np) DECODE(p+L+1);
      SCALE(p);
    }
    for(int t=0;t<T;t++) _mm512_storeu_ps(out2[t],acc[t]);
  }
  }
  double t3=now();
  _tile_release();
  double maxd=0; for(int t=0;t<T;t++)for(int j=0;j<16;j++){double d=out1[t][j]-out2[t][j]; if(d<0)d=-d; if(d>maxd)maxd=d;}
  double tb = (double)reps*nbk*T;
  printf("vnni %.3f ns/token-block  amx %.3f ns/token-block  ratio %.2f  maxdiff %g (out %g)\n",(t1-t0)/tb*1e9,(t3-t2)/tb*1e9,(t1-t0)/(t3-t2),maxd,out1[0][0]);
}
