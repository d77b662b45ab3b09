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
 * LANES chunks go at once, element j of each in v[j][0..LANES): every butterfly is then
 * one vector operation across the chunks (inductor compiled the same butterflies into
 * loops of 1 to 8 elements, at 2-3 ns an element). */
#include <stdint.h>

#define LANES 16

/* fwht's butterflies on v[N][LANES], every lane at once */
#define BUTTERFLIES(N, v)                                                                \
    for (int h = 1; h < N; h *= 2)                                                       \
        for (int i = 0; i < N; i += 2 * h)                                               \
            for (int j = i; j < i + h; j++)                                              \
                for (int c = 0; c < LANES; c++) {                                        \
                    float lo = v[j][c], hi = v[j + h][c];                                \
                    v[j][c] = lo + hi;                                                   \
                    v[j + h][c] = lo - hi;                                               \
                }

#define FWHT(N)                                                                          \
    static void fwht##N##_block(const float *x, float *out, int64_t lanes,               \
                                const float *s, float inv, int inverse) {                 \
        float v[N][LANES] = {{0}}; /* a last, partial block leaves lanes unused */       \
        for (int64_t c = 0; c < lanes; c++)                                               \
            for (int j = 0; j < N; j++)                                                   \
                v[j][c] = inverse ? x[c * N + j] : x[c * N + j] * s[j];                   \
        BUTTERFLIES(N, v);                                                                \
        for (int64_t c = 0; c < lanes; c++)                                               \
            for (int j = 0; j < N; j++)                                                   \
                out[c * N + j] = inverse ? (v[j][c] * inv) * s[j] : v[j][c] * inv;        \
    }                                                                                     \
    void nblab_fwht##N(const float *x, float *out, int64_t chunks, const float *s,        \
                       float inv, int inverse) {                                          \
        for (int64_t c = 0; c < chunks; c += LANES) {                                     \
            int64_t lanes = chunks - c < LANES ? chunks - c : LANES;                      \
            fwht##N##_block(x + c * N, out + c * N, lanes, s, inv, inverse);              \
        }                                                                                 \
    }

/* The forward transform of x^T, read from x itself: x is (rows, cols) contiguous, and the
 * chunks run down its columns (n rows each); out is x^T transformed, (cols, rows)
 * contiguous. LANES adjacent columns go at once, so every read is contiguous; this is
 * the transpose a dim-0 role needed as a copy of its own before the transform. Columns
 * [col0, col1) only: threads split the columns. */
#define FWHT_T(N)                                                                        \
    void nblab_fwht##N##_t(const float *x, float *out, int64_t rows, int64_t cols,       \
                           int64_t col0, int64_t col1, const float *s, float inv) {      \
        float v[N][LANES] = {{0}};                                                        \
        for (int64_t r = 0; r < rows; r += N)                                             \
            for (int64_t c0 = col0; c0 < col1; c0 += LANES) {                             \
                int64_t lanes = col1 - c0 < LANES ? col1 - c0 : LANES;                    \
                for (int j = 0; j < N; j++)                                               \
                    for (int64_t c = 0; c < lanes; c++)                                   \
                        v[j][c] = x[(r + j) * cols + c0 + c] * s[j];                      \
                BUTTERFLIES(N, v);                                                        \
                for (int64_t c = 0; c < lanes; c++)                                       \
                    for (int j = 0; j < N; j++)                                           \
                        out[(c0 + c) * rows + r + j] = v[j][c] * inv;                     \
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
