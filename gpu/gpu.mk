# gpu/gpu.mk — the CUDA build. Included at the END of the main Makefile
# (`-include gpu/gpu.mk`), so ENGINE_SRC, TUI_SRC, ALL_CFLAGS, LDLIBS, BUILD are set.
#
#   make cuda        krona-studio-cuda, build/cuda/tests/test_cuda_ops and (when
#                    bench/bench_train.c exists) build/cuda/bench/bench_train;
#                    the engine is compiled with -DKRONA_CUDA into build/cuda/
#   make test-cuda   build, then compare every CUDA op with the CPU backend (needs a GPU)
#   make cuda-emu    run the CUDA backend's host code and kernels on the CPU
#                    (tests/gpu/emu): checks its logic on machines without a GPU
#   make clean-cuda
# CUDA 13 at /usr/local/cuda; SASS for sm_90 (H100/H200) plus compute_90 PTX
# that the driver JIT-compiles for newer GPUs. Override CUDA_ARCH for others,
# e.g. CUDA_ARCH="-gencode arch=compute_80,code=sm_80" for A100.

CUDA_HOME  ?= /usr/local/cuda
NVCC       ?= $(CUDA_HOME)/bin/nvcc
CUDA_ARCH  ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVCCFLAGS  ?= -O3 -std=c++17 -lineinfo -Xcompiler -Wall,-Wextra,-Wno-unused-parameter
CUDA_LIBS  := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++
CUDA_BUILD := $(BUILD)/cuda

GPU_SRC         := $(wildcard gpu/*.cu)
GPU_OBJ         := $(GPU_SRC:%.cu=$(CUDA_BUILD)/%.o)
CUDA_ENGINE_OBJ := $(ENGINE_SRC:%.c=$(CUDA_BUILD)/%.o)
CUDA_TUI_OBJ    := $(TUI_SRC:%.c=$(CUDA_BUILD)/%.o) $(CLI_SRC:%.c=$(CUDA_BUILD)/%.o)
CUDA_LIB_OBJ    := $(CUDA_ENGINE_OBJ) $(GPU_OBJ) $(CUDA_BUILD)/cli/cli.o
CUDA_BENCH      := $(if $(wildcard bench/bench_train.c),$(CUDA_BUILD)/bench/bench_train)

.PHONY: cuda test-cuda cuda-emu clean-cuda
cuda: krona-studio-cuda $(CUDA_BUILD)/tests/test_cuda_ops $(CUDA_BENCH)

krona-studio-cuda: $(CUDA_ENGINE_OBJ) $(CUDA_TUI_OBJ) $(GPU_OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LIBS)

$(CUDA_BUILD)/gpu/%.o: gpu/%.cu $(wildcard gpu/*.h) src/core/backend.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) $(CUDA_ARCH) -Isrc -Igpu -c -o $@ $<

# engine and TUI with the CUDA backend compiled in (main.c: #ifdef KRONA_CUDA)
$(CUDA_BUILD)/%.o: %.c $(wildcard src/*/*.h tui/*.h cli/*.h gpu/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -DKRONA_CUDA -Igpu -c -o $@ $<

$(CUDA_BUILD)/tests/test_cuda_ops: tests/gpu/test_cuda_ops.c $(CUDA_LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -DKRONA_CUDA -Igpu -o $@ $^ $(LDLIBS) $(CUDA_LIBS)

$(CUDA_BUILD)/bench/%: bench/%.c $(CUDA_LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -DKRONA_CUDA -Igpu -o $@ $^ $(LDLIBS) $(CUDA_LIBS)

test-cuda: $(CUDA_BUILD)/tests/test_cuda_ops
	./$(CUDA_BUILD)/tests/test_cuda_ops

# CPU emulation of the CUDA backend (no GPU needed; slow, so small shapes)
CUDA_EMU := $(CUDA_BUILD)/emu
# small grids and workspaces so grid-stride loops, attention row tiles, conv
# image chunks and kron row chunks all take more than one pass
CUDA_EMU_DEFS := -DGRID_CAP=64 -DATTN_TILE_BYTES=65536 -DCONV_WS_BYTES=65536 -DKRON_WS_BYTES=65536
$(CUDA_EMU)/backend_cuda_emu.cpp: gpu/backend_cuda.cu tests/gpu/emu/translate.py
	@mkdir -p $(dir $@)
	python3 tests/gpu/emu/translate.py $< $@
$(CUDA_EMU)/backend_cuda_emu.o: $(CUDA_EMU)/backend_cuda_emu.cpp tests/gpu/emu/emu_cuda.h gpu/backend_cuda.h src/core/backend.h
	$(CXX) -std=c++17 -O2 -g $(CUDA_EMU_DEFS) -Isrc -Igpu -Itests/gpu/emu -c -o $@ $<
$(CUDA_EMU)/test_cuda_ops: tests/gpu/test_cuda_ops.c $(LIBKRONA) $(CUDA_EMU)/backend_cuda_emu.o
	$(CC) $(ALL_CFLAGS) -Igpu -o $@ $^ $(LDLIBS) -lstdc++
cuda-emu: $(CUDA_EMU)/test_cuda_ops
	OMP_NUM_THREADS=1 ./$(CUDA_EMU)/test_cuda_ops --small

clean-cuda:
	rm -rf $(CUDA_BUILD) krona-studio-cuda
