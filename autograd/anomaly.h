// Placeholder for the lead's anomaly mode (issue 10, item 4): the switch --detect-anomaly sets.
#pragma once

namespace attnlab {

void set_anomaly_mode(bool on);
bool anomaly_mode();

}  // namespace attnlab
