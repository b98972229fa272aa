#include "autograd/anomaly.h"

namespace attnlab {

namespace {
bool g_anomaly_mode = false;
}  // namespace

void set_anomaly_mode(bool on) { g_anomaly_mode = on; }
bool anomaly_mode() { return g_anomaly_mode; }

}  // namespace attnlab
