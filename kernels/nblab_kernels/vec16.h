/* What the compiled backend's C kernels share: 16-lane vectors (GCC / clang vector
 * extensions: one AVX-512 register, or two or four narrower ones) and LANE_LIST, which
 * writes a shuffle's or a constant's 16 lanes as f(lane, w) for lanes 0..15.
 * __builtin_shufflevector needs GCC >= 12 or clang: an older compiler fails the build,
 * and the compiled backend keeps its graphs (c_kernels.py). */
#ifndef NBLAB_VEC16_H
#define NBLAB_VEC16_H

#include <stdint.h>

typedef float vec16 __attribute__((vector_size(64)));
typedef int32_t ivec16 __attribute__((vector_size(64)));

#define LANE_LIST(f, w)                                                                   \
    f(0, w), f(1, w), f(2, w), f(3, w), f(4, w), f(5, w), f(6, w), f(7, w), f(8, w),       \
        f(9, w), f(10, w), f(11, w), f(12, w), f(13, w), f(14, w), f(15, w)

#endif
