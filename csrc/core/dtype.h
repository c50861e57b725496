// Element types of moma tensors. Values are stable (they cross the N-API bridge).
#pragma once
#include <cstddef>
#include <cstdint>

namespace moma {

enum class DType : int32_t { F32 = 0, BF16 = 1, I32 = 2, U8 = 3 };

inline size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::U8: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::I32: return "int32";
    case DType::U8: return "uint8";
  }
  return "unknown";
}

inline bool dtype_is_float(DType dt) { return dt == DType::F32 || dt == DType::BF16; }

}  // namespace moma
