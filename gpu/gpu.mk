# gpu/gpu.mk — the CUDA backend, a plugin. Included at the END of the main
# Makefile (`-include gpu/gpu.mk`), so LIBKRONA, ALL_CFLAGS, LDLIBS, BUILD are set.
#
# krona-backend-cuda.so is built beside krona-studio by `make` whenever nvcc is
# found ($(CUDA_HOME)/bin/nvcc or on PATH); the one krona-studio binary loads it
# at run time (src/core/backend.c) for --device cuda|auto. Without nvcc, `make`
# builds the CPU-only program and says so once.
#
#   make cuda        the plugin, build/cuda/tests/test_cuda_ops and build/cuda/bench/bench_train
#   make test-cuda   compare every CUDA op with the CPU backend (needs a GPU)
#   make cuda-emu    the same comparison with the plugin's kernels and host code
#                    run on the CPU (tests/gpu/emu): its logic, on machines without a GPU;
#                    again with the threads in another order (a missing barrier shows);
#                    then the convolutions again through the emulated cuDNN
#   make cuda-emu-train  three training steps on the emulated backend against the CPU
#   make cuda-emu-sample a 3-step sample on the emulated backend (UNet pass replayed) against the CPU
#   make test-cuda-emu   the three above (part of `make check`: no GPU or nvcc needed, ~2 minutes)
#   make cuda-emu-asan   cuda-emu, cuda-emu-train and -sample under ASan + UBSan, blocks exact,
#                    dynamic shared memory past a launch's bytes poisoned (~6 minutes)
#   make clean-cuda
# CUDA 13 at /usr/local/cuda; SASS for sm_90 (H100/H200) plus compute_90 PTX
# that the driver JIT-compiles for newer GPUs. Override CUDA_ARCH for others,
# e.g. CUDA_ARCH="-gencode arch=compute_80,code=sm_80" for A100.

CUDA_HOME  ?= /usr/local/cuda
NVCC       ?= $(firstword $(wildcard $(CUDA_HOME)/bin/nvcc) $(shell command -v nvcc 2>/dev/null))
CUDA_ARCH  ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVCCFLAGS  ?= -O3 -std=c++17 -lineinfo -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-fPIC
# cuBLAS and the runtime from the toolkit's folder; LD_LIBRARY_PATH may point elsewhere
CUDA_LIBS  := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart
CUDA_BUILD := $(BUILD)/cuda
CUDA_PLUGIN := krona-backend-cuda.so

.PHONY: cuda test-cuda cuda-emu cuda-emu-asan cuda-emu-train cuda-emu-sample test-cuda-emu clean-cuda
ifneq ($(NVCC),)
all: $(CUDA_PLUGIN)
else
all: no-nvcc-note
.PHONY: no-nvcc-note
no-nvcc-note: krona-studio
	@echo "note: nvcc not found: krona-studio is CPU-only (install the CUDA Toolkit and run make for $(CUDA_PLUGIN))"
endif

cuda: $(CUDA_PLUGIN) $(CUDA_BUILD)/tests/test_cuda_ops $(CUDA_BUILD)/bench/bench_train

$(CUDA_BUILD)/gpu/%.o: gpu/%.cu src/core/backend.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) $(CUDA_ARCH) -Isrc -c -o $@ $<

# exports only krona_backend_plugin (see src/core/backend.h)
$(CUDA_PLUGIN): $(CUDA_BUILD)/gpu/backend_cuda.o
	$(CXX) -shared -o $@ $^ $(CUDA_LIBS)

# the GPU programs are ordinary engine programs: they open the plugin by name
$(CUDA_BUILD)/tests/test_cuda_ops: tests/gpu/test_cuda_ops.c $(LIBKRONA)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LINK_KRONA) $(LDLIBS)

$(CUDA_BUILD)/bench/%: bench/%.c $(LIBKRONA)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LINK_KRONA) $(LDLIBS)

# plugin folder: test_cuda_ops finds it beside itself only when installed, so say where
test-cuda: $(CUDA_PLUGIN) $(CUDA_BUILD)/tests/test_cuda_ops
	KRONA_BACKEND_PATH=$(CURDIR) ./$(CUDA_BUILD)/tests/test_cuda_ops

