// Coded errors thrown into JS, for every binding of the addon: `code` is one of src/errors.ts's
// table, the JS class (TypeError, RangeError, Error) says what kind of mistake it is.
#pragma once
#include <string>

#include "napi.h"

namespace kmsdisk {

inline constexpr const char* kInvalid = "KMSDISK_ERR_INVALID_ARGUMENT";
inline constexpr const char* kRange = "KMSDISK_ERR_OUT_OF_RANGE";
inline constexpr const char* kBadKey = "KMSDISK_ERR_BAD_KEY";
inline constexpr const char* kWiped = "KMSDISK_ERR_KEY_WIPED";
inline constexpr const char* kNoAesni = "KMSDISK_ERR_NO_AESNI";
inline constexpr const char* kIo = "KMSDISK_ERR_IO";
inline constexpr const char* kInternal = "KMSDISK_ERR_INTERNAL";

enum class ErrKind { Type, Range, Plain };

inline Napi::Error MakeError(Napi::Env env, ErrKind kind, const char* code, const std::string& message) {
  Napi::Error err = kind == ErrKind::Type    ? Napi::TypeError::New(env, message)
                    : kind == ErrKind::Range ? Napi::RangeError::New(env, message)
                                             : Napi::Error::New(env, message);
  err.Value().Set("code", Napi::String::New(env, code));
  return err;
}

[[noreturn]] inline void Throw(Napi::Env env, ErrKind kind, const char* code, const std::string& message) {
  throw MakeError(env, kind, code, message);
}

}  // namespace kmsdisk
