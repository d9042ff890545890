/* The BPF target's own asm/ headers. The UAPI headers include these; taking them from one
 * host architecture's multiarch directory would tie the build to that host (x86's, for one,
 * says longs are 32 bits when it does not see __x86_64__). BPF is 64-bit and, as bpf2go
 * builds it here (bpfel), little-endian. */
#pragma once

#include <asm-generic/types.h>
