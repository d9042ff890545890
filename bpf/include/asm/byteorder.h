/* bpf2go builds for bpfel only. */
#pragma once

#include <linux/byteorder/little_endian.h>