# CPU emulation of the CUDA backend (no GPU needed; small shapes: its GEMMs are naive loops),
# built as the same plugin and loaded through the same registry
CUDA_EMU := $(CUDA_BUILD)/emu
# small grids and workspaces so grid-stride loops, attention row tiles, conv
# image chunks and kron row chunks all take more than one pass
CUDA_EMU_DEFS := -DGRID_CAP=64 -DATTN_TILE_BYTES=65536 -DCONV_WS_BYTES=65536 -DKRON_WS_BYTES=65536
$(CUDA_EMU)/backend_cuda_emu.cpp: gpu/backend_cuda.cu tests/gpu/emu/translate.py
	@mkdir -p $(dir $@)
	python3 tests/gpu/emu/translate.py $< $@
$(CUDA_EMU)/$(CUDA_PLUGIN): $(CUDA_EMU)/backend_cuda_emu.cpp tests/gpu/emu/emu_cuda.h tests/gpu/emu/emu_cudnn.h src/core/backend.h
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -O2 -g -fPIC -shared $(CUDA_EMU_DEFS) -Isrc -Itests/gpu/emu -o $@ $<
$(CUDA_EMU)/test_cuda_ops: tests/gpu/test_cuda_ops.c $(LIBKRONA)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LINK_KRONA) $(LDLIBS)
# the same under AddressSanitizer + UBSan (plugin, test and engine), every block
# exactly its size (KRONA_CUDA_EXACT_ALLOC), so a kernel that reads or writes
# past a tensor stops with a report: `make cuda-emu-asan`
CUDA_EMU_SAN := $(CUDA_EMU)/san
$(CUDA_EMU_SAN)/$(CUDA_PLUGIN): $(CUDA_EMU)/backend_cuda_emu.cpp tests/gpu/emu/emu_cuda.h tests/gpu/emu/emu_cudnn.h src/core/backend.h
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 $(SAN_FLAGS) -fPIC -shared $(CUDA_EMU_DEFS) -DKRONA_CUDA_EXACT_ALLOC -Isrc -Itests/gpu/emu -o $@ $<
$(CUDA_EMU_SAN)/test_cuda_ops: tests/gpu/test_cuda_ops.c $(SAN_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) -o $@ $< -Wl,--whole-archive $(SAN_LIB) -Wl,--no-whole-archive $(LDLIBS)
# and the program, for the emulated training and sample (KRONA_HOME: it finds models/tiny)
$(CUDA_EMU_SAN)/krona-studio: $(CLI_SRC:%.c=$(SAN_BUILD)/%.o) $(TUI_SRC:%.c=$(SAN_BUILD)/%.o) $(SAN_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) -o $@ $(filter %.o,$^) -Wl,--whole-archive $(SAN_LIB) -Wl,--no-whole-archive $(LDLIBS)
EMU_SAN_ENV := ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
cuda-emu-asan: $(CUDA_EMU_SAN)/test_cuda_ops $(CUDA_EMU_SAN)/$(CUDA_PLUGIN) $(CUDA_EMU_SAN)/krona-studio
	$(EMU_SAN_ENV) sh tests/gpu/emu/ops-shards.sh $(CUDA_EMU_SAN) $(EMU_JOBS) $(call EMU_QUIET,san-ops,$(EMU_OPS_LINES))
	$(EMU_SAN_ENV) KRONA_CUDA_CONV=cudnn ONLY=conv2d sh tests/gpu/emu/ops-shards.sh $(CUDA_EMU_SAN) $(EMU_JOBS) \
	  $(call EMU_QUIET,san-cudnn,$(EMU_OPS_LINES))
	$(EMU_SAN_ENV) KRONA_HOME=$(CURDIR) KS=$(CUDA_EMU_SAN)/krona-studio BACKEND_DIR=$(CUDA_EMU_SAN) \
	  OUT=$(CUDA_EMU_SAN)/train-e2e sh tests/gpu/emu/train-e2e.sh $(call EMU_QUIET,san-train)
	$(EMU_SAN_ENV) KRONA_HOME=$(CURDIR) KS=$(CUDA_EMU_SAN)/krona-studio BACKEND_DIR=$(CUDA_EMU_SAN) \
	  OUT=$(CUDA_EMU_SAN)/sample-e2e sh tests/gpu/emu/sample-e2e.sh $(call EMU_QUIET,san-sample)

