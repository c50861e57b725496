{
  "targets": [
    {
      "target_name": "moma",
      "sources": [
        "<!@(ls -1 csrc/core/*.cc csrc/cpu/*.cc csrc/ops/*.cc csrc/napi/*.cc csrc/dist/tcp_store.cc csrc/dist/communicator.cc csrc/dist/gloo_backend.cc csrc/dist/nccl_backend.cc)",
        "cuda/absent.cc"
      ],
      "include_dirs": [
        "csrc",
        ".",
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags": ["-ffp-contract=off"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-ffp-contract=off"],
      "ldflags": ["-static-libstdc++", "-static-libgcc", "-Wl,--exclude-libs,ALL", "-Wl,-Bsymbolic"],
      "libraries": ["-ldl"]
    }
  ]
}
