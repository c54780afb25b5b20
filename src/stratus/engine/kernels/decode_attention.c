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
 * K heads then V heads; slot = block * block_size + offset. The rows of a call are shared
 * among `threads` OpenMP threads (PyTorch's team, see native.py); ctypes releases the GIL for
 * the call. Every table entry and length is checked before anything is read or written.
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

/* The run of slots from position j to the end of its block (or of the context), whose address
 * this returns, with its length in *count; the next block is requested meanwhile. */
static inline const float *run_at(const float *plane, const int32_t *table, int64_t j, int64_t length,
                                  int64_t block_size, int64_t dim, int64_t *count)
{
    int64_t n = block_size - j % block_size;
    if (n > length - j)
        n = length - j;
    if (j + n < length)
        prefetch_block(slot_address(plane, table, j + n, block_size, dim), block_size * dim);
    *count = n;
    return slot_address(plane, table, j, block_size, dim);
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
    for (int64_t j = first, count; j < length; j += count) {
        const float *k = run_at(keys, table, j, length, block_size, dim, &count);
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
    for (int64_t j = first, count; j < length; j += count) {
        const float *v = run_at(values, table, j, length, block_size, dim, &count);
        for (int64_t g = 0; g < group; g++) {
            float *a = acc + g * dim;
            const float *p = scores + g * keys_read + (j - first);
            for (int64_t i = 0; i < count; i++)
                for (int64_t d = 0; d < dim; d++)
                    a[d] += p[i] * v[i * dim + d];
        }
    }
    for (int64_t g = 0; g < group; g++)
        for (int64_t d = 0; d < dim; d++)
            out[g * dim + d] = acc[g * dim + d] * inverse_sums[g];
}

/* One thread's share of a call: rows [row_begin, row_end). */
struct decode_job {
    const float *q;
    int64_t q_row_stride;
    const float *kv;
    int64_t slots;
    float *out;
    int64_t out_row_stride;
    const int32_t *tables;
    int64_t table_width;
    const int32_t *lengths;
    int64_t row_begin, row_end, block_size, num_heads, num_kv_heads, head_dim, window;
    float scale;
    int status;
};

static void *attend_rows(void *arg)
{
    struct decode_job *job = arg;
    const int64_t group = job->num_heads / job->num_kv_heads, dim = job->head_dim;
    int64_t longest = 1;
    for (int64_t r = job->row_begin; r < job->row_end; r++)
        longest = job->lengths[r] > longest ? job->lengths[r] : longest;
    float *scratch = malloc(sizeof(float) * (size_t)(group * longest + 2 * group * dim + group));
    if (!scratch) {
        job->status = -1;
        return NULL;
    }
    float *scores = scratch;
    float *scaled_q = scores + group * longest;
    float *acc = scaled_q + group * dim;
    float *inverse_sums = acc + group * dim;

    for (int64_t r = job->row_begin; r < job->row_end; r++) {
        const int64_t length = job->lengths[r];
        const int64_t first = job->window > 0 && length > job->window ? length - job->window : 0;
        const int32_t *table = job->tables + r * job->table_width;
        for (int64_t h = 0; h < job->num_kv_heads; h++) {
            const float *qh = job->q + r * job->q_row_stride + h * group * dim;
            const float *keys = job->kv + h * job->slots * dim;
            const float *values = job->kv + (job->num_kv_heads + h) * job->slots * dim;
            float *oh = job->out + r * job->out_row_stride + h * group * dim;
            const int64_t bs = job->block_size;
            const float scale = job->scale;
            /* A compile-time head size lets the compiler unroll and vectorise the inner loops. */
            if (dim == 32)
                attend_kv_head(qh, keys, values, table, first, length, bs, group, 32, scale, oh, scores,
                               scaled_q, acc, inverse_sums);
            else if (dim == 64)
                attend_kv_head(qh, keys, values, table, first, length, bs, group, 64, scale, oh, scores,
                               scaled_q, acc, inverse_sums);
            else if (dim == 128)
                attend_kv_head(qh, keys, values, table, first, length, bs, group, 128, scale, oh, scores,
                               scaled_q, acc, inverse_sums);
            else
                attend_kv_head(qh, keys, values, table, first, length, bs, group, dim, scale, oh, scores,
                               scaled_q, acc, inverse_sums);
        }
    }
    free(scratch);
    job->status = 0;
    return NULL;
}

#define MAX_THREADS 64

/* 0 when every row's context lies inside the pool and its table; -2 (nothing read) otherwise. */
static int check_inputs(const struct decode_job *job)
{
    if (job->block_size <= 0 || job->num_kv_heads <= 0 || job->num_heads % job->num_kv_heads != 0 ||
        job->head_dim <= 0 || job->num_heads <= 0)
        return -2;
    const int64_t pool_blocks = job->slots / job->block_size;
    for (int64_t r = job->row_begin; r < job->row_end; r++) {
        const int64_t length = job->lengths[r];
        if (length < 1 || length > job->table_width * job->block_size)
            return -2;
        const int32_t *table = job->tables + r * job->table_width;
        for (int64_t b = 0; b * job->block_size < length; b++)
            if (table[b] < 0 || table[b] >= pool_blocks)
                return -2;
    }
    return 0;
}

/* Rows [0, rows): query row r is q + r * q_row_stride ([num_heads, head_dim], contiguous heads),
 * its output out + r * out_row_stride; its context is lengths[r] tokens (the new one included)
 * whose blocks are tables[r * table_width ...]. window > 0 reads only the last `window` keys.
 * With threads > 1 the rows are cut into that many runs of about equal keys, computed by an
 * OpenMP team: PyTorch's own (native.py links the library so that it shares PyTorch's libgomp),
 * so no second pool of threads competes with PyTorch's for the cores. Returns 0; -1 if scratch
 * memory could not be allocated (outputs then undefined); -2, with nothing read or written, if a
 * length or block id lies outside the tables or the pool, or the head counts do not divide. */
int stratus_decode_attention(
    const float *q, int64_t q_row_stride, const float *kv, int64_t slots,
    float *out, int64_t out_row_stride, const int32_t *tables, int64_t table_width,
    const int32_t *lengths, int64_t rows, int64_t block_size, int64_t num_heads,
    int64_t num_kv_heads, int64_t head_dim, float scale, int64_t window, int64_t threads)
{
    struct decode_job base = {q, q_row_stride, kv, slots, out, out_row_stride, tables, table_width,
                              lengths, 0, rows, block_size, num_heads, num_kv_heads, head_dim,
                              window, scale, 0};
    if (check_inputs(&base) != 0)
        return -2;
    if (threads > rows)
        threads = rows;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    if (threads <= 1) {
        attend_rows(&base);
        return base.status;
    }
    int64_t total = 0;
    for (int64_t r = 0; r < rows; r++)
        total += lengths[r];
    struct decode_job jobs[MAX_THREADS];
    int64_t row = 0, seen = 0;
    for (int64_t t = 0; t < threads; t++) {
        jobs[t] = base;
        jobs[t].row_begin = row;
        /* Run t ends once it holds its share of all keys (every run keeps at least one row). */
        const int64_t goal = total * (t + 1) / threads;
        while (row < rows - (threads - 1 - t) && (row == jobs[t].row_begin || seen + lengths[row] <= goal))
            seen += lengths[row++];
        jobs[t].row_end = t == threads - 1 ? rows : row;
    }
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int64_t t = 0; t < threads; t++)
        attend_rows(&jobs[t]);
    int status = 0;
    for (int64_t t = 0; t < threads; t++)
        status |= jobs[t].status;
    return status;
}
