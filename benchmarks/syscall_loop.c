// Tight syscall loop for the benchmarks. Reads one request per line on
// stdin: "COUNT NR ARG0 [RATE]"; makes COUNT raw syscall(NR, ARG0) calls, at
// most RATE per second if RATE > 0, and answers with ns per call. Staying
// alive between requests lets a benchmark switch probes between short runs
// without process start-up noise. Raw syscall(2): libc cannot cache.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(void)
{
    char line[128];

    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof(line), stdin)) {
        long n = 0, nr = SYS_getppid, arg0 = 0;
        double rate = 0;
        if (sscanf(line, "%ld %ld %ld %lf", &n, &nr, &arg0, &rate) < 1 || n <= 0)
            break;
        double start = now_ns();
        for (long i = 0; i < n; i++) {
            syscall(nr, arg0, 0, 0, 0);
            // Pace in batches of 64 calls to keep clock reads off the path.
            if (rate > 0 && (i & 63) == 63) {
                double due = start + (i + 1) * 1e9 / rate;
                while (now_ns() < due)
                    ;
            }
        }
        printf("%.3f\n", (now_ns() - start) / n);
    }
    return 0;
}
