// The C interface between moma's core and the gloo plugin (libmoma_gloo.so, gloo_plugin.cc).
// The plugin links gloo (and through it libstdc++ as a shared library); the core links libstdc++
// statically and dlopens the plugin only when CPU collectives are asked for, so no C++ object and
// no exception crosses this line: plain C types, errors as text in a caller's buffer.
//
// Every function that can fail returns 0 on success and nonzero on failure, with a message in
// `err` (NUL-terminated, at most err_len bytes). Buffers are host memory.
#pragma once
#include <stddef.h>
#include <stdint.h>

extern "C" {

// Bumped whenever this interface changes; the core refuses a plugin of another version.
#define MOMA_GLOO_ABI_VERSION 1

// Element types the plugin reduces (bf16 is widened to float32 by the core before it gets here).
enum MomaGlooDType { MOMA_GLOO_F32 = 0, MOMA_GLOO_I32 = 1 };
enum MomaGlooOp { MOMA_GLOO_SUM = 0, MOMA_GLOO_MAX = 1 };

// The rendezvous store, served by the core's TcpStoreClient (gloo::rendezvous::Store's calls).
// `get` hands the value to `sink` (valid during the call only).
typedef struct MomaGlooStore {
  void* self;
  int (*set)(void* self, const char* key, const void* data, size_t n, char* err, size_t err_len);
  int (*get)(void* self, const char* key, void* sink_ctx, void (*sink)(void* sink_ctx, const void* data, size_t n),
             char* err, size_t err_len);
  int (*wait)(void* self, const char* const* keys, size_t n_keys, int64_t timeout_ms, char* err, size_t err_len);
} MomaGlooStore;

typedef struct MomaGlooContext MomaGlooContext;

int moma_gloo_abi_version(void);

// Connects rank `rank` of `size` to every other rank (gloo's full mesh over tcp): this rank listens
// on `hostname` (an address the others can reach) and exchanges addresses through `store`.
// `timeout_ms` bounds the connection and every later collective.
MomaGlooContext* moma_gloo_connect(int rank, int size, const char* hostname, int64_t timeout_ms,
                                   const MomaGlooStore* store, char* err, size_t err_len);
void moma_gloo_close(MomaGlooContext* ctx);

// out[i] = op over ranks of in[i] (in == out allowed).
int moma_gloo_allreduce(MomaGlooContext* ctx, const void* in, void* out, size_t count, int dtype, int op, char* err,
                        size_t err_len);
// in holds size chunks of `count`; out = op over ranks of chunk `rank`.
int moma_gloo_reduce_scatter(MomaGlooContext* ctx, const void* in, void* out, size_t count, int dtype, int op,
                             char* err, size_t err_len);
// Byte-wise: in holds `bytes`, out holds size * bytes, chunk r from rank r.
int moma_gloo_allgather(MomaGlooContext* ctx, const void* in, void* out, size_t bytes, char* err, size_t err_len);
// Byte-wise all-to-all-v: counts and offsets in bytes, one per rank.
int moma_gloo_alltoallv(MomaGlooContext* ctx, const void* in, const int64_t* send_bytes, const int64_t* send_offsets,
                        void* out, const int64_t* recv_bytes, const int64_t* recv_offsets, char* err, size_t err_len);
// Byte-wise: out = root's in (in is read on the root only).
int moma_gloo_broadcast(MomaGlooContext* ctx, const void* in, void* out, size_t bytes, int root, char* err,
                        size_t err_len);
int moma_gloo_barrier(MomaGlooContext* ctx, char* err, size_t err_len);
}
