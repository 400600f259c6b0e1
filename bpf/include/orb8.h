// Shared definitions for orb8 probes. Only UAPI headers: the kernel headers
// BCC compiles against may not match the running kernel, so no probe may
// depend on the layout of an internal kernel struct.
#ifndef ORB8_H
#define ORB8_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/ptrace.h>

#endif
