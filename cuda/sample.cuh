/* cuda/sample.cuh: picking tokens on the device, so that a decode step copies ids, not rows of
 * logits, to the host: each row's argmax (greedy decoding, engine_step_argmax), or the token a
 * SampleDraw picks (engine_step_sample), as sampler_pick (sampler.c) picks it on the host:
 *   sample_prep_kernel  a block a row: the max, the kept candidates (min-p), their probabilities
 *                       exp((x - max) / T) and mass; when top-k or top-p applies, the candidates
 *                       that can be in their set (a histogram of the probabilities, as sampler.c
 *                       bins them) written in id order into the row's segment
 *   sort                cub::DeviceSegmentedRadixSort, the segments of all rows at once, by
 *                       probability; stable, on candidates in id order: the lower id first among
 *                       equal ones, as sampler.c sorts them. One row: cub::DeviceRadixSort of the
 *                       whole row, the keys past its segment zeroed (the segmented sort gives a
 *                       segment one block, which for a near-flat row of 38,000 candidates took 5
 *                       passes of about 55 us on an H200)
 *   sample_pick_kernel  a block a row: top-k's and top-p's cuts, then the draw, each a scan of the
 *                       cumulative mass (in id order when neither applies)
 * Before them, with a repetition penalty, penalty_kernel changes the penalized logits in place.
 * The same probabilities to the bit (sampler_exp, sampler.h), the same order of the candidates, and
 * the draw taken from the sequence's generator on the host. What can differ is the rounding of the
 * sums of the mass, which a block's scan adds in another order than sampler.c's loops: a token
 * differs only when the draw or top-p's target falls within that (about 1e-16 of the mass) of the
 * boundary between two candidates. */
#ifndef SAMPLE_CUH
#define SAMPLE_CUH

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include "common.cuh"

extern "C" {
#include "../sampler.h" /* SampleDraw */
}

/* SAMPLE_THREADS: sample_prep_kernel's block; PICK_THREADS: sample_pick_kernel's (its double scans
 * need more than the 64 registers a thread of 1024 has). */
enum { ARGMAX_THREADS = 512, PENALTY_THREADS = 256, SAMPLE_THREADS = 1024, PICK_THREADS = 512, PICK_ITEMS = 8, SAMPLE_BINS = 4096 };
/* SAMPLE_LOADS: logits a thread reads at once in a pass over a row (block_argmax, sample_prep_kernel):
 * a pass is SAMPLE_LOADS times fewer rounds of waiting for L2. */
enum { SAMPLE_LOADS = 4 };
/* The bits of a probability's float the sort looks at: [0, 1] is below 0x3F800001. */
enum { SAMPLE_KEY_BITS = 30 };

/* x[k] = row[i + k * STRIDE] for the SAMPLE_LOADS k, `fill` at or past V: a round of a pass over a
 * row, every load issued before any is used. */
template <int STRIDE>
__device__ __forceinline__ void load_round(const float *__restrict__ row, int V, int i, float fill, float (&x)[SAMPLE_LOADS]) {
#pragma unroll
    for (int k = 0; k < SAMPLE_LOADS; k++) x[k] = i + k * STRIDE < V ? row[i + k * STRIDE] : fill;
}

/* (value, id) a over b: the larger value, the lower id among equal ones; id -1 = none yet. */
__device__ __forceinline__ void argmax_merge(float &v, int &id, float ov, int oid) {
    if (oid >= 0 && (id < 0 || ov > v || (ov == v && oid < id))) { v = ov; id = oid; }
}

/* The lowest id among those of the largest of row[0..V), for every thread of the block (THREADS of
 * them): what logits_argmax (sampler.h) returns on the host. Each thread keeps the first of its
 * largest (it reads its ids in increasing order), then the block merges them. A row with no value
 * above -inf (or only NaNs) gives 0, as the host's loop does. *v: the largest value. */
