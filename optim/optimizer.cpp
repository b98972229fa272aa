#include "optim/optimizer.h"

#include <set>

namespace attnlab {

nlohmann::json Optimizer::stateful_params_json(const std::vector<Tensor>& first_slot) {
  nlohmann::json ids = nlohmann::json::array();
  for (size_t i = 0; i < first_slot.size(); ++i)
    if (first_slot[i].defined()) ids.push_back(i);
  return ids;
}

std::vector<bool> Optimizer::stateful_params(const char* op, const StateDict& tensors, const nlohmann::json& scalars,
                                             std::initializer_list<const char*> slots) const {
  const auto it = scalars.is_object() ? scalars.find("stateful_params") : scalars.end();
  if (!scalars.is_object() || it == scalars.end() || !it->is_array())
    fail<ValueError>(op, "the state does not list which parameters have slot tensors (\"stateful_params\")");
  std::vector<bool> has(params_.size(), false);
  for (const auto& v : *it) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<uint64_t>() >= params_.size() || has[v.get<size_t>()])
      fail<ValueError>(op, "stateful_params: ", v.dump(), " is not a distinct parameter index below ", params_.size());
    has[v.get<size_t>()] = true;
  }
  std::set<std::string> expected;
  for (size_t i = 0; i < has.size(); ++i) {
    if (!has[i]) continue;
    for (const char* slot : slots) {
      std::string name = std::to_string(i) + "." + slot;
      if (!tensors.count(name))
        fail<ValueError>(op, "the state has no tensor '", name, "' although parameter ", i,
                         " had state when it was saved (resuming would silently restart it)");
      expected.insert(std::move(name));
    }
  }
  for (const auto& [name, t] : tensors)
    if (!expected.count(name))
      fail<ValueError>(op, "unexpected tensor '", name, "' (", describe(t), ") for ", params_.size(), " parameters");
  return has;
}

}  // namespace attnlab
