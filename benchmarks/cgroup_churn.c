/* Cgroup churn: create a cgroup, run one process in it that makes one
 * personality() query (a dangerous syscall to orb8), remove the cgroup;
 * RATE times a second for SECONDS seconds (0: until killed).
 * Usage: cgroup_churn PARENT RATE SECONDS
 * Prints the number of cgroups churned when it ends. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PARENT RATE SECONDS\n", argv[0]);
        return 2;
    }
    const char *parent = argv[1];
    double rate = atof(argv[2]), seconds = atof(argv[3]);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    double start = now();
    long n = 0;
    char dir[4096], procs[4200];
    while (!stop && (seconds <= 0 || now() - start < seconds)) {
        double due = start + n / rate;
        double wait = due - now();
        if (wait > 0) usleep((useconds_t)(wait * 1e6));
        snprintf(dir, sizeof dir, "%s/c%ld", parent, n);
        if (mkdir(dir, 0755) != 0) { perror("mkdir"); return 1; }
        snprintf(procs, sizeof procs, "%s/cgroup.procs", dir);
        pid_t pid = fork();
        if (pid == 0) {
            int fd = open(procs, O_WRONLY);
            if (fd < 0 || write(fd, "0", 1) != 1) _exit(1);
            close(fd);
            syscall(SYS_personality, 0xffffffffUL); /* a query: changes nothing */
            _exit(0);
        }
        int status;
        waitpid(pid, &status, 0);
        while (rmdir(dir) != 0) usleep(100); /* the child may still be exiting */
        n++;
    }
    printf("%ld\n", n);
    return 0;
}
