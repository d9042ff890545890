/* Generic POSIX types suit the 64-bit BPF target. */
#pragma once

#include <asm-generic/posix_types.h>
