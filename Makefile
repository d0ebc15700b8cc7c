# krona-studio — build, test, bench.
#   make run    build and launch the studio on the built-in model (installs Debian deps first)
#   make check  build and run every test, also under ASan+UBSan
#   make check-large  the program on a full-size SD 1.5 single file (2 GB in build/large/)
#   make bench  time training steps, print a table and write bench/results.txt
# Warnings are errors. Sources are picked up by wildcard: one file per concern.

CC      ?= cc
PREFIX  ?= /usr/local
PKGS    := stb inih libsixel openblas cmocka ncursesw zlib
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs stb inih libsixel openblas ncursesw zlib 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

WARN    := -Wall -Wextra -Werror -Wno-unused-parameter -Wno-format-truncation
CFLAGS  ?= -O2 -march=x86-64-v2 -g
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) -fopenmp -Isrc $(PKG_CFLAGS) $(CFLAGS)
LDLIBS  = $(PKG_LIBS) -fopenmp -lpthread -ldl -lm

# layers, arrows one way: cli/ and tui/ (front ends) -> src/ (the engine library:
# training -> models -> formats -> core); gpu/ plugs into src/core/backend.h
ENGINE_SRC := $(wildcard src/*/*.c)
CLI_SRC    := $(wildcard cli/*.c)
TUI_SRC    := $(wildcard tui/*.c)
TEST_SRC   := $(wildcard tests/test_*.c)
BUILD      := build

ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ    := $(CLI_SRC:%.c=$(BUILD)/%.o)
TUI_OBJ    := $(TUI_SRC:%.c=$(BUILD)/%.o)
# the engine as one static library; whole-archive because backends register
# themselves from constructors that nothing else references
LIBKRONA   := $(BUILD)/libkrona.a
LINK_KRONA  = -Wl,--whole-archive $(LIBKRONA) -Wl,--no-whole-archive
TEST_BIN   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

SAN_BUILD  := build-san
SAN_FLAGS  := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SAN_OBJ    := $(ENGINE_SRC:%.c=$(SAN_BUILD)/%.o)
SAN_LIB    := $(SAN_BUILD)/libkrona.a
SAN_BIN    := $(TEST_SRC:tests/%.c=$(SAN_BUILD)/tests/%)

.PHONY: all run check check-large test test-san bench bench-tiny bench-sd bench-ops deps install clean
all: krona-studio

krona-studio: $(CLI_OBJ) $(TUI_OBJ) $(LIBKRONA)
	$(CC) $(ALL_CFLAGS) -o $@ $(CLI_OBJ) $(TUI_OBJ) $(LINK_KRONA) $(LDLIBS)

$(LIBKRONA): $(ENGINE_OBJ)
	@rm -f $@
	$(AR) rcs $@ $^

ENGINE_H := $(wildcard src/*/*.h)
$(BUILD)/%.o: %.c $(ENGINE_H) $(wildcard tui/*.h cli/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(LIBKRONA) $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests -o $@ $< $(LINK_KRONA) $(CMOCKA_LIBS) $(LDLIBS)

$(SAN_BUILD)/%.o: %.c $(ENGINE_H)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) -c -o $@ $<

$(SAN_LIB): $(SAN_OBJ)
	@rm -f $@
	$(AR) rcs $@ $^

$(SAN_BUILD)/tests/%: tests/%.c $(SAN_LIB) $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) -Itests -o $@ $< -Wl,--whole-archive $(SAN_LIB) -Wl,--no-whole-archive $(CMOCKA_LIBS) $(LDLIBS)

# test_tui_sixel compiles tui/sixel_enc.c into itself (no ncurses, no other tui objects): rebuild on change
$(BUILD)/tests/test_tui_sixel $(SAN_BUILD)/tests/test_tui_sixel: tui/sixel_enc.c tui/sixel_enc.h

# test_make_checkpoint runs the tool (tools/make-checkpoint.c, built with the plain engine)
$(BUILD)/tests/test_make_checkpoint $(SAN_BUILD)/tests/test_make_checkpoint: $(BUILD)/tools/make-checkpoint

# Debian packages the build and tests need; installed only when missing.
DEB_PKGS := build-essential pkg-config libstb-dev libinih-dev libsixel-dev libopenblas-dev \
            libcmocka-dev libncurses-dev zlib1g-dev tmux
deps:
	@./tools/install-deps.sh $(DEB_PKGS)

# deps first, then a fresh make: pkg-config flags are read when make starts
run: deps
	@$(MAKE) --no-print-directory krona-studio
	./krona-studio

test: $(TEST_BIN) all
	@./tools/check-layers.sh
	@./tools/run-tests.sh $(BUILD)/tests $(TEST_BIN)
	@./tests/cli/test_cli.sh
	@./tests/cli/test_install.sh
	@./tests/tui/test_tui.sh

test-san: $(SAN_BIN)
	@ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 OMP_NUM_THREADS=2 \
	  ./tools/run-tests.sh $(SAN_BUILD)/tests $(SAN_BIN)

# the CUDA backend's emulation (gpu/gpu.mk: test-cuda-emu) translates the plugin's source
# and compares images with python3
check: deps
	@./tools/install-deps.sh python3
	@$(MAKE) --no-print-directory test
	@$(MAKE) --no-print-directory test-cuda-emu
	@$(MAKE) --no-print-directory test-san

# not part of check: a full-size SD 1.5 single file (2.1 GB, random weights, kept in
# build/large/) through the program (tests/large/run.sh)
check-large: deps
	@./tests/large/run.sh

# the tiny model (seconds), then SD 1.5 at 512² and SDXL at 1024² (random weights,
# minutes per step on a CPU; rows that cannot fit in the free memory are skipped)
bench: bench-tiny bench-sd

bench-tiny: deps
	@$(MAKE) --no-print-directory $(BUILD)/bench/bench_train
	KRONA_BACKEND_PATH=$(CURDIR) ./$(BUILD)/bench/bench_train bench/results.txt --profile

bench-sd: deps
	@$(MAKE) --no-print-directory $(BUILD)/bench/bench_train $(BUILD)/bench/bench_vae
	./$(BUILD)/bench/bench_train bench/results-sd15-cpu.txt --model sd15 --profile
	./$(BUILD)/bench/bench_train bench/results-sdxl-cpu.txt --model sdxl
	./$(BUILD)/bench/bench_vae both --size 512 --model sd15 | tee bench/results-vae-cpu.txt

# attention op timings (best of N) on tiny-UNet and SD-like shapes
bench-ops: $(BUILD)/bench/bench_ops
	./$(BUILD)/bench/bench_ops

$(BUILD)/bench/%: bench/%.c $(LIBKRONA)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LINK_KRONA) $(LDLIBS)

# programs under tools/ linked with the engine, like the bench programs
# (build/tools/make-checkpoint: full-size random single-file checkpoints)
$(BUILD)/tools/%: tools/%.c $(LIBKRONA)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LINK_KRONA) $(LDLIBS)

# The binary finds its shipped files in ../share/krona-studio (src/models/model.h:
# model_find_data), laid out as in the source tree: the built-in model, the demo
# subject, the presets and sweep lists.
SHARE := $(DESTDIR)$(PREFIX)/share/krona-studio
install: all
	install -Dm755 krona-studio $(DESTDIR)$(PREFIX)/bin/krona-studio
	if [ -f krona-backend-cuda.so ]; then install -Dm755 krona-backend-cuda.so \
	  $(DESTDIR)$(PREFIX)/lib/krona-studio/krona-backend-cuda.so; fi
	install -Dm644 man/krona-studio.1 $(DESTDIR)$(PREFIX)/share/man/man1/krona-studio.1
	install -d $(SHARE)/presets/sweeps $(SHARE)/models/tiny $(SHARE)/models/demo
	install -m644 presets/*.ini $(SHARE)/presets/
	install -m644 presets/sweeps/*.txt $(SHARE)/presets/sweeps/
	install -m644 models/tiny/unet.safetensors models/tiny/text_encoder.safetensors \
	  models/tiny/scheduler_config.json models/tiny/MODEL_CARD.md $(SHARE)/models/tiny/
	install -m644 models/demo/*.png models/demo/LICENSE.md $(SHARE)/models/demo/

clean:
	rm -rf $(BUILD) $(SAN_BUILD) krona-studio krona-backend-cuda.so
-include gpu/gpu.mk
