// One exception hierarchy for everything attnlab throws on bad input or misuse.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace attnlab {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class ShapeError : public Error { public: using Error::Error; };
class DTypeError : public Error { public: using Error::Error; };
class DeviceError : public Error { public: using Error::Error; };
class IndexError : public Error { public: using Error::Error; };
class ValueError : public Error { public: using Error::Error; };
class AutogradError : public Error { public: using Error::Error; };
class IOError : public Error { public: using Error::Error; };
// A tensor larger than the machine's memory (or than 64-bit sizes), refused before any allocation.
class MemoryError : public Error { public: using Error::Error; };

// Concatenates anything streamable into one message.
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// Throws E with the op name in front: "matmul: inner dimensions differ ...".
template <class E, class... Args>
[[noreturn]] void fail(const char* op, const Args&... args) {
  throw E(cat(op, ": ", args...));
}

}  // namespace attnlab
