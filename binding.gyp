{
  # Each SIMD kernel is its own static library so that only its translation unit is compiled
  # with the ISA flags it needs; the addon itself is plain x86-64 and picks a kernel by CPUID.
  "target_defaults": {
    "cflags_cc": ["-std=c++17", "-O3", "-pthread", "-fPIC", "-fexceptions", "-Wall", "-Wextra", "-fvisibility=hidden"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++1y", "-O2"],
    "cflags!": ["-O2"],
    "include_dirs": ["native"]
  },
  "targets": [
    {
      "target_name": "kmsdisk_xts_aesni",
      "type": "static_library",
      "sources": ["native/xts_aesni.cc", "native/gcm_aesni.cc"],
      "cflags_cc": ["-maes", "-mpclmul", "-msse4.1"]
    },
    {
      "target_name": "kmsdisk_xts_vaes",
      "type": "static_library",
      "sources": ["native/xts_vaes.cc"],
      "cflags_cc": ["-mvaes", "-mvpclmulqdq", "-mavx2", "-maes", "-mpclmul"]
    },
    {
      "target_name": "kmsdisk_xts_vaes512",
      "type": "static_library",
      "sources": ["native/xts_vaes512.cc"],
      # -Wno-uninitialized: GCC 12's avx512fintrin.h self-initialises _mm512_undefined_epi32()
      # and warns about it at every intrinsic (GCC bug 105593, fixed in GCC 13).
      "cflags_cc": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mvaes", "-mvpclmulqdq", "-maes", "-mpclmul", "-Wno-uninitialized"]
    },
    {
      "target_name": "kmsdisk_sha1_shani",
      "type": "static_library",
      "sources": ["native/sha1_shani.cc"],
      "cflags_cc": ["-msha", "-msse4.1"]
    },
    {
      "target_name": "kmsdisk",
      "dependencies": ["kmsdisk_xts_aesni", "kmsdisk_xts_vaes", "kmsdisk_xts_vaes512", "kmsdisk_sha1_shani"],
      "sources": [
        "native/addon.cc",
        "native/keyslot.cc",
        "native/secret_pages.cc",
        "native/dispatch.cc",
        "native/io.cc",
        "native/xts_portable.cc",
        "native/range_lock.cc",
        "native/nbd_lane.cc",
        "native/lane_binding.cc",
        "native/sha1.cc",
        "native/kms_crypto_binding.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "_GNU_SOURCE"]
    }
  ]
}
