// Coded errors thrown into JS: `code` is one of src/errors.ts's table.
#pragma once
#include <string>

#include "napi.h"

namespace kmsdisk {

[[noreturn]] inline void ThrowCoded(Napi::Env env, const char* code, const std::string& message, bool type = false) {
  Napi::Error err = type ? Napi::TypeError::New(env, message) : Napi::Error::New(env, message);
  err.Value().Set("code", Napi::String::New(env, code));
  throw err;
}

}  // namespace kmsdisk