template <int THREADS> __device__ int block_argmax(const float *__restrict__ row, int V, float *vmax) {
    float v = -INFINITY;
    int id = -1;
    for (int i0 = threadIdx.x; i0 < V; i0 += SAMPLE_LOADS * THREADS) {
        float x[SAMPLE_LOADS];
        load_round<THREADS>(row, V, i0, -INFINITY, x);
#pragma unroll
        for (int k = 0; k < SAMPLE_LOADS; k++)
            if (x[k] > v) { v = x[k]; id = i0 + k * THREADS; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) argmax_merge(v, id, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, id, o));
    __shared__ float pv[THREADS / 32];
    __shared__ int pid[THREADS / 32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { pv[warp] = v; pid[warp] = id; }
    __syncthreads();
    v = lane < THREADS / 32 ? pv[lane] : -INFINITY;
    id = lane < THREADS / 32 ? pid[lane] : -1;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) argmax_merge(v, id, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, id, o));
    *vmax = v;
    return id < 0 ? 0 : id;
}

/* Step 1, sampler_penalize on the device: the logits of row r at the ids of its draw's list become
 * x / penalty when x > 0, else x * penalty (single IEEE operations: the host's bits). The rows'
 * lists lie one after another in pen (row r's after those of rows 0..r-1), each id once. A block a
 * row. */
__global__ void penalty_kernel(float *logits, size_t ld, const SampleDraw *draws, const int *pen) {
    launch_next();
    wait_prior();
    const int r = blockIdx.x;
    __shared__ int start;
    if (threadIdx.x == 0) start = 0;
    __syncthreads();
    int before = 0;
    for (int i = threadIdx.x; i < r; i += blockDim.x) before += draws[i].n_pen;
    if (before) atomicAdd(&start, before); /* integers: the same sum in any order */
    __syncthreads();
    const SampleDraw d = draws[r];
    float *row = logits + (size_t)r * ld;
    for (int j = threadIdx.x; j < d.n_pen; j += blockDim.x) {
        float *x = row + pen[start + j];
        *x = *x > 0 ? *x / d.penalty : *x * d.penalty;
    }
}

/* ids[row] = the argmax of logits[row][0..V), a block a row. */
__global__ void argmax_kernel(const float *__restrict__ logits, size_t ld, int V, int *__restrict__ ids) {
    launch_next();
    wait_prior();
    float v;
    const int id = block_argmax<ARGMAX_THREADS>(logits + blockIdx.x * ld, V, &v);
    if (threadIdx.x == 0) ids[blockIdx.x] = id;
}

/* What sample_prep_kernel leaves for sample_pick_kernel, a row. */
typedef struct {
    double mass;  /* of the kept candidates */
    float maxl;   /* the largest logit */
    int kept;     /* candidates min-p keeps (all V without it) */
    int last;     /* the largest id among them */
} SampleRow;

/* The bin of a probability in [0, 1]: 0 for 1, one more every 1/16 octave below (prob_bin in
 * sampler.c): a larger probability never lands in a later bin. */
__device__ __forceinline__ int prob_bin(float p) {
    const unsigned b = (0x3F800000u - __float_as_uint(p)) >> 19;
    return b < SAMPLE_BINS ? (int)b : SAMPLE_BINS - 1;
}
/* A probability every one of bin b's is above (0 for the last bins, which reach down to 0). */
__device__ __forceinline__ float bin_floor(int b) {
    const unsigned below = (unsigned)(b + 1) << 19;
    return b < SAMPLE_BINS - 1 && below < 0x3F800000u ? __uint_as_float(0x3F800000u - below) : 0.0f;
}
__device__ __forceinline__ bool cand_kept(float x, float maxl, const SampleDraw &d) { return !(x - maxl < d.min_gap); }
__device__ __forceinline__ float cand_prob(float x, float maxl, const SampleDraw &d) {
    return sampler_exp((x - maxl) / d.temperature); /* the host's bits (sampler.h) */
}

