//! Uprobes attached as uprobe_multi links (Linux 6.6; PID filtering fixed in
//! 6.10), where the kernel has them. Releasing an ordinary uprobe waits for
//! RCU grace periods under the kernel's global event_mutex, so a dozen took
//! over half a second to go, one after the other, however many threads
//! closed them; a uprobe_multi link takes no such lock, and one link holds
//! every offset a program is attached at.

use std::ffi::CStr;
use std::sync::OnceLock;

use libbpf_rs::{OpenObject, ProgramAttachType};

/// Whether this kernel has uprobe_multi links with PID filtering that works
/// per process, probed once (as libbpf probes it for USDTs).
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(probe)
}

/// Loads the uprobe programs of `object` as uprobe_multi programs: the
/// attach type is fixed at load.
pub fn prepare(object: &mut OpenObject) {
    for mut program in object.progs_mut() {
        let section = program.section().to_string_lossy();
        if section.starts_with("uprobe") || section.starts_with("uretprobe") {
            program.set_attach_type(ProgramAttachType::TraceUprobeMulti);
        }
    }
}

fn probe() -> bool {
    // r0 = 0; exit
    let instructions = [
        libbpf_sys::bpf_insn {
            code: (libbpf_sys::BPF_ALU64 | libbpf_sys::BPF_MOV | libbpf_sys::BPF_K) as u8,
            ..Default::default()
        },
        libbpf_sys::bpf_insn {
            code: (libbpf_sys::BPF_JMP | libbpf_sys::BPF_EXIT) as u8,
            ..Default::default()
        },
    ];
    let load_opts = libbpf_sys::bpf_prog_load_opts {
        sz: size_of::<libbpf_sys::bpf_prog_load_opts>() as _,
        expected_attach_type: libbpf_sys::BPF_TRACE_UPROBE_MULTI,
        ..Default::default()
    };
    let license = c"GPL";
    // SAFETY: a two-instruction program, with options of the size they say.
    let program = unsafe {
        libbpf_sys::bpf_prog_load(
            libbpf_sys::BPF_PROG_TYPE_KPROBE,
            std::ptr::null(),
            license.as_ptr(),
            instructions.as_ptr(),
            instructions.len() as _,
            &load_opts as *const _ as *mut _,
        )
    };
    if program < 0 {
        return false;
    }
    // A uprobe on the directory "/" fails with EBADF where uprobe_multi
    // exists; with an invalid pid as well, a kernel whose PID filtering
    // was fixed fails earlier, with EINVAL.
    let has_links = link_error(program, c"/", 0) == libc::EBADF;
    let filters_processes = has_links && link_error(program, c"/", u32::MAX) == libc::EINVAL;
    // SAFETY: closes the descriptor bpf_prog_load returned.
    unsafe { libc::close(program) };
    filters_processes
}

/// The errno of creating a uprobe_multi link of `program` at offset 0 of
/// `path` for `pid`; 0 if it was created (and is closed again).
fn link_error(program: i32, path: &CStr, pid: u32) -> i32 {
    let offset: libc::c_ulong = 0;
    let mut opts = libbpf_sys::bpf_link_create_opts {
        sz: size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        ..Default::default()
    };
    opts.__bindgen_anon_1.uprobe_multi = libbpf_sys::bpf_link_create_opts__bindgen_ty_1__bindgen_ty_3 {
        path: path.as_ptr(),
        offsets: &offset,
        cnt: 1,
        pid,
        ..Default::default()
    };
    // SAFETY: the options and what they point to live across the call.
    let link = unsafe { libbpf_sys::bpf_link_create(program, -1, libbpf_sys::BPF_TRACE_UPROBE_MULTI, &opts) };
    let error = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    if link >= 0 {
        // SAFETY: closes the link just created.
        unsafe { libc::close(link) };
        return 0;
    }
    error
}
