// A light load beside kiln, as an HTTP client or a browser tab is: every PERIOD
// microseconds, spin for BUSY of them (default 1000 and 150: 15% of a core), for ever.
//   gcc -O2 -o /tmp/light_load scripts/light_load.c
//   /tmp/light_load [PERIOD_US BUSY_US] &   ...   kill %1
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

int main(int argc, char **argv) {
    double period = argc > 1 ? atof(argv[1]) : 1000, busy = argc > 2 ? atof(argv[2]) : 150;
    if (!(period > 0) || !(busy >= 0) || busy > period) {
        fprintf(stderr, "usage: light_load [PERIOD_US BUSY_US], 0 <= BUSY_US <= PERIOD_US\n");
        return 2;
    }
    struct timespec rest = {0, (long)((period - busy) * 1000)};
    rest.tv_sec = rest.tv_nsec / 1000000000;
    rest.tv_nsec %= 1000000000;
    for (;;) {
        double t0 = now_us();
        while (now_us() - t0 < busy) {
        }
        nanosleep(&rest, NULL);
    }
}
