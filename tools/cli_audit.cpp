// attnlab audit --config FILE.json [--layer NAME] [--json OUT] [--entries K] [--all] [--eps E]
// The command lives in tools/audit_targets.cpp (audit_main), where the tests call it directly.
#include <unistd.h>

#include <iostream>

#include "tools/audit_targets.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return attnlab::audit_main(args, std::cout, std::cerr, isatty(STDOUT_FILENO) != 0);
}
