// Training checkpoints: model weights, optimizer state, and the scalars a resumed run needs.
//
// On disk, for prefix "runs/a/ckpt" (all in runs/a/):
//   ckpt.json                        the sidecar: format_version, created, step, config, optimizer
//                                    (state_json), rng, extra (metrics...), and "files", naming the
//                                    files below by role with their byte size and zlib CRC-32
//   ckpt.step<N>.safetensors         model.state_dict() with its dotted names and nothing else, so
//                                    safetensors.torch.load_file gives PyTorch a plain state dict
//   ckpt.step<N>.optim.safetensors   optimizer->state_tensors() ("<param index>.<slot>"), when saved
//                                    with an optimizer
//   attached files                   other files the checkpoint depends on (a tokenizer), written by
//                                    the caller beside the sidecar (CheckpointState::attached)
// (".step<N>.alt" instead of ".step<N>" when step N is saved twice in a row: see below.)
//
// Crash safety. The sidecar is the commit record: a checkpoint is whatever the current ckpt.json
// names. save_checkpoint (1) writes the weight files under names the current sidecar does not
// reference, each atomically (temp file, fsync, rename, directory fsync); (2) only then writes the
// new sidecar atomically, the single rename that switches to the new checkpoint; (3) then deletes
// every other ckpt.step* file (the previous checkpoint and leftovers of interrupted saves). A run
// killed anywhere before (2)'s rename leaves the old sidecar naming old, untouched files; killed
// after it, the new sidecar names files that were durable before it was written. The recorded sizes
// and CRCs are checked on load, so a file changed behind our back (bit rot, a manual copy gone
// wrong) is an IOError, never a silently mixed state. One process per prefix at a time.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "core/rng.h"
#include "layers/module.h"
#include "optim/optimizer.h"

namespace attnlab {

struct CheckpointState {
  nlohmann::json config;     // the model's ModelConfig::to_json(), to rebuild it before loading
  int64_t step = 0;          // >= 0
  nlohmann::json optimizer;  // filled by load (the optimizer's state_json, or null); save takes it from the optimizer
  nlohmann::json rng;        // whatever the caller needs to resume its random streams (see generator_to_json)
  nlohmann::json extra;      // metrics snapshot and anything else the caller wants back
  std::string created;       // filled by load: UTC time of the save, "2025-01-31T12:00:00Z"
  // role -> plain file name beside the sidecar (e.g. {"tokenizer", "tokenizer.json"}): files the caller
  // wrote (atomically) before the save and does not change while a checkpoint names them. Save records
  // their size and CRC-32; every load checks them. Filled by load.
  std::map<std::string, std::string> attached;
};

// Writes a checkpoint as described above; `opt` may be null (weights only). Throws ValueError on
// bad arguments and IOError on file-system failure; the previous checkpoint stays loadable either way.
void save_checkpoint(const std::string& prefix, const Module& model, const Optimizer* opt, const CheckpointState& st);

// Reads and checks the sidecar only (e.g. to build the model from its config before load_checkpoint).
CheckpointState read_checkpoint_info(const std::string& prefix);

// The bytes of the file attached under `role`, checked against the sidecar's record: IOError naming the
// file when the sidecar records none, or it is missing or changed.
std::string read_attached_file(const std::string& prefix, const std::string& role);

// Loads weights into `model` (strict: the names and shapes must match exactly) and, when `opt` is
// given, the optimizer state (an IOError if the checkpoint has none). Every file, attached ones
// included, is read and checked against the sidecar before anything is modified; a missing,
// truncated or altered file is an IOError, weights that do not fit the model a ValueError/ShapeError,
// and either way the model is left unchanged (and the optimizer too, as long as its load_state
// validates before it writes).
CheckpointState load_checkpoint(const std::string& prefix, Module& model, Optimizer* opt);

// A generator's full state as {"seed", "stream", "offset"}, and back (ValueError on a bad object).
nlohmann::json generator_to_json(const Generator& g);
Generator generator_from_json(const nlohmann::json& j);

}  // namespace attnlab
