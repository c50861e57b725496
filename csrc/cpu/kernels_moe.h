// CPU kernel table of the mixture-of-experts ops (SPEC.md §2). cuda/kernels_moe.h declares the
// same functions with the same semantics and, but for the grouped GEMMs (float32 here, dtypes
// there), the same parameters, led by the launch context (core/launch.h). Arguments are
// validated by csrc/ops/moe.cc except data-dependent values (ids, offsets), which throw
// MomaException(ERR_RANGE) here. All integer arrays are int32; scores, gates and their gradients
// are float32; activations may be float32 or bf16 (`dt`; bf16 math is done in float32 and rounded
// once on store). Every result is deterministic: no reduction depends on thread timing.
//
// Names: T rows, d model width, E experts in all, G groups, W = max_g E_g, R the slot bound
// (moe_slot_bound), L the layout (core/moe_types.h).
#pragma once
#include <cstdint>
#include "../core/dtype.h"
#include "../core/launch.h"
#include "../core/moe_types.h"

namespace moma::cpu {

// Groups rows by modality. modality[t] in [-1, M) (-1 = padding); its group is
// L.group_of[modality[t]] (-1 for padding or an unrouted modality). Writes
//   row_group[t]  the group of row t or -1,
//   counts[g]     n_g, the rows of group g,
//   offsets[g]    sum of counts before g (G + 1 entries; offsets[G] = rows in any group),
//   perm[T]       the rows of group 0 in increasing order, then group 1, ..., then the rows of no
//                 group in increasing order (a stable partition).
// A modality outside [-1, M) throws ERR_RANGE ("moe_partition").
void moe_partition(const LaunchCtx& ctx, const int32_t* modality, int64_t T, const MoeLayout& L, int32_t* row_group,
                   int32_t* counts, int32_t* offsets, int32_t* perm);

// Router scores [T, E] from logits [T, E] (SPEC §2). For row t of group g (row_group[t] = g >= 0)
// and expert column j of g: z = logits[t, j] + noise(t, j) where, when `gumbel`, noise =
// (float)(-log(-log(u1)) + log(-log(u2))) computed in double with u1, u2 the open-interval
// Philox uniforms philox_uniform_open(seed, offset, 2 (t E + j)) and (..., 2 (t E + j) + 1)
// (2 T E uniforms: philox_blocks_uniform(2 T E) blocks), else 0; then
//   Sigmoid: s = 1 / (1 + exp(-z));  Softmax: s = softmax of z over the columns of g.
// A group with one expert scores 1 in its column (no router). Every other entry is 0 (other
// groups' columns, padding rows).
void moe_router_scores(const LaunchCtx& ctx, const float* logits, const int32_t* row_group, int64_t T,
                       const MoeLayout& L, RouterFn fn, bool gumbel, uint64_t seed, uint64_t offset, float* scores);

// Gradient of the logits from the gradient of the scores (the noise is a constant):
//   Sigmoid: dl = ds s (1 - s);  Softmax: dl_j = s_j (ds_j - sum_{k in g} s_k ds_k).
// Zero outside the row's group, for single-expert groups and for padding rows.
void moe_router_scores_backward(const LaunchCtx& ctx, const float* scores, const float* dscores,
                                const int32_t* row_group, int64_t T, const MoeLayout& L, RouterFn fn, float* dlogits);

// Routing: which rows each expert takes (SPEC §2), from scores [T, E] and a partition.
//   Expert choice: expert e of group g takes the expert_choice_capacity(n_g, E_g, c) rows of g
//     with the largest scores[t, e] (score_key order; ties to the smaller row).
//   Token choice: row t of g picks its min(top_k, E_g) local experts with the largest scores
//     (ties to the smaller expert); expert e then keeps the
//     min(#rows that picked it, token_choice_capacity(n_g, E_g, top_k, c)) of them with the
//     largest scores (ties to the smaller row).
//   Threshold (SPEC §4 causal mode): expert e of g takes every row t of g with
//     select[t, e] > 0.5 (NaN: not taken), with no capacity bound. select is float32 [T, E]
//     (one column per global expert, like scores) and read in this mode only (else nullptr).
//   Single-expert groups take every row of the group (every mode).
// Outputs (R = slot bound):
//   expert_offsets[E + 1]  segment e is slots [expert_offsets[e], expert_offsets[e + 1]), packed
//                          back to back in expert order; expert_offsets[0] = 0.
//   slot_row[R]            the row in each slot, increasing inside a segment; -1 past the end.
//   slot_gate[R]           scores[row, e] of the slot (1 for single-expert groups); 0 past the end.
//   row_slots[T, W]        (t, j): the slot where local expert j of t's group took t, else -1.
// If the slots would exceed R, throws ERR_INTERNAL ("moe_route: slot bound exceeded").
void moe_route(const LaunchCtx& ctx, const float* scores, const int32_t* row_group, const int32_t* offsets,
               const int32_t* perm, int64_t T, const MoeLayout& L, const RoutingParams& p, int64_t R,
               int32_t* expert_offsets, int32_t* slot_row, float* slot_gate, int32_t* row_slots,
               const float* select = nullptr);

// y[s, :] = scale[s] * x[slot_row[s], :] (scale == nullptr: 1) for s < R; zeros where
// slot_row[s] == -1. x is [T, d], y [R, d], dtype dt. A row outside [-1, T) throws ERR_RANGE.
// Dispatch (scale null) and the backward of combine to the expert outputs (scale = gates).
void moe_gather_rows(const LaunchCtx& ctx, DType dt, const void* x, const int32_t* slot_row, const float* scale,
                     int64_t T, int64_t R, int64_t d, void* y);

// y[t, :] = sum over j = 0..W-1 with s = row_slots[t, j] >= 0 of weight[s] * src[s, :]
// (weight == nullptr: 1), accumulated in float32 in increasing j from 0 (one rounding per multiply
// and per add, no fused multiply-add, so CPU and CUDA give the same bits). src [R, d], y [T, d].
// A slot outside [-1, R) throws ERR_RANGE. Combine (weight = gates) and the backward of dispatch.
void moe_combine(const LaunchCtx& ctx, DType dt, const void* src, const int32_t* row_slots, const float* weight,
                 int64_t T, int64_t W, int64_t R, int64_t d, void* y);

// Gradient of the scores from combine: dscores [T, E] is zero except, for each slot s of a
// routed expert e (E_g > 1) with row t = slot_row[s] >= 0, dscores[t, e] = sum_i out[s, i] dy[t, i]
// (accumulated in float32). out [R, d] (expert outputs before gating), dy [T, d], dtype dt.
void moe_gate_grad(const LaunchCtx& ctx, DType dt, const void* out, const void* dy, const int32_t* slot_row,
                   const int32_t* expert_offsets, int64_t T, int64_t R, int64_t d, const MoeLayout& L, float* dscores);

// Grouped GEMM over the segments of `offsets` (E + 1 entries, read from memory: they are
// data): for rows r in [offsets[e], offsets[e + 1]), y[r, :] = x[r, :] @ w[e] where w[e] is
// [K, N] (trans_w false; w is [E, K, N]) or w[e] stored [N, K] and transposed (trans_w true; w is
// [E, N, K]). Rows at or past offsets[E] (up to R) are written 0. x [R, K], y [R, N]; float32 here
// (the op layer widens bf16). Offsets must satisfy 0 = offsets[0] <= ... <= offsets[E] <= R,
// else ERR_RANGE.
void grouped_gemm(const float* x, const float* w, bool trans_w, const int32_t* offsets, int64_t E, int64_t R,
                  int64_t K, int64_t N, float* y);

// Fused epilogues of the expert FFN (grouped_epilogue.cc; the CUDA kernels fuse them into the GEMM):
//   grouped_gemm_scaled: y[r, :] = row_scale[r] * (x[r, :] @ w[e]) for r < offsets[E] (float32
//     product of the GEMM result, the gate scale before combine); rows past offsets[E] are 0.
//   grouped_gemm_swiglu: h1 = grouped_gemm(x, w1), h3 = grouped_gemm(x, w3), a = swiglu(h1, h3)
//     (float32); h1 / h3 are written when non-null. w1, w3 share trans_w and shape.
// x [R, K], w / w1 / w3 [E, K, N] (or [E, N, K] with trans_w), y / a / h1 / h3 [R, N], float32
// (the op layer widens bf16). Offsets as grouped_gemm, else ERR_RANGE.
void grouped_gemm_scaled(const float* x, const float* w, bool trans_w, const int32_t* offsets,
                         const float* row_scale, int64_t E, int64_t R, int64_t K, int64_t N, float* y);
void grouped_gemm_swiglu(const float* x, const float* w1, const float* w3, bool trans_w, const int32_t* offsets,
                         int64_t E, int64_t R, int64_t K, int64_t N, float* a, float* h1, float* h3);

// Weight gradient of grouped_gemm: dw[e] = x[seg e]^T @ dy[seg e] ([K, N]; zero for an empty
// segment). x [R, K], dy [R, N], dw [E, K, N], float32.
void grouped_gemm_wgrad(const float* x, const float* dy, const int32_t* offsets, int64_t E, int64_t R,
                        int64_t K, int64_t N, float* dw);

// SwiGLU activation over n elements: a = silu(h1) * h3, silu(x) = x / (1 + exp(-x)).
void swiglu(const LaunchCtx& ctx, DType dt, const void* h1, const void* h3, void* a, int64_t n);
// dh1 = da * h3 * sig(h1) (1 + h1 (1 - sig(h1))), dh3 = da * silu(h1).
void swiglu_backward(const LaunchCtx& ctx, DType dt, const void* h1, const void* h3, const void* da, void* dh1,
                     void* dh3, int64_t n);

// Routing statistics (cheap, for logging every step):
//   expert_stats[E, 2]  (rows taken, mean slot_gate over them or 0),
//   group_stats[G, 4]   (n_g, then the shares of g's rows taken by 0, by 1 and by 2+ experts;
//                        shares are 0 when n_g = 0).
void moe_routing_stats(const LaunchCtx& ctx, const int32_t* row_group, const int32_t* offsets,
                       const int32_t* expert_offsets, const float* slot_gate, const int32_t* row_slots, int64_t T,
                       const MoeLayout& L, float* expert_stats, float* group_stats);

// Mixture-of-depths selection (SPEC §3): the k rows with modality[t] >= 0 and the largest
// scores[t] (score_key order, ties to the smaller row), written to rows[0..k) in increasing row
// order. Fewer than k such rows throws ERR_RANGE ("mod_select").
void mod_select(const LaunchCtx& ctx, const float* scores, const int32_t* modality, int64_t T, int64_t k,
                int32_t* rows);

// Segment starts of a row subset (MoD: the selected rows keep their documents): starts[j] is the
// smallest j' <= j with seg[j'] == seg[j''] for every j'' in [j', j] (runs of equal ids).
void segment_starts(const LaunchCtx& ctx, const int32_t* seg, int64_t n, int32_t* starts);

}  // namespace moma::cpu
