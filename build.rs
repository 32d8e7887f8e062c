//! Compiles the C probes under `bpf/` with clang and generates a libbpf-rs
//! skeleton for each, embedding the objects in the binary.
//!
//! Each probe is built in up to two flavors: `core`, which reads kernel structs
//! through CO-RE relocations and needs kernel BTF at run time, and `nocore`,
//! which reads no kernel memory and loads on kernels without BTF.
//! `ECAPTURE_BPF_FLAVORS` (comma separated) selects them; `make nocore` builds
//! only `nocore`. Each flavor is built twice more: for current kernels, and
//! (`_legacy`, see `bpf/include/kernel_compat.h`) for Linux 4.18 to 5.12.

use std::env;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

const PROBES: &[&str] = &[
    "openssl", "gnutls", "nss", "gotls", "shell", "mysqld", "postgres", "packets",
];
/// Never loaded: it gives userspace the C types all modules share.
const SHARED_TYPES: &str = "shared_types";
const FLAVORS: &[&str] = &["core", "nocore"];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets the target arch");
    let flavors = env::var("ECAPTURE_BPF_FLAVORS").unwrap_or_else(|_| FLAVORS.join(","));
    println!("cargo::rerun-if-env-changed=ECAPTURE_BPF_FLAVORS");
    println!("cargo::rerun-if-changed=bpf");
    println!("cargo::rustc-check-cfg=cfg(bpf_core)");
    println!("cargo::rustc-check-cfg=cfg(bpf_nocore)");

    build_object(SHARED_TYPES, SHARED_TYPES, &[], &target_arch, &out_dir);
    let selected: Vec<&str> = flavors.split(',').map(str::trim).collect();
    for flavor in &selected {
        assert!(
            FLAVORS.contains(flavor),
            "unknown BPF flavor {flavor:?}; expected core or nocore"
        );
        println!("cargo::rustc-cfg=bpf_{flavor}");
        for probe in PROBES {
            build_probe(probe, flavor, false, &target_arch, &out_dir);
            build_probe(probe, flavor, true, &target_arch, &out_dir);
        }
    }
}

fn build_probe(probe: &str, flavor: &str, legacy: bool, target_arch: &str, out_dir: &Path) {
    let name = format!("{probe}_{flavor}{}", if legacy { "_legacy" } else { "" });
    let mut defines = Vec::new();
    if flavor == "nocore" {
        defines.push("-DECAPTURE_NO_CORE");
    }
    if legacy {
        defines.push("-DECAPTURE_LEGACY_KERNEL");
    }
    build_object(probe, &name, &defines, target_arch, out_dir);
}

/// Compiles `bpf/{source}.bpf.c` into `{name}.bpf.o` and its skeleton.
fn build_object(source: &str, name: &str, defines: &[&str], target_arch: &str, out_dir: &Path) {
    let source = Path::new("bpf").join(format!("{source}.bpf.c"));
    let mut args = vec![
        "-O2".to_string(),
        "-g".to_string(),
        "-Wall".to_string(),
        "-Ibpf/include".to_string(),
    ];
    args.extend(arch_include_dirs(target_arch).into_iter().map(|dir| format!("-I{dir}")));
    args.extend(defines.iter().map(|define| define.to_string()));
    SkeletonBuilder::new()
        .source(&source)
        .obj(out_dir.join(format!("{name}.bpf.o")))
        .clang_args(args)
        .build_and_generate(out_dir.join(format!("{name}.skel.rs")))
        .unwrap_or_else(|err| panic!("building {}: {err:#}", source.display()));
}

/// Where the target's UAPI `asm/` headers live (Debian multiarch layout).
fn arch_include_dirs(target_arch: &str) -> Vec<&'static str> {
    match target_arch {
        "x86_64" => vec!["/usr/include/x86_64-linux-gnu"],
        "aarch64" => vec!["/usr/include/aarch64-linux-gnu", "/usr/aarch64-linux-gnu/include"],
        other => panic!("unsupported target architecture {other}; ecapture supports x86_64 and aarch64"),
    }
}
