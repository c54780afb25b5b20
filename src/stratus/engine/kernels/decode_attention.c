/* Paged decode attention for float32 on the CPU: one new query token per sequence, its keys
 * and values read where they lie in the KV pool, block by block, with no gather, no padding
 * and no mask. Built and loaded by engine/native.py; checked against the PyTorch path by
 * tests/unit/engine/test_native_attention.py.
 *
 * Why it exists: PyTorch's CPU attention kernels are built for blocks of queries. A decode row
 * has `group` (num_heads / num_kv_heads, often 2-8) queries per KV head, so per-row SDPA read
 * its context at ~3 GB/s where a core can stream ~10-20 GB/s (docs/ENGINE.md).
 *
 * Layout (engine/model_runner.py): the pool of one layer is [2 * kv_heads, slots, head_dim],
 * K heads then V heads; slot = block * block_size + offset. Single-threaded on purpose: the
 * engine runs each half of a step on its own thread (engine/split_step.py) and ctypes releases
 * the GIL for the call.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Ask for a block's keys (or values) before they are needed. Each head's context is read once,
 * a block (block_size * head_dim floats, 2-8 KB) at a time, so without this every block start
 * waits on DRAM: fetching the next block while computing this one gave 1.3-1.6x on contexts
 * that miss the L3 (bench/engine_kernels.py measures the kernel). */
static inline void prefetch_block(const float *block, int64_t floats)
{
    for (int64_t i = 0; i < floats; i += 64 / sizeof(float))
        __builtin_prefetch(block + i, 0, 3);
}

static inline const float *slot_address(const float *plane, const int32_t *table, int64_t position,
                                        int64_t block_size, int64_t dim)
{
    return plane + ((int64_t)table[position / block_size] * block_size + position % block_size) * dim;
}

static inline __attribute__((always_inline)) void attend_kv_head(
    const float *restrict q, const float *restrict keys, const float *restrict values,
    const int32_t *restrict table, int64_t first, int64_t length, int64_t block_size,
    int64_t group, const int64_t dim, float scale, float *restrict out,
    float *restrict scores, float *restrict scaled_q, float *restrict acc, float *restrict inverse_sums)
{
    const int64_t keys_read = length - first;
    for (int64_t g = 0; g < group; g++)
        for (int64_t d = 0; d < dim; d++)
            scaled_q[g * dim + d] = q[g * dim + d] * scale;

    /* Pass 1: every query head's score against every key, a block (a contiguous run of slots)
     * at a time, so each key is read from memory once and reused by the group from L1. */
    prefetch_block(slot_address(keys, table, first, block_size, dim), block_size * dim);
    for (int64_t j = first; j < length;) {
        int64_t count = block_size - j % block_size;
        if (count > length - j)
            count = length - j;
        const float *k = slot_address(keys, table, j, block_size, dim);
        if (j + count < length)
            prefetch_block(slot_address(keys, table, j + count, block_size, dim), block_size * dim);
        for (int64_t g = 0; g < group; g++) {
            const float *qg = scaled_q + g * dim;
            float *s = scores + g * keys_read + (j - first);
            for (int64_t i = 0; i < count; i++) {
                float dot = 0.0f;
                for (int64_t d = 0; d < dim; d++)
                    dot += qg[d] * k[i * dim + d];
                s[i] = dot;
            }
        }
        j += count;
    }

    prefetch_block(slot_address(values, table, first, block_size, dim), block_size * dim);
    /* Softmax per query head, left unnormalised; the sum divides the output once at the end. */
    for (int64_t g = 0; g < group; g++) {
        float *s = scores + g * keys_read;
        float top = s[0];
        for (int64_t i = 1; i < keys_read; i++)
            top = s[i] > top ? s[i] : top;
        float sum = 0.0f;
        for (int64_t i = 0; i < keys_read; i++) {
            s[i] = expf(s[i] - top);
            sum += s[i];
        }
        inverse_sums[g] = 1.0f / sum;
    }

    /* Pass 2: the weighted sum of values, again a block at a time. */
    for (int64_t x = 0; x < group * dim; x++)
        acc[x] = 0.0f;
    for (int64_t j = first; j < length;) {
        int64_t count = block_size - j % block_size;
        if (count > length - j)
            count = length - j;
        const float *v = slot_address(values, table, j, block_size, dim);
        if (j + count < length)
            prefetch_block(slot_address(values, table, j + count, block_size, dim), block_size * dim);
        for (int64_t g = 0; g < group; g++) {
            float *a = acc + g * dim;
            const float *p = scores + g * keys_read + (j - first);
            for (int64_t i = 0; i < count; i++)
                for (int64_t d = 0; d < dim; d++)
                    a[d] += p[i] * v[i * dim + d];
        }
        j += count;
    }
    for (int64_t g = 0; g < group; g++)
        for (int64_t d = 0; d < dim; d++)
            out[g * dim + d] = acc[g * dim + d] * inverse_sums[g];
}

/* Rows [0, rows): query row r is q + r * q_row_stride ([num_heads, head_dim], contiguous heads),
 * its output out + r * out_row_stride; its context is lengths[r] tokens (the new one included)
 * whose blocks are tables[r * table_width ...]. window > 0 reads only the last `window` keys.
 * Returns 0, or -1 if scratch memory could not be allocated (nothing written then). */
int stratus_decode_attention(
    const float *q, int64_t q_row_stride, const float *kv, int64_t slots,
    float *out, int64_t out_row_stride, const int32_t *tables, int64_t table_width,
    const int32_t *lengths, int64_t rows, int64_t block_size, int64_t num_heads,
    int64_t num_kv_heads, int64_t head_dim, float scale, int64_t window)
{
    const int64_t group = num_heads / num_kv_heads;
    int64_t longest = 1;
    for (int64_t r = 0; r < rows; r++)
        longest = lengths[r] > longest ? lengths[r] : longest;
    float *scratch = malloc(sizeof(float) * (size_t)(group * longest + 2 * group * head_dim + group));
    if (!scratch)
        return -1;
    float *scores = scratch;
    float *scaled_q = scores + group * longest;
    float *acc = scaled_q + group * head_dim;
    float *inverse_sums = acc + group * head_dim;

    for (int64_t r = 0; r < rows; r++) {
        const int64_t length = lengths[r];
        const int64_t first = window > 0 && length > window ? length - window : 0;
        const int32_t *table = tables + r * table_width;
        for (int64_t h = 0; h < num_kv_heads; h++) {
            const float *qh = q + r * q_row_stride + h * group * head_dim;
            const float *keys = kv + h * slots * head_dim;
            const float *values = kv + (num_kv_heads + h) * slots * head_dim;
            float *oh = out + r * out_row_stride + h * group * head_dim;
            /* A compile-time head size lets the compiler unroll and vectorise the inner loops. */
            if (head_dim == 32)
                attend_kv_head(qh, keys, values, table, first, length, block_size, group, 32, scale,
                               oh, scores, scaled_q, acc, inverse_sums);
            else if (head_dim == 64)
                attend_kv_head(qh, keys, values, table, first, length, block_size, group, 64, scale,
                               oh, scores, scaled_q, acc, inverse_sums);
            else if (head_dim == 128)
                attend_kv_head(qh, keys, values, table, first, length, block_size, group, 128, scale,
                               oh, scores, scaled_q, acc, inverse_sums);
            else
                attend_kv_head(qh, keys, values, table, first, length, block_size, group, head_dim,
                               scale, oh, scores, scaled_q, acc, inverse_sums);
        }
    }
    free(scratch);
    return 0;
}
