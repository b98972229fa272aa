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

void Optimizer::set_decay_mask(std::vector<bool> decays) {
  if (decays.size() != params_.size())
    fail<ValueError>("Optimizer::set_decay_mask", "the mask has ", decays.size(), " entries for ", params_.size(),
                     " parameters");
  decay_ = std::move(decays);
}

void Optimizer::add_decay_mask_json(nlohmann::json& scalars) const {
  nlohmann::json ids = nlohmann::json::array();
  for (size_t i = 0; i < params_.size(); ++i)
    if (!decays(i)) ids.push_back(i);
  if (!ids.empty()) scalars["no_decay"] = ids;
}

std::vector<bool> Optimizer::decay_mask_from(const char* op, const nlohmann::json& scalars) const {
  std::vector<bool> mask(params_.size(), true);
  const auto it = scalars.find("no_decay");
  if (it == scalars.end()) return mask;
  if (!it->is_array()) fail<ValueError>(op, "no_decay must be a list of parameter indices, got ", it->dump());
  for (const auto& v : *it) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<uint64_t>() >= params_.size() || !mask[v.get<size_t>()])
      fail<ValueError>(op, "no_decay: ", v.dump(), " is not a distinct parameter index below ", params_.size());
    mask[v.get<size_t>()] = false;
  }
  return mask;
}

bool glob_match(const std::string& pattern, const std::string& name) {
  // Iterative wildcard matching with backtracking to the last '*': linear in practice.
  size_t p = 0, n = 0, star = std::string::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = n;
    } else if (p < pattern.size() && pattern[p] == name[n]) {
      ++p, ++n;
    } else if (star != std::string::npos) {
      p = star + 1;
      n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

std::vector<bool> no_decay_mask(const std::vector<std::pair<std::string, Tensor>>& named,
                                const std::vector<std::string>& patterns) {
  std::vector<bool> mask(named.size(), true);
  for (size_t i = 0; i < named.size(); ++i)
    for (const auto& pat : patterns)
      if (glob_match(pat, named[i].first)) mask[i] = false;
  return mask;
}

}  // namespace attnlab
