// Tight getppid loop for syscall_overhead.py. Reads a count per line on
// stdin, makes that many getppid calls, answers with ns per call. Staying
// alive between runs lets the benchmark switch probes between short runs
// without process start-up noise. Raw syscall(2): libc cannot cache.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
    char line[64];
    struct timespec a, b;

    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof(line), stdin)) {
        long n = atol(line);
        if (n <= 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++)
            syscall(SYS_getppid);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
        printf("%.3f\n", ns / n);
    }
    return 0;
}
