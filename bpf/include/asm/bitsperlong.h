/* BPF longs are 64 bits whatever the host. */
#pragma once

#define __BITS_PER_LONG 64
#include <asm-generic/bitsperlong.h>
