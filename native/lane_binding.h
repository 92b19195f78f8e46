#pragma once
#include "napi.h"

namespace kmsdisk {
// Registers NativeRangeLock, NativeVolumeCore and NativeLane on the addon's exports.
void InitLaneBindings(Napi::Env env, Napi::Object exports);
}  // namespace kmsdisk
