#pragma once
#include "napi.h"

namespace kmsdisk {
// Registers NativeGcmKey, NativeHmacSha1 and gcmSupported on the addon's exports.
void InitKmsCryptoBindings(Napi::Env env, Napi::Object exports);
}  // namespace kmsdisk
