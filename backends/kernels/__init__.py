"""CUDA kernels (``*.cu``), their Python wrappers, and a CPU emulator to check them without a GPU.

loader.py     where kernels come from: cupy.RawModule on a GPU, the emulator elsewhere
emulator.py   g++ + cpu_emulation.h: every CUDA thread a fiber, for correctness tests
gemm.py       tiled SGEMM (NN, NT, TN, batched)
lora.py       fused LoRA linear, forward and backward pieces
nf4.py        NF4 dequantize, GEMV and dequantize-in-shared-memory GEMM
rowwise.py    softmax (causal), cross-entropy, layer_norm, rms_norm
"""
