#!/usr/bin/env bash
# Installs, idempotently, every Debian package and Rust target that building and testing ecapture needs.
# Safe to run repeatedly: it only calls apt-get when a package is missing.
set -euo pipefail

build_pkgs=(clang llvm gcc libc6-dev libelf-dev zlib1g-dev libpcap-dev pkg-config linux-libc-dev make)
cross_pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross linux-libc-dev-arm64-cross qemu-user-static)
cross_arm64_libs=(libelf-dev:arm64 zlib1g-dev:arm64 libpcap-dev:arm64)
# The arm64 libssl, libgnutls and NSS builds: the AArch64 decoder's unit tests read their code.
test_pkgs=(curl openssl libssl-dev python3 python3-grpcio android-libboringssl android-libboringssl-dev
           tshark nginx wrk bpftrace bpftool iproute2 procps perl wget gnutls-bin libnss3-dev libnss3-tools nodejs golang-go openjdk-17-jdk-headless zsh mariadb-server mariadb-client postgresql python3-psycopg2 python3-psycopg python3-websockets python3-protobuf protobuf-compiler libssl3:arm64 android-libboringssl:arm64 libgnutls30:arm64 libnss3:arm64)

# build: `make`; cross: `CROSS_ARCH=arm64 make`; test: `make test` and `make bench`; fuzz: `make fuzz`
# (a nightly toolchain and cargo-fuzz); all: everything but fuzz.
mode="${1:-all}"
want=("${build_pkgs[@]}")
case "$mode" in
  build) ;;
  cross) want+=("${cross_pkgs[@]}" "${cross_arm64_libs[@]}") ;;
  test)  want+=("${test_pkgs[@]}") ;;
  fuzz)  ;;
  all)   want+=("${cross_pkgs[@]}" "${cross_arm64_libs[@]}" "${test_pkgs[@]}") ;;
  *) echo "usage: $0 [build|cross|test|fuzz|all]" >&2; exit 2 ;;
esac

if [[ " ${want[*]} " == *":arm64 "* ]] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer it up front.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ "$mode" == cross || "$mode" == all ]] && command -v rustup >/dev/null \
   && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  rustup target add aarch64-unknown-linux-gnu || {
    echo "install-deps: cannot add the Rust aarch64 target (rustup target add aarch64-unknown-linux-gnu)" >&2
    exit 1
  }
fi

# libFuzzer's instrumentation needs a nightly compiler; the project itself builds on stable.
if [[ "$mode" == fuzz ]]; then
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal || {
      echo "install-deps: cannot install the nightly toolchain that cargo-fuzz needs (rustup toolchain install nightly)" >&2
      exit 1
    }
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
  fi
fi
