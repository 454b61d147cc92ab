{
  "targets": [
    {
      "target_name": "longcat",
      "sources": ["<!@(node scripts/gyp-sources.mjs)"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native"],
      "defines": [
        "NAPI_VERSION=8",
        "NDEBUG",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "LONGCAT_BUILD_SYSTEM=\"gyp\""
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++14", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fvisibility=hidden", "-fno-math-errno"],
      "libraries": ["-lpthread", "-ldl"],
      "ldflags": ["-Wl,-z,nodelete"]
    }
  ]
}