/* A row of the step, a block a row (SAMPLE_THREADS). Greedy rows get their token here (ids[row]).
 * The others: their SampleRow, and, when top-k or top-p applies, their segment: the kept candidates
 * of the bins up to the one where the count from the top reaches top_k (it holds the whole top-k),
 * or else where a floor of the mass from the top (each bin's count times bin_floor) reaches top_p
 * of the mass (the true mass there is at least that: it holds the whole nucleus); in id order, each
 * as its probability's bits (the sort key: a non-negative float orders as its bits do) and its id.
 * seg_end[row] marks the segment's end (it starts at row * V), an empty one meaning: draw in id order.
 * whole: one row, sorted whole (all V keys, sample_launches): the keys past the segment are zeroed,
 * so the stable descending sort leaves the segment first, in its order.
 * (Each pass reads SAMPLE_LOADS logits a thread before using them, and the segment's places come
 * from one warp's scan a tile of SAMPLE_LOADS rounds, where thread 0 had added up the warps' counts
 * every round: the same tokens, and on an H200, bench_gpu 130m fp16 top-p (means of two rounds),
 * batch 1 2,348 -> 2,430 tok/s, batch 8 9,433 -> 9,617, batch 64 56,000 -> 56,836, 2.8b unchanged
 * (2026-12-03; this code, with load_round, re-measured later that day: README, "Later
 * (2026-12-03)"). One block a row is the limit that stays.) */
