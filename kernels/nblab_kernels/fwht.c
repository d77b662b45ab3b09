/* The Hadamard transform of reference._hadamard_2d, chunk by chunk, in C.
 *
 * x holds `chunks` chunks of n contiguous fp32 values (an (M, K) tensor with K % n == 0,
 * transformed along K). Per chunk, in fp32 and in the reference's order:
 *   forward: out = fwht(x * s) * inv
 *   inverse: out = (fwht(x) * inv) * s
 * fwht: log2(n) butterfly stages, h = 1, 2, 4, ...: within each block of 2h values the
 * first h become lo + hi and the next h become lo - hi (reference._fwht).
 * Built with -ffp-contract=off and no fast-math: every operation rounds as torch's does.
 *
 * A chunk is n / 16 vectors of 16 values (vec16.h). The stages h < 16 run inside each
 * vector: a lane and its partner h away (a shuffle) give lo + hi and lo - hi, and a mask
 * keeps one per lane; the stages h >= 16 pair whole vectors. (Loading element j of 16
 * chunks into one vector instead ran 5x slower: the loads and stores were gathers.) */
#include <stdint.h>
#include <string.h>

#include "vec16.h"

#define PARTNER(l, h) ((l) ^ (h))
#define IS_HIGH(l, h) (((l) & (h)) ? -1 : 0)

/* one stage h < 16 inside v: lane l and lane l ^ h are lo and hi of one butterfly; a
 * low lane keeps lo + hi = v + p, a high lane lo - hi = p - v */
#define STAGE_IN(v, h)                                                                    \
    do {                                                                                  \
        vec16 p_ = __builtin_shufflevector(v, v, LANE_LIST(PARTNER, h));                  \
        ivec16 high_ = {LANE_LIST(IS_HIGH, h)};                                           \
        vec16 sum_ = v + p_, diff_ = p_ - v;                                              \
        v = (vec16)(((ivec16)diff_ & high_) | ((ivec16)sum_ & ~high_));                   \
    } while (0)

/* fwht's stages between whole vectors: element c of v[0..count) is one chunk's values,
 * for each lane c (the stages h >= 16 of a contiguous chunk, h / 16 vectors apart; or
 * every stage of 16 column chunks read across rows) */
static inline void butterflies_between(vec16 *v, int count) {
    for (int h = 1; h < count; h *= 2)
        for (int i = 0; i < count; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                vec16 lo = v[j], hi = v[j + h];
                v[j] = lo + hi;
                v[j + h] = lo - hi;
            }
}

/* fwht on a chunk of n = 16 * count values held in v[0..count) */
static inline void butterflies(vec16 *v, int count) {
    for (int a = 0; a < count; a++) {
        STAGE_IN(v[a], 1);
        STAGE_IN(v[a], 2);
        STAGE_IN(v[a], 4);
        STAGE_IN(v[a], 8);
    }
    butterflies_between(v, count);
}

#define FWHT(N)                                                                           \
    void nblab_fwht##N(const float *x, float *out, int64_t chunks, const float *s,         \
                       float inv, int inverse) {                                           \
        enum { V = N / 16 };                                                              \
        vec16 sv[V], v[V];                                                                \
        memcpy(sv, s, sizeof sv);                                                         \
        for (int64_t c = 0; c < chunks; c++) {                                            \
            memcpy(v, x + c * N, sizeof v);                                               \
            if (!inverse)                                                                 \
                for (int a = 0; a < V; a++) v[a] = v[a] * sv[a];                          \
            butterflies(v, V);                                                            \
            for (int a = 0; a < V; a++) {                                                 \
                v[a] = v[a] * inv;                                                        \
                if (inverse) v[a] = v[a] * sv[a];                                         \
            }                                                                             \
            memcpy(out + c * N, v, sizeof v);                                             \
        }                                                                                 \
    }

/* 16 x 16 transpose in place: at b = 8, 4, 2, 1, rows i and i + b (i & b == 0) swap
 * their off-diagonal b x b blocks, lane l of row i taking lane l - b of row i + b */
#define FROM_ROW_I(l, b) (((l) & (b)) ? 16 + (l) - (b) : (l))
#define FROM_ROW_IB(l, b) (((l) & (b)) ? 16 + (l) : (l) + (b))
#define TRANSPOSE_STAGE(t, b)                                                             \
    for (int i = 0; i < 16; i++)                                                          \
        if (!(i & (b))) {                                                                 \
            vec16 lo_ = t[i], hi_ = t[i + (b)];                                           \
            t[i] = __builtin_shufflevector(lo_, hi_, LANE_LIST(FROM_ROW_I, b));           \
            t[i + (b)] = __builtin_shufflevector(lo_, hi_, LANE_LIST(FROM_ROW_IB, b));    \
        }

static inline void transpose16(vec16 *t) {
    TRANSPOSE_STAGE(t, 8);
    TRANSPOSE_STAGE(t, 4);
    TRANSPOSE_STAGE(t, 2);
    TRANSPOSE_STAGE(t, 1);
}

/* The forward transform of x^T, read from x itself: x is (rows, cols) contiguous, and the
 * chunks run down its columns (n rows each); out is x^T transformed, (cols, rows)
 * contiguous. 16 adjacent columns go at once: row j's 16 values are one vector, so the
 * reads are contiguous and every stage pairs whole vectors; 16 x 16 transposes in
 * registers then write out's rows. This is the transpose a dim-0 role needed as a copy
 * of its own before the transform. Columns [col0, col1) only: threads split them. */
#define FWHT_T(N)                                                                         \
    void nblab_fwht##N##_t(const float *x, float *out, int64_t rows, int64_t cols,        \
                           int64_t col0, int64_t col1, const float *s, float inv) {       \
        vec16 v[N];                                                                       \
        for (int64_t r = 0; r < rows; r += N)                                             \
            for (int64_t c0 = col0; c0 < col1; c0 += 16) {                                \
                int64_t lanes = col1 - c0 < 16 ? col1 - c0 : 16;                          \
                for (int j = 0; j < N; j++) {                                             \
                    vec16 row = {0}; /* a last, partial group of columns: lanes unused */ \
                    if (lanes == 16) /* a constant size: one vector load, not a call */   \
                        memcpy(&row, x + (r + j) * cols + c0, sizeof row);                \
                    else                                                                  \
                        memcpy(&row, x + (r + j) * cols + c0, lanes * sizeof(float));     \
                    v[j] = row * s[j];                                                    \
                }                                                                         \
                butterflies_between(v, N);                                                \
                for (int q = 0; q < N; q += 16) {                                         \
                    for (int j = q; j < q + 16; j++) v[j] = v[j] * inv;                   \
                    transpose16(v + q); /* now v[q + c]: column c0 + c, rows r + q.. */   \
                    for (int64_t c = 0; c < lanes; c++)                                   \
                        memcpy(out + (c0 + c) * rows + r + q, &v[q + c], sizeof(vec16));  \
                }                                                                         \
            }                                                                             \
    }

FWHT(16)
FWHT(32)
FWHT(64)
FWHT(128)
FWHT_T(16)
FWHT_T(32)
FWHT_T(64)
FWHT_T(128)
