// MomaException: the one native error type. `code` is a stable string (ERR_SHAPE, ERR_DTYPE,
// ERR_DEVICE, ERR_DISPOSED, ERR_RANGE, ERR_CUDA, ERR_OOM, ERR_ARG, ERR_INTERNAL) that the N-API
// bridge turns into a JS MomaError with the same code.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace moma {

class MomaException : public std::runtime_error {
 public:
  MomaException(std::string code, const std::string& message)
      : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

// Builds a message from stream pieces: fail("ERR_SHAPE", "matmul: ", a, " vs ", b).
template <typename... Parts>
[[noreturn]] void fail(const char* code, const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw MomaException(code, os.str());
}

}  // namespace moma