__global__ void __launch_bounds__(SAMPLE_THREADS, 1)
sample_prep_kernel(const float *__restrict__ logits, size_t ld, int V, const SampleDraw *__restrict__ draws,
                   int *__restrict__ ids, SampleRow *__restrict__ rows, unsigned *__restrict__ keys,
                   int *__restrict__ vals, int *__restrict__ seg_end, int whole) {
    launch_next();
    wait_prior();
    const int r = blockIdx.x;
    const float *row = logits + r * ld;
    const SampleDraw d = draws[r];
    float maxl;
    const int top = block_argmax<SAMPLE_THREADS>(row, V, &maxl);
    if (d.temperature == 0.0f) {
        if (threadIdx.x == 0) { ids[r] = top; seg_end[r] = r * V; }
        return;
    }
    const bool sorts = d.top_k > 0 || d.top_p < 1.0f;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __shared__ int count[SAMPLE_BINS];
    if (sorts)
        for (int b = threadIdx.x; b < SAMPLE_BINS; b += SAMPLE_THREADS) count[b] = 0;
    __syncthreads();
    double mass = 0;
    int kept = 0, last = -1;
    for (int i0 = 0; i0 < V; i0 += SAMPLE_LOADS * SAMPLE_THREADS) { /* whole warps a round: lanes of a bin add once */
        float x[SAMPLE_LOADS];
        load_round<SAMPLE_THREADS>(row, V, i0 + threadIdx.x, 0.0f, x);
#pragma unroll
        for (int k = 0; k < SAMPLE_LOADS; k++) { /* the ids in the order of a round a load: the same sums */
            const int i = i0 + k * SAMPLE_THREADS + threadIdx.x;
            int b = -1;
            if (i < V && cand_kept(x[k], maxl, d)) {
                const float p = cand_prob(x[k], maxl, d);
                mass += p;
                kept++;
                last = i;
                b = prob_bin(p);
            }
            if (!sorts) continue;
            const unsigned peers = __match_any_sync(0xffffffffu, b);
            if (b >= 0 && lane == __ffs(peers) - 1) atomicAdd(&count[b], __popc(peers));
        }
    }
    typedef cub::BlockReduce<double, SAMPLE_THREADS> SumD;
    typedef cub::BlockReduce<int, SAMPLE_THREADS> SumI;
    __shared__ union {
        typename SumD::TempStorage d;
        typename SumI::TempStorage i;
    } red;
    __shared__ double row_mass;
    __shared__ int row_kept, cut, seg_len, warp_at[SAMPLE_LOADS * SAMPLE_THREADS / 32];
    mass = SumD(red.d).Sum(mass);
    if (threadIdx.x == 0) row_mass = mass;
    __syncthreads();
    kept = SumI(red.i).Sum(kept);
    if (threadIdx.x == 0) row_kept = kept;
    __syncthreads();
    last = SumI(red.i).Reduce(last, cuda::maximum<int>());
    if (threadIdx.x == 0) {
        rows[r] = SampleRow{row_mass, maxl, row_kept, last};
        cut = -1; /* the last bin to keep; -1: none (no sort) */
        if (d.top_k > 0 && d.top_k < row_kept) {
            for (int b = 0, n = 0; b < SAMPLE_BINS; b++)
                if ((n += count[b]) >= d.top_k) { cut = b; break; }
        } else if (d.top_p < 1.0f) {
            const double target = d.top_p * row_mass;
            double floor_mass = 0;
            cut = SAMPLE_BINS - 1;
            for (int b = 0; b < SAMPLE_BINS; b++)
                if ((floor_mass += (double)count[b] * bin_floor(b)) >= target) { cut = b; break; }
        }
        seg_len = 0;
    }
    __syncthreads();
    if (cut < 0) {
        if (threadIdx.x == 0) seg_end[r] = r * V;
        return;
    }
    /* The segment in id order, a tile of SAMPLE_LOADS rounds at a time: each (round, warp) of the
     * tile counts its candidates; warp 0 turns the counts, in id order (round by round, warp by warp),
     * into places after the segment so far, SAMPLE_LOADS of them a lane. */
    constexpr int GROUPS = SAMPLE_LOADS * SAMPLE_THREADS / 32; /* (round, warp) pairs of a tile: 32 x SAMPLE_LOADS */
    const size_t seg = (size_t)r * V;
    for (int i0 = 0; i0 < V; i0 += SAMPLE_LOADS * SAMPLE_THREADS) {
        float x[SAMPLE_LOADS], p[SAMPLE_LOADS];
        unsigned ballot[SAMPLE_LOADS];
        load_round<SAMPLE_THREADS>(row, V, i0 + threadIdx.x, 0.0f, x);
#pragma unroll
        for (int k = 0; k < SAMPLE_LOADS; k++) {
            const int i = i0 + k * SAMPLE_THREADS + threadIdx.x;
            bool in = false;
            p[k] = 0.0f;
            if (i < V && cand_kept(x[k], maxl, d)) { p[k] = cand_prob(x[k], maxl, d); in = prob_bin(p[k]) <= cut; }
            ballot[k] = __ballot_sync(0xffffffffu, in);
            if (lane == 0) warp_at[k * (SAMPLE_THREADS / 32) + warp] = __popc(ballot[k]);
        }
        __syncthreads();
        if (warp == 0) {
            int n[GROUPS / 32], own = 0;
#pragma unroll
            for (int j = 0; j < GROUPS / 32; j++) { n[j] = warp_at[lane * (GROUPS / 32) + j]; own += n[j]; }
            int upto = own; /* inclusive sum over lanes 0..lane */
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const int t = __shfl_up_sync(0xffffffffu, upto, o);
                if (lane >= o) upto += t;
            }
            int at = seg_len + upto - own;
#pragma unroll
            for (int j = 0; j < GROUPS / 32; j++) { warp_at[lane * (GROUPS / 32) + j] = at; at += n[j]; }
            __syncwarp();
            if (lane == 31) seg_len = at;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < SAMPLE_LOADS; k++)
            if (ballot[k] >> lane & 1) {
                const size_t at = seg + warp_at[k * (SAMPLE_THREADS / 32) + warp] + __popc(ballot[k] & ((1u << lane) - 1));
                keys[at] = __float_as_uint(p[k]);
                vals[at] = i0 + k * SAMPLE_THREADS + threadIdx.x;
            }
        __syncthreads(); /* warp_at is read before the next tile writes it */
    }
    if (threadIdx.x == 0) seg_end[r] = r * V + seg_len;
    if (whole)
        for (int i = seg_len + threadIdx.x; i < V; i += SAMPLE_THREADS) keys[seg + i] = 0;
}

/* The first of the n candidates (prob(i): the i-th one's probability, in the order they are drawn
 * from) whose cumulative mass reaches target (strict: passes it), as sampler.c's loops find it; -1
 * when none does. *cum: the cumulative mass there. A block's scan a tile of PICK_THREADS x
 * PICK_ITEMS candidates, PICK_ITEMS consecutive ones a thread. */
