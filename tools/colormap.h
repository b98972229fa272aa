// Colormaps for heatmaps, as small tables of anchor colours interpolated linearly in sRGB.
//   viridis   perceptually uniform, dark purple -> yellow (matplotlib's default; van der Walt and
//             Smith, CC0): 33 of its 256 entries, which interpolate to within 1/255 of the rest
//   gray      black -> white
//   coolwarm  diverging blue -> light grey -> red (Moreland 2009), for signed data centred on 0
#pragma once
#include <string>
#include <vector>

#include "tools/png.h"

namespace attnlab {

enum class Colormap { viridis, gray, coolwarm };

Colormap parse_colormap(const std::string& name);  // ValueError listing the known names
std::vector<std::string> colormap_names();
bool is_diverging(Colormap c);

// t in [0, 1] (clamped); NaN gives a neutral grey-pink so holes stand out.
RGB colormap(Colormap c, double t);

}  // namespace attnlab