# the emulator's own stream capture and graphs first (seconds), then the
# cases split over EMU_JOBS processes (default: every CPU)
$(CUDA_EMU)/test_emu_graph: tests/gpu/emu/test_emu_graph.cpp tests/gpu/emu/emu_cuda.h
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -O1 -Wall -Wextra -Werror -Itests/gpu/emu -o $@ $<
cuda-emu: $(CUDA_EMU)/test_emu_graph $(CUDA_EMU)/test_cuda_ops $(CUDA_EMU)/$(CUDA_PLUGIN)
	./$(CUDA_EMU)/test_emu_graph > $(CUDA_EMU)/test_emu_graph.log 2>&1 || { cat $(CUDA_EMU)/test_emu_graph.log; exit 1; }
	grep -E "^(PASS|FAIL): stream capture" $(CUDA_EMU)/test_emu_graph.log
	sh tests/gpu/emu/ops-shards.sh $(CUDA_EMU) $(EMU_JOBS)
	@echo "again in another order: warp by warp, blocks, warps and lanes from the last (EMU_ORDER=warps-reverse), fp32 and bf16:"
	@EMU_ORDER=warps-reverse ARGS="--prec fp32,bf16" sh tests/gpu/emu/ops-shards.sh $(CUDA_EMU) $(EMU_JOBS) \
	  > $(CUDA_EMU)/order.log; rc=$$?; grep -E 'FAIL|ERROR|^emu:|comparisons' $(CUDA_EMU)/order.log; exit $$rc
	@echo "convolutions again, by the emulated cuDNN (KRONA_CUDA_CONV=cudnn):"
	KRONA_CUDA_CONV=cudnn ONLY=conv2d sh tests/gpu/emu/ops-shards.sh $(CUDA_EMU) $(EMU_JOBS) \
	  > $(CUDA_EMU)/cudnn.log; rc=$$?; grep -E 'FAIL|^convolutions|comparisons' $(CUDA_EMU)/cudnn.log; exit $$rc

cuda-emu-train: krona-studio $(CUDA_EMU)/$(CUDA_PLUGIN)
	sh tests/gpu/emu/train-e2e.sh

cuda-emu-sample: krona-studio $(CUDA_EMU)/$(CUDA_PLUGIN)
	sh tests/gpu/emu/sample-e2e.sh

# in `make check`: the op comparisons, then training (im2col; cuDNN with the prior
# pass and the text encoder's adapters, threads run warp by warp from the last)
# and sampling, each quiet unless it fails
EMU_QUIET = > $(CUDA_EMU)/$(1).log 2>&1 || { cat $(CUDA_EMU)/$(1).log; exit 1; }; \
  grep -E '$(or $(2),relative|channels)' $(CUDA_EMU)/$(1).log
EMU_OPS_LINES := in the emulator|shards[)]|EMU_ORDER|^convolutions again
test-cuda-emu: krona-studio $(CUDA_EMU)/test_emu_graph $(CUDA_EMU)/test_cuda_ops $(CUDA_EMU)/$(CUDA_PLUGIN)
	@echo "CUDA backend, emulated on the CPU (tests/gpu/emu):"
	@$(MAKE) --no-print-directory cuda-emu $(call EMU_QUIET,ops,$(EMU_OPS_LINES))
	@sh tests/gpu/emu/train-e2e.sh $(call EMU_QUIET,train)
	@KRONA_CUDA_CONV=cudnn EMU_ORDER=warps-reverse OUT=$(CUDA_EMU)/train-e2e-cudnn \
	  EXTRA="--set text_encoder_adapters=1 --set n_class_images=1 --set prior_weight=1" \
	  sh tests/gpu/emu/train-e2e.sh $(call EMU_QUIET,train-cudnn)
	@sh tests/gpu/emu/sample-e2e.sh $(call EMU_QUIET,sample)

clean-cuda:
	rm -rf $(CUDA_BUILD) $(CUDA_PLUGIN)