template <typename Prob> __device__ int first_reaching(Prob prob, int n, double target, bool strict, double *cum) {
    typedef cub::BlockScan<double, PICK_THREADS> Scan;
    __shared__ typename Scan::TempStorage scan;
    __shared__ int hit;
    __shared__ double hit_cum, carry;
    __syncthreads(); /* the block is done with an earlier call's results */
    if (threadIdx.x == 0) carry = 0;
    for (int t0 = 0; t0 < n; t0 += PICK_THREADS * PICK_ITEMS) {
        const int i0 = t0 + threadIdx.x * PICK_ITEMS;
        double c[PICK_ITEMS];
#pragma unroll
        for (int j = 0; j < PICK_ITEMS; j++) c[j] = i0 + j < n ? (double)prob(i0 + j) : 0.0;
        Scan(scan).InclusiveSum(c, c);
        if (threadIdx.x == 0) hit = INT_MAX;
        __syncthreads();
        const double base = carry;
        int first = INT_MAX;
#pragma unroll
        for (int j = PICK_ITEMS - 1; j >= 0; j--) { /* the sums grow with j: the last one found is the first */
            c[j] += base;
            if (i0 + j < n && (strict ? target < c[j] : c[j] >= target)) first = i0 + j;
        }
        if (first != INT_MAX) atomicMin(&hit, first);
        __syncthreads();
#pragma unroll
        for (int j = 0; j < PICK_ITEMS; j++)
            if (i0 + j == hit) hit_cum = c[j];
        if (threadIdx.x == PICK_THREADS - 1) carry = c[PICK_ITEMS - 1];
        __syncthreads();
        if (hit != INT_MAX) {
            *cum = hit_cum;
            return hit;
        }
        __syncthreads(); /* every thread has read hit and carry before the next tile sets them */
    }
    return -1;
}

/* Each row's token from its SampleRow and its sorted segment (keys, vals: where the sort left them),
 * a block a row (PICK_THREADS): sampler_pick's steps 3, 6 and 7 on the candidates in order. */
__global__ void __launch_bounds__(PICK_THREADS, 1)
sample_pick_kernel(const float *__restrict__ logits, size_t ld, int V, const SampleDraw *__restrict__ draws,
                   const SampleRow *__restrict__ rows, const unsigned *__restrict__ keys, const int *__restrict__ vals,
                   const int *__restrict__ seg_end, int *__restrict__ ids) {
    launch_next();
    wait_prior();
    const int r = blockIdx.x;
    const SampleDraw d = draws[r];
    if (d.temperature == 0.0f) return;
    const SampleRow info = rows[r];
    const int n = seg_end[r] - r * V;
    double cum;
    if (n == 0) { /* no top-k or top-p: the kept candidates in id order */
        const float *row = logits + r * ld;
        auto prob = [&](int i) {
            const float x = row[i];
            return cand_kept(x, info.maxl, d) ? cand_prob(x, info.maxl, d) : 0.0f;
        };
        const int at = first_reaching(prob, V, d.u * info.mass, true, &cum);
        if (threadIdx.x == 0) ids[r] = at >= 0 ? at : info.last;
        return;
    }
    const unsigned *seg = keys + (size_t)r * V;
    auto prob = [&](int i) { return __uint_as_float(seg[i]); };
    int m = n;
    double mass = info.mass;
    if (d.top_k > 0 && d.top_k < info.kept) { /* 3. (the segment holds at least top_k) */
        m = d.top_k;
        double part = 0;
        for (int i = threadIdx.x; i < m; i += PICK_THREADS) part += prob(i);
        typedef cub::BlockReduce<double, PICK_THREADS> SumD;
        __shared__ typename SumD::TempStorage red;
        __shared__ double top_mass;
        part = SumD(red).Sum(part);
        if (threadIdx.x == 0) top_mass = part;
        __syncthreads();
        mass = top_mass;
    }
    if (d.top_p < 1.0f) { /* 6. */
        const int at = first_reaching(prob, m, d.top_p * mass, false, &cum);
        if (at >= 0) { m = at + 1; mass = cum; }
    }
    const int at = first_reaching(prob, m, d.u * mass, true, &cum); /* 7. */
    if (threadIdx.x == 0) ids[r] = vals[(size_t)r * V + (at >= 0 ? at : m - 1)];
}

#endif
