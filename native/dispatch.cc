// Run-time kernel selection from CPUID. Compiled without ISA flags, so nothing here can execute
// an instruction the CPU lacks; the kernels' translation units are entered only when supported.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kms_crypto.h"
#include "xts.h"

namespace kmsdisk {

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    __builtin_cpu_init();
    CpuFeatures c{};
    c.aesni = __builtin_cpu_supports("aes");
    c.pclmul = __builtin_cpu_supports("pclmul");
    c.sse41 = __builtin_cpu_supports("sse4.1");
    c.vaes = __builtin_cpu_supports("vaes");
    c.vpclmulqdq = __builtin_cpu_supports("vpclmulqdq");
    // "avx2" also requires the OS to save ymm state (XCR0), checked by libgcc.
    c.avx2 = __builtin_cpu_supports("avx2");
    // The avx512 checks include the OS saving zmm and opmask state (XCR0), as libgcc tests it.
    c.avx512f = __builtin_cpu_supports("avx512f");
    c.avx512bw = __builtin_cpu_supports("avx512bw");
    c.avx512vl = __builtin_cpu_supports("avx512vl");
    c.sha = __builtin_cpu_supports("sha");
    // Testing aid: KMSDISK_CPU_MASK=noaesni|novaes|noavx512 pretends the CPU lacks those
    // features, so each fallback and the "unsupported kernel" errors can be exercised on any machine.
    if (const char* mask = std::getenv("KMSDISK_CPU_MASK")) {
      if (std::strstr(mask, "noaesni")) c.aesni = c.vaes = false;
      if (std::strstr(mask, "novaes")) c.vaes = false;
      if (std::strstr(mask, "noavx512")) c.avx512f = c.avx512bw = c.avx512vl = false;
    }
    return c;
  }();
  return f;
}

bool kernel_supported(Kernel k) {
  const CpuFeatures& f = cpu_features();
  switch (k) {
    case Kernel::Portable:
      return true;
    case Kernel::AesNi:
      return f.aesni && f.pclmul && f.sse41;
    case Kernel::Vaes:
      return f.aesni && f.pclmul && f.sse41 && f.vaes && f.vpclmulqdq && f.avx2;
    case Kernel::Vaes512:
      return kernel_supported(Kernel::Vaes) && f.avx512f && f.avx512bw && f.avx512vl;
  }
  return false;
}

Kernel best_kernel() {
  if (kernel_supported(Kernel::Vaes512)) return Kernel::Vaes512;
  if (kernel_supported(Kernel::Vaes)) return Kernel::Vaes;
  if (kernel_supported(Kernel::AesNi)) return Kernel::AesNi;
  return Kernel::Portable;
}

namespace {
std::atomic<int> g_active{-1};
}

Kernel active_kernel() {
  int k = g_active.load(std::memory_order_relaxed);
  if (k < 0) {
    k = static_cast<int>(best_kernel());
    g_active.store(k, std::memory_order_relaxed);
  }
  return static_cast<Kernel>(k);
}

void set_active_kernel(Kernel k) { g_active.store(static_cast<int>(k), std::memory_order_relaxed); }

const char* kernel_name(Kernel k) {
  switch (k) {
    case Kernel::Portable:
      return "portable";
    case Kernel::AesNi:
      return "aesni";
    case Kernel::Vaes:
      return "vaes";
    case Kernel::Vaes512:
      return "vaes512";
  }
  return "unknown";
}

void xts_units(Kernel k, const XtsKeySchedule* ks, const uint8_t* src, uint8_t* dst, size_t unitBytes, size_t units,
               uint64_t firstTweak, uint64_t step, bool encrypt) {
  switch (k) {
    case Kernel::Vaes512:
      return xts_units_vaes512(ks, src, dst, unitBytes, units, firstTweak, step, encrypt);
    case Kernel::Vaes:
      return xts_units_vaes(ks, src, dst, unitBytes, units, firstTweak, step, encrypt);
    case Kernel::AesNi:
      return xts_units_aesni(ks, src, dst, unitBytes, units, firstTweak, step, encrypt);
    case Kernel::Portable:
      return xts_units_portable(ks, src, dst, unitBytes, units, firstTweak, step, encrypt);
  }
}

void xts_raw(Kernel k, const XtsKeySchedule* ks, const uint8_t tweak[16], const uint8_t* src, uint8_t* dst,
             size_t len, bool encrypt) {
  switch (k) {
    case Kernel::Vaes512:
      return xts_raw_vaes512(ks, tweak, src, dst, len, encrypt);
    case Kernel::Vaes:
      return xts_raw_vaes(ks, tweak, src, dst, len, encrypt);
    case Kernel::AesNi:
      return xts_raw_aesni(ks, tweak, src, dst, len, encrypt);
    case Kernel::Portable:
      return xts_raw_portable(ks, tweak, src, dst, len, encrypt);
  }
}

void xts_expand(Kernel k, const uint8_t key[64], XtsKeySchedule* ks) {
  if (k == Kernel::Portable)
    xts_expand_portable(key, ks);
  else
    xts_expand_aesni(key, ks);  // VAES (either width) implies AES-NI
}

// The GCM kernel (gcm_aesni.cc) needs the same instructions as the AES-NI XTS kernel.
bool gcm_supported() { return kernel_supported(Kernel::AesNi); }

}  // namespace kmsdisk
