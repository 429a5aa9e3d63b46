# Thin wrapper: installs what is missing, configures with CMake, builds, runs.
#   make run    - build and start the server with conf/wahook.conf
#   make test   - build and run every suite (unit, sanitizer unit, integration, busted, fuzz)
#   make bench  - build and print the benchmark figures

SHELL := /bin/bash
BUILD ?= build
BUILD_ASAN ?= build-asan
BUILD_FUZZ ?= build-fuzz
CONF ?= conf/wahook.conf
JOBS ?= $(shell nproc)

DEB_PACKAGES := build-essential cmake pkg-config clang libclang-rt-14-dev python3 openssl \
	libh2o-evloop-dev liblua5.4-dev lua5.4 lua-cjson lua-cjson-dev libcurl4-openssl-dev \
	libsqlite3-dev sqlite3 libssl-dev libyaml-dev libjansson-dev lua-busted lua-yaml tzdata wrk

.PHONY: all deps build build-asan build-fuzz run test test-unit test-asan test-integration \
	test-fuzz bench clean e2e-deps

all: build

deps:
	@./tests/install-deps.sh $(DEB_PACKAGES)

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

build-asan: deps
	cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DWH_SANITIZE=ON -DWH_INTEGRATION=OFF >/dev/null
	cmake --build $(BUILD_ASAN) -j $(JOBS)

build-fuzz: deps
	CC=clang cmake -S . -B $(BUILD_FUZZ) -DCMAKE_BUILD_TYPE=Debug -DWH_FUZZ=ON -DWH_INTEGRATION=OFF \
		-DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined" >/dev/null
	cmake --build $(BUILD_FUZZ) -j $(JOBS)

run: build
	$(BUILD)/wahook init -c $(CONF)
	exec $(BUILD)/wahook serve -c $(CONF)

# The dashboard's end-to-end test drives Debian's Chromium with playwright-core (from npm).
e2e-deps:
	@./tests/install-deps.sh chromium
	@command -v node >/dev/null 2>&1 || ./tests/install-deps.sh nodejs npm
	@[ -d tests/integration/e2e/node_modules/playwright-core ] || \
		npm ci --prefix tests/integration/e2e --no-audit --no-fund >/dev/null

test: build build-asan build-fuzz e2e-deps
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	cd $(BUILD_ASAN) && ctest --output-on-failure -L unit -j $(JOBS)
	cd $(BUILD_FUZZ) && ctest --output-on-failure -L fuzz

bench: build
	./tests/bench/run.sh $(BUILD)/wahook
	./tests/bench/process.sh $(BUILD)/wahook
	./tests/bench/stats.sh $(BUILD)/wahook
	./tests/bench/live.sh $(BUILD)/wahook

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_FUZZ)
