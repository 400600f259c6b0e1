// Tight syscall loop for the benchmarks. Reads one request per line on
// stdin: "COUNT NR ARG0 [RATE [CPU]]"; makes COUNT raw syscall(NR, ARG0)
// calls, at most RATE per second if RATE > 0, and answers with ns per call:
// wall clock, or with CPU = 1 this thread's CPU time (user + system, which
// includes the BPF programs run in its syscalls but not the time other tasks
// ran while it waited for the CPU: what a shared, loaded VM adds). Staying
// alive between requests lets a benchmark switch probes between short runs
// without process start-up noise. Raw syscall(2): libc cannot cache.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double clock_ns(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static double now_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

int main(void)
{
    char line[128];

    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof(line), stdin)) {
        long n = 0, nr = SYS_getppid, arg0 = 0, cpu = 0;
        double rate = 0;
        if (sscanf(line, "%ld %ld %ld %lf %ld", &n, &nr, &arg0, &rate, &cpu) < 1 || n <= 0)
            break;
        clockid_t clock = cpu ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
        double start = now_ns(), begin = clock_ns(clock);
        for (long i = 0; i < n; i++) {
            syscall(nr, arg0, 0, 0, 0);
            // Pace in batches of 64 calls to keep clock reads off the path.
            if (rate > 0 && (i & 63) == 63) {
                double due = start + (i + 1) * 1e9 / rate;
                while (now_ns() < due)
                    ;
            }
        }
        printf("%.3f\n", (clock_ns(clock) - begin) / n);
    }
    return 0;
}
