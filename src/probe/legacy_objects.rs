//! What the legacy objects may use, checked without the kernels they are for:
//! nothing newer than Linux 4.18 reaches its verifier. The tests run the
//! objects themselves on this machine's kernel; these checks stand in for
//! the old ones.

use libbpf_rs::{MapType, ObjectBuilder};

/// BPF_FUNC_get_current_cgroup_id, the newest helper of Linux 4.18.
const NEWEST_HELPER_OF_4_18: i32 = 80;
/// Newer helpers the objects call all the same: libbpf rewrites the first
/// three into bpf_probe_read(_str) where the kernel lacks them, and the last
/// sits behind a CO-RE check that the kernel has it (`socket_of_fd.h`).
const NEWER_HELPERS_ALLOWED: [u32; 4] = [
    libbpf_sys::BPF_FUNC_probe_read_user,
    libbpf_sys::BPF_FUNC_probe_read_kernel,
    libbpf_sys::BPF_FUNC_probe_read_user_str,
    libbpf_sys::BPF_FUNC_get_current_task_btf,
];
/// BPF_MAXINSNS: the most instructions a program may have before Linux 5.2.
const MAX_INSTRUCTIONS_BEFORE_5_2: usize = 4096;
const BPF_PSEUDO_CALL: u8 = 1;
const BPF_PSEUDO_FUNC: u8 = 4;

fn check_object(name: &str, bytes: &[u8]) {
    let object = ObjectBuilder::default().open_memory(bytes).unwrap();
    for map in object.maps() {
        let map_name = map.name().to_string_lossy();
        // Global data (.rodata, .data, .bss) needs Linux 5.2.
        assert!(!map_name.contains('.'), "{name}: global data in {map_name}");
        assert!(
            map.map_type() != MapType::RingBuf,
            "{name}: {map_name} is a ring buffer (Linux 5.8)"
        );
        assert_eq!(
            map.map_flags() & libbpf_sys::BPF_F_MMAPABLE,
            0,
            "{name}: {map_name} is mmapable (Linux 5.5)"
        );
    }
    let mut programs = 0;
    for program in object.progs() {
        programs += 1;
        let program_name = program.name().to_string_lossy();
        let instructions = program.insns();
        assert!(
            instructions.len() <= MAX_INSTRUCTIONS_BEFORE_5_2,
            "{name}: {program_name} has {} instructions",
            instructions.len()
        );
        for insn in instructions {
            let class_and_op = u32::from(insn.code);
            if class_and_op == libbpf_sys::BPF_JMP | libbpf_sys::BPF_CALL && insn.src_reg() == 0 {
                let helper = insn.imm;
                assert!(
                    helper <= NEWEST_HELPER_OF_4_18 || NEWER_HELPERS_ALLOWED.contains(&(helper as u32)),
                    "{name}: {program_name} calls helper {helper}, newer than Linux 4.18"
                );
            }
            // Before 5.10, a program with tail calls may not call functions
            // of its own object.
            if class_and_op == libbpf_sys::BPF_JMP | libbpf_sys::BPF_CALL {
                assert_ne!(
                    insn.src_reg(),
                    BPF_PSEUDO_CALL,
                    "{name}: {program_name} calls a function of the object"
                );
            }
            if class_and_op == libbpf_sys::BPF_LD | libbpf_sys::BPF_IMM | libbpf_sys::BPF_DW {
                assert_ne!(
                    insn.src_reg(),
                    BPF_PSEUDO_FUNC,
                    "{name}: {program_name} passes a callback (Linux 5.13)"
                );
            }
        }
        assert!(!has_loop(instructions), "{name}: {program_name} loops (Linux 5.3)");
    }
    assert!(programs > 0, "{name} has no programs");
}

/// Whether the control flow has a cycle, which kernels before 5.3 reject
/// (a jump backwards to code that cannot reach it again is no loop).
fn has_loop(instructions: &[libbpf_sys::bpf_insn]) -> bool {
    let successors = |at: usize| -> Vec<usize> {
        let insn = &instructions[at];
        let code = u32::from(insn.code);
        let class = code & 0x07;
        if code == libbpf_sys::BPF_LD | libbpf_sys::BPF_IMM | libbpf_sys::BPF_DW {
            return vec![at + 2];
        }
        if class != libbpf_sys::BPF_JMP && class != libbpf_sys::BPF_JMP32 {
            return vec![at + 1];
        }
        let target = (at as i64 + 1 + i64::from(insn.off)) as usize;
        match code & 0xf0 {
            op if op == libbpf_sys::BPF_EXIT => vec![],
            op if op == libbpf_sys::BPF_CALL => vec![at + 1],
            op if op == libbpf_sys::BPF_JA => vec![target],
            _ => vec![at + 1, target],
        }
    };
    // Depth-first, iteratively: 1 while on the path, 2 when done.
    let mut state = vec![0u8; instructions.len() + 2];
    let mut stack = vec![(0usize, successors(0), 0usize)];
    state[0] = 1;
    while let Some((node, next, index)) = stack.last_mut() {
        if let Some(&successor) = next.get(*index) {
            *index += 1;
            if successor >= instructions.len() {
                continue;
            }
            match state[successor] {
                1 => return true,
                0 => {
                    state[successor] = 1;
                    stack.push((successor, successors(successor), 0));
                }
                _ => {}
            }
        } else {
            state[*node] = 2;
            stack.pop();
        }
    }
    false
}

macro_rules! check_objects {
    ($($cfg:ident: $object:literal),*) => {$(
        #[cfg($cfg)]
        check_object($object, include_bytes!(concat!(env!("OUT_DIR"), "/", $object)));
    )*};
}

#[test]
fn legacy_objects_use_nothing_newer_than_linux_4_18() {
    check_objects!(
        bpf_core: "openssl_core_legacy.bpf.o",
        bpf_nocore: "openssl_nocore_legacy.bpf.o",
        bpf_core: "gnutls_core_legacy.bpf.o",
        bpf_nocore: "gnutls_nocore_legacy.bpf.o",
        bpf_core: "nss_core_legacy.bpf.o",
        bpf_nocore: "nss_nocore_legacy.bpf.o",
        bpf_core: "gotls_core_legacy.bpf.o",
        bpf_nocore: "gotls_nocore_legacy.bpf.o",
        bpf_core: "shell_core_legacy.bpf.o",
        bpf_nocore: "shell_nocore_legacy.bpf.o",
        bpf_core: "mysqld_core_legacy.bpf.o",
        bpf_nocore: "mysqld_nocore_legacy.bpf.o",
        bpf_core: "postgres_core_legacy.bpf.o",
        bpf_nocore: "postgres_nocore_legacy.bpf.o",
        bpf_core: "packets_core_legacy.bpf.o",
        bpf_nocore: "packets_nocore_legacy.bpf.o"
    );
}

#[test]
fn current_objects_fail_the_same_checks() {
    #[cfg(bpf_core)]
    let current: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openssl_core.bpf.o"));
    #[cfg(all(bpf_nocore, not(bpf_core)))]
    let current: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openssl_nocore.bpf.o"));
    let failed = std::panic::catch_unwind(|| check_object("current", current));
    assert!(failed.is_err(), "the checks would not see a ring buffer or bpf_loop");
}
