// Type checks on JSON config fields before nlohmann converts them. Its get<int64_t>() of a float is a
// C cast: 16.5 truncates, and 1e300 (or an integer literal beyond 2^64, which parses as a float) is
// undefined behaviour. fuzz/ found both through every config parser.
#pragma once
#include <initializer_list>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace attnlab {

// ValueError "<op>: '<key>' must be an integer, got <value>" unless each of `keys` that j has is a
// JSON integer. A j that is not an object is left for the caller to refuse.
inline void require_integers(const nlohmann::json& j, const char* op, std::initializer_list<const char*> keys) {
  if (!j.is_object()) return;
  for (const char* key : keys)
    if (auto it = j.find(key); it != j.end() && !it->is_number_integer())
      fail<ValueError>(op, "'", key, "' must be an integer, got ", it->dump());
}

}  // namespace attnlab
