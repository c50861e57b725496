// Exports: the facts the JS side shares with the native code, stated here once.
//   abiVersion  the version of the binding interface (kAbiVersion below). Bump it whenever an
//               export is added or removed or changes its arguments or results, or a table below
//               changes; lib/native_tables.ts holds the number this JS expects, and lib/binding.ts
//               refuses (ERR_LOAD) a binary with another one.
//   constants   name -> code tables of every enum that crosses the bridge as a number (dtypes, op
//               codes, router functions, routing modes), built from the C++ enums; lib/binding.ts
//               checks lib/native_tables.ts against them at load.
//   formulas    the C++ statements of the sizes the host computes before queueing an op (Philox
//               blocks a random op consumes, expert capacities, the slot bound), so a test holds
//               lib/formulas.ts to them (test/binding_tables.test.ts).
#include <cmath>
#include <iterator>

#include "bridge.h"
#include "core/dtype.h"
#include "core/kernel_types.h"
#include "core/moe_types.h"
#include "core/philox.h"
#include "ops/moe.h"

namespace moma::napi {
namespace {

constexpr int kAbiVersion = 5;

using Info = const Napi::CallbackInfo&;

template <typename E>
struct Entry {
  const char* name;
  E value;
};

// Each table lists an enum's values in order from 0 to its last value (checked below), under the
// names the JS API uses (dtypes: dtype_name's). A new enumerator needs a row here and a new
// kAbiVersion.
constexpr DType kDTypes[] = {DType::F32, DType::BF16, DType::I32, DType::U8};
constexpr Entry<UnaryOp> kUnaryOps[] = {
    {"neg", UnaryOp::Neg},         {"exp", UnaryOp::Exp},     {"log", UnaryOp::Log},
    {"silu", UnaryOp::Silu},       {"sigmoid", UnaryOp::Sigmoid}, {"tanh", UnaryOp::Tanh},
    {"sqrt", UnaryOp::Sqrt},       {"rsqrt", UnaryOp::Rsqrt}, {"abs", UnaryOp::Abs},
    {"square", UnaryOp::Square},   {"scale", UnaryOp::Scale}, {"addScalar", UnaryOp::AddScalar},
    {"pow", UnaryOp::PowScalar}};
constexpr Entry<BinaryOp> kBinaryOps[] = {{"add", BinaryOp::Add},         {"sub", BinaryOp::Sub},
                                          {"mul", BinaryOp::Mul},         {"div", BinaryOp::Div},
                                          {"maximum", BinaryOp::Maximum}, {"minimum", BinaryOp::Minimum}};
constexpr Entry<ReduceOp> kReduceOps[] = {
    {"sum", ReduceOp::Sum}, {"mean", ReduceOp::Mean}, {"max", ReduceOp::Max}, {"argmax", ReduceOp::Argmax}};
constexpr Entry<RouterFn> kRouterFns[] = {{"sigmoid", RouterFn::Sigmoid}, {"softmax", RouterFn::Softmax}};
constexpr Entry<RoutingMode> kRoutingModes[] = {{"expert-choice", RoutingMode::ExpertChoice},
                                                {"token-choice", RoutingMode::TokenChoice},
                                                {"threshold", RoutingMode::Threshold}};

// True when entry i has code i for every i and the last entry is the enum's last value (the one
// the argument converters accept as the maximum), so a table covers its enum exactly.
template <typename E, size_t N>
constexpr bool covers_in_order(const Entry<E> (&table)[N], E last) {
  for (size_t i = 0; i < N; ++i)
    if (static_cast<size_t>(table[i].value) != i) return false;
  return static_cast<size_t>(last) == N - 1;
}
constexpr bool dtypes_in_order() {
  for (size_t i = 0; i < std::size(kDTypes); ++i)
    if (static_cast<size_t>(kDTypes[i]) != i) return false;
  return static_cast<size_t>(DType::U8) == std::size(kDTypes) - 1;
}
static_assert(dtypes_in_order(), "kDTypes must list DType in order");
static_assert(covers_in_order(kUnaryOps, UnaryOp::PowScalar), "kUnaryOps must list UnaryOp in order");
static_assert(covers_in_order(kBinaryOps, BinaryOp::Minimum), "kBinaryOps must list BinaryOp in order");
static_assert(covers_in_order(kReduceOps, ReduceOp::Argmax), "kReduceOps must list ReduceOp in order");
static_assert(covers_in_order(kRouterFns, RouterFn::Softmax), "kRouterFns must list RouterFn in order");
static_assert(covers_in_order(kRoutingModes, RoutingMode::Threshold), "kRoutingModes must list RoutingMode in order");

template <typename E, size_t N>
Napi::Object table_object(Napi::Env env, const Entry<E> (&table)[N]) {
  Napi::Object out = Napi::Object::New(env);
  for (const Entry<E>& e : table) out.Set(e.name, Napi::Number::New(env, static_cast<int32_t>(e.value)));
  return out;
}

int64_t count_arg(Info info, size_t i, const char* op, const char* name) {
  int64_t n = to_int(info[i], op, name);
  if (n < 0) fail("ERR_ARG", op, ": ", name, " must be >= 0, got ", n);
  return n;
}

int32_t experts_arg(Info info, size_t i, const char* op) {
  int64_t e = to_int(info[i], op, "experts");
  if (e < 1 || e > kMaxMoeExperts) fail("ERR_ARG", op, ": experts must be in [1, ", kMaxMoeExperts, "], got ", e);
  return static_cast<int32_t>(e);
}

double capacity_arg(Info info, size_t i, const char* op) {
  double c = to_number(info[i], op, "capacityFactor");
  if (!(c > 0) || !std::isfinite(c)) fail("ERR_ARG", op, ": capacityFactor must be a finite number > 0, got ", c);
  return c;
}

// philoxBlocks(n, normal): counter blocks a uniform (normal: false) or normal op over n values uses.
Napi::Value philox_blocks(Info info) {
  const char* op = "philox_blocks";
  uint64_t n = static_cast<uint64_t>(count_arg(info, 0, op, "n"));
  uint64_t blocks = to_bool(info[1], op, "normal") ? philox_blocks_normal(n) : philox_blocks_uniform(n);
  return Napi::Number::New(info.Env(), static_cast<double>(blocks));
}

// expertChoiceCapacity(n, experts, capacityFactor)
Napi::Value expert_choice_capacity_export(Info info) {
  const char* op = "expert_choice_capacity";
  return Napi::Number::New(info.Env(), static_cast<double>(expert_choice_capacity(
                                           count_arg(info, 0, op, "n"), experts_arg(info, 1, op), capacity_arg(info, 2, op))));
}

// tokenChoiceCapacity(n, experts, topK, capacityFactor)
Napi::Value token_choice_capacity_export(Info info) {
  const char* op = "token_choice_capacity";
  int64_t k = to_int(info[2], op, "topK");
  if (k < 1 || k > kMaxMoeExperts) fail("ERR_ARG", op, ": topK must be in [1, ", kMaxMoeExperts, "], got ", k);
  return Napi::Number::New(info.Env(), static_cast<double>(token_choice_capacity(
                                           count_arg(info, 0, op, "n"), experts_arg(info, 1, op),
                                           static_cast<int32_t>(k), capacity_arg(info, 3, op))));
}

// moeSlotBound(rows, experts[], groupOfModality[], mode, capacityFactor, topK)
Napi::Value moe_slot_bound_export(Info info) {
  const char* op = "moe_slot_bound";
  int64_t rows = count_arg(info, 0, op, "rows");
  MoeLayout L = ops::make_moe_layout(to_int_list(info[1], op, "layout.experts"),
                                     to_int_list(info[2], op, "layout.groupOfModality"), op);
  RoutingParams p;
  p.mode = to_enum<RoutingMode>(info[3], static_cast<int>(RoutingMode::Threshold), op, "mode");
  p.capacity = capacity_arg(info, 4, op);
  int64_t k = to_int(info[5], op, "topK");
  if (k < 1 || k > kMaxMoeExperts) fail("ERR_ARG", op, ": topK must be in [1, ", kMaxMoeExperts, "], got ", k);
  p.top_k = static_cast<int32_t>(k);
  return Napi::Number::New(info.Env(), static_cast<double>(moe_slot_bound(rows, L, p)));
}

}  // namespace

void register_constants_exports(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, kAbiVersion));
  Napi::Object constants = Napi::Object::New(env);
  Napi::Object dtypes = Napi::Object::New(env);
  for (DType dt : kDTypes) dtypes.Set(dtype_name(dt), Napi::Number::New(env, static_cast<int32_t>(dt)));
  constants.Set("dtype", dtypes);
  constants.Set("unaryOp", table_object(env, kUnaryOps));
  constants.Set("binaryOp", table_object(env, kBinaryOps));
  constants.Set("reduceOp", table_object(env, kReduceOps));
  constants.Set("routerFn", table_object(env, kRouterFns));
  constants.Set("routingMode", table_object(env, kRoutingModes));
  exports.Set("constants", constants);
  Napi::Object formulas = Napi::Object::New(env);
  formulas.Set("philoxBlocks", guarded(env, "philox_blocks", philox_blocks));
  formulas.Set("expertChoiceCapacity", guarded(env, "expert_choice_capacity", expert_choice_capacity_export));
  formulas.Set("tokenChoiceCapacity", guarded(env, "token_choice_capacity", token_choice_capacity_export));
  formulas.Set("moeSlotBound", guarded(env, "moe_slot_bound", moe_slot_bound_export));
  exports.Set("formulas", formulas);
}

}  // namespace moma::napi
