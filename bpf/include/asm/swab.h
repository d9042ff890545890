/* No architecture byte-swap instructions: linux/swab.h falls back to plain C. */
#pragma once
