/* The group amax of the compiled backend's quantizers, in C: for `groups` groups of g
 * contiguous fp32 values (g a multiple of 16), the largest |x| of each, as its fp32 bits.
 *
 * The maximum is taken over the bits of |x| as int32 (the sign bit cleared): for
 * non-negative floats the integer order is the float order, so a finite group's result
 * is exactly its amax, and a group holding an Inf or a NaN (bits above every finite
 * value's) gives a non-finite result, which is all the quantizer asks of it (such a
 * group is poisoned). Vectorised across the group: inductor reduced each group of 16
 * with a horizontal max and ran at 2.5x this time.
 *
 * 16 groups go at once: each is first folded to one vector of 16 partial maxima, then
 * four merges (a shuffle of two vectors' halves and a max) leave one vector holding
 * the 16 groups' results in order (vec16.h). */
#include <stdint.h>
#include <string.h>

#include "vec16.h"

/* Each input holds groups of 2w partials; result lane l belongs to group l / w, and
 * takes the max of that group's partials l % w and l % w + w (in a|b concatenated). */
#define FIRST_HALF(l, w) ((l) / (w) * 2 * (w) + (l) % (w))
#define SECOND_HALF(l, w) ((l) / (w) * 2 * (w) + (l) % (w) + (w))
#define MERGE(a, b, w)                                                                    \
    vmax(__builtin_shufflevector(a, b, LANE_LIST(FIRST_HALF, w)),                         \
         __builtin_shufflevector(a, b, LANE_LIST(SECOND_HALF, w)))

static inline ivec16 vmax(ivec16 a, ivec16 b) {
    ivec16 greater = a > b;
    return (a & greater) | (b & ~greater);
}

void nblab_group_amax(const float *x, int32_t *out, int64_t groups, int64_t g) {
    const ivec16 magnitude = (ivec16){0} + 0x7FFFFFFF;
    for (int64_t i = 0; i < groups; i += 16) {
        int64_t count = groups - i < 16 ? groups - i : 16;
        ivec16 v[16], by8[8], by4[4], by2[2];
        for (int j = 0; j < 16; j++) {
            ivec16 m = {0}; /* a last, partial set of groups: unused lanes */
            for (int64_t c = 0; j < count && c < g; c += 16) {
                ivec16 a;
                memcpy(&a, x + (i + j) * g + c, sizeof a);
                m = vmax(m, a & magnitude);
            }
            v[j] = m;
        }
        for (int k = 0; k < 8; k++) by8[k] = MERGE(v[2 * k], v[2 * k + 1], 8);
        for (int k = 0; k < 4; k++) by4[k] = MERGE(by8[2 * k], by8[2 * k + 1], 4);
        for (int k = 0; k < 2; k++) by2[k] = MERGE(by4[2 * k], by4[2 * k + 1], 2);
        ivec16 result = MERGE(by2[0], by2[1], 1);
        memcpy(out + i, &result, count * sizeof(int32_t));
    }
}
