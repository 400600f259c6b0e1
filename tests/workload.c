// Test workload: joins a cgroup, then makes an exact number of syscalls.
//
//   workload CGROUP_DIR SPEC ...
//
// SPEC is one of:
//   NR:COUNT[:ARG0]          syscall(NR, ARG0, 0, 0, 0) COUNT times
//   range:START:COUNT        syscall(START + i) for i in 0..COUNT-1
//   uid:UID                  drop to UID (setresgid/setresuid; not counted)
//   int80:NR:COUNT[:ARG0[:NATIVE]]
//                            the i386 syscall NR through `int $0x80` (x86_64);
//                            with NATIVE, each call follows a native
//                            syscall(NATIVE, 0, 0, 0, 0) (e.g. the same number:
//                            how an attacker would prime a probe's cache)
//   int80forged:NR:COUNT:ARG0[:NATIVE]
//                            the same with rcx and r11 set as a 64-bit
//                            `syscall` leaves them (rcx = the return address,
//                            r11 = rflags)
//   loop:NR[:ARG0]           syscall(NR, ARG0, 0, 0, 0) until SIGTERM, then
//                            print the number of calls made and exit
//   udp:COUNT                COUNT datagrams of 100 bytes to itself on 127.0.0.1
//                            (egress and ingress in this cgroup, a loopback flow)
//
// Moves itself into CGROUP_DIR (writes its pid to cgroup.procs) before the
// first counted call, so every listed syscall is attributed to that cgroup.
// Raw syscall(2) so libc neither caches nor adds calls. Exits 0 when done.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CGROUP_DIR NR:COUNT[:ARG0] ...\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "-") != 0) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/cgroup.procs", argv[1]);
        FILE *f = fopen(path, "w");
        if (!f || fprintf(f, "%d\n", getpid()) < 0 || fclose(f) != 0) {
            perror(path);
            return 1;
        }
    }
    for (int i = 2; i < argc; i++) {
        long nr = 0, count = 0, arg0 = 0;
        if (sscanf(argv[i], "range:%ld:%ld", &nr, &count) == 2) {
            for (long n = 0; n < count; n++)
                syscall(nr + n, 0, 0, 0, 0);
            continue;
        }
        if (sscanf(argv[i], "loop:%ld:%ld", &nr, &arg0) >= 1) {
            struct sigaction action = {.sa_handler = on_term};
            sigaction(SIGTERM, &action, NULL);
            // Ready: the caller may send SIGTERM from now on.
            printf("looping\n");
            fflush(stdout);
            unsigned long long calls = 0;
            while (!stop) {
                syscall(nr, arg0, 0, 0, 0);
                calls++;
            }
            printf("%llu\n", calls);
            return 0;
        }
        if (sscanf(argv[i], "udp:%ld", &count) == 1) {
            struct sockaddr_in addr = {.sin_family = AF_INET};
            socklen_t len = sizeof(addr);
            char buf[100] = {0};
            addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            int fd = socket(AF_INET, SOCK_DGRAM, 0);
            if (fd < 0 || bind(fd, (struct sockaddr *)&addr, len) != 0 ||
                getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
                perror("udp");
                return 1;
            }
            for (long n = 0; n < count; n++) {
                if (sendto(fd, buf, sizeof(buf), 0, (struct sockaddr *)&addr, len) < 0 ||
                    recv(fd, buf, sizeof(buf), 0) < 0) {
                    perror("udp");
                    return 1;
                }
            }
            close(fd);
            continue;
        }
        if (sscanf(argv[i], "uid:%ld", &nr) == 1) {
            if (syscall(SYS_setresgid, nr, nr, nr) != 0 || syscall(SYS_setresuid, nr, nr, nr) != 0) {
                perror("setresuid");
                return 1;
            }
            continue;
        }
        long native = -1;
        if (sscanf(argv[i], "int80forged:%ld:%ld:%ld:%ld", &nr, &count, &arg0, &native) >= 3) {
#if defined(__x86_64__)
            for (long n = 0; n < count; n++) {
                if (native >= 0)
                    syscall(native, 0, 0, 0, 0);
                long ret = nr;
                // lea/pushfq/pop leave the flags as they are, so r11 holds
                // exactly the rflags `int` saves; the stack pointer steps
                // over the red zone first.
                __asm__ volatile("lea -128(%%rsp), %%rsp\n\t"
                                 "pushfq\n\t"
                                 "pop %%r11\n\t"
                                 "lea 128(%%rsp), %%rsp\n\t"
                                 "lea 1f(%%rip), %%rcx\n\t"
                                 "int $0x80\n"
                                 "1:"
                                 : "+a"(ret)
                                 : "b"(arg0), "d"(0), "S"(0), "D"(0)
                                 : "rcx", "r11", "memory");
            }
            continue;
#else
            fprintf(stderr, "int80forged needs x86_64\n");
            return 2;
#endif
        }
        if (sscanf(argv[i], "int80:%ld:%ld:%ld:%ld", &nr, &count, &arg0, &native) >= 2) {
#if defined(__x86_64__)
            for (long n = 0; n < count; n++) {
                if (native >= 0)
                    syscall(native, 0, 0, 0, 0);
                long ret = nr;
                __asm__ volatile("int $0x80"
                                 : "+a"(ret)
                                 : "b"(arg0), "c"(0), "d"(0), "S"(0), "D"(0)
                                 : "memory");
            }
            continue;
#else
            fprintf(stderr, "int80 needs x86_64\n");
            return 2;
#endif
        }
        if (sscanf(argv[i], "%ld:%ld:%ld", &nr, &count, &arg0) < 2) {
            fprintf(stderr, "bad spec %s\n", argv[i]);
            return 2;
        }
        for (long n = 0; n < count; n++)
            syscall(nr, arg0, 0, 0, 0);
    }
    return 0;
}
