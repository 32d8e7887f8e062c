//! A pcap filter run in the kernel. libpcap compiles the expression to
//! classic BPF; this rewrites it, instruction for instruction, as an eBPF TC
//! classifier that tail-calls the capture program for the packets it keeps,
//! so the others are never copied out of the kernel.
//!
//! The rewrite follows the kernel's own conversion of classic socket filters:
//! A lives in R0, X in R7, the scratch words M[] on the stack, and packet
//! loads are LD_ABS/LD_IND, which read big-endian from the start of the frame
//! and end the program with 0 when the packet is too short, exactly as
//! classic BPF does. A classifier returning 0 (TC_ACT_OK) lets the packet go
//! on, uncaptured.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};

/// One classic BPF instruction, as libpcap and the kernel lay it out.
pub type ClassicInstruction = libc::sock_filter;

/// One eBPF instruction; `registers` holds dst in its low nibble, src in its
/// high one (the C bitfields on a little-endian machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Instruction {
    code: u8,
    registers: u8,
    off: i16,
    imm: i32,
}

const _: () = assert!(std::mem::size_of::<Instruction>() == std::mem::size_of::<libbpf_sys::bpf_insn>());

// Opcode fields, shared by both instruction sets where they agree.
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const STX: u16 = 0x03;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;
const ALU64: u8 = 0x07;

const SIZE_W: u16 = 0x00;
const SIZE_H: u16 = 0x08;
const SIZE_B: u16 = 0x10;
const SIZE_DW: u8 = 0x18;

const MODE_IMM: u16 = 0x00;
const MODE_ABS: u16 = 0x20;
const MODE_IND: u16 = 0x40;
const MODE_MEM: u16 = 0x60;
const MODE_LEN: u16 = 0x80;
const MODE_MSH: u16 = 0xa0;

const SOURCE_X: u16 = 0x08;

const OP_DIV: u16 = 0x30;
const OP_LSH: u16 = 0x60;
const OP_AND: u16 = 0x50;
const OP_NEG: u16 = 0x80;
const OP_MOD: u16 = 0x90;
const OP_MOV: u8 = 0xb0;

const JUMP_ALWAYS: u16 = 0x00;
const JUMP_EQUAL: u8 = 0x10;
const JUMP_NOT_EQUAL: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;

const RET_K: u16 = 0x00;
const RET_X: u16 = 0x08;
const RET_A: u16 = 0x10;
const MISC_TXA: u16 = 0x80;

// Registers.
const A: u8 = 0;
const ARGUMENT_1: u8 = 1;
const ARGUMENT_2: u8 = 2;
const ARGUMENT_3: u8 = 3;
const CONTEXT: u8 = 6;
const X: u8 = 7;
const SCRATCH: u8 = 8;
const FRAME: u8 = 10;

/// Classic BPF's 16 scratch words, at the bottom of the stack frame.
const MEMORY_WORDS: u32 = 16;
const HELPER_TAIL_CALL: i32 = 12;
const PSEUDO_MAP_FD: u8 = 1;
/// Negative offsets ask classic BPF for skb metadata (SKF_AD_OFF); a filter
/// compiled for a capture file never uses them.
const ANCILLARY_BASE: u32 = 0x8000_0000;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Instruction {
    Instruction {
        code,
        registers: dst | (src << 4),
        off,
        imm,
    }
}

fn mov32_imm(dst: u8, imm: u32) -> Instruction {
    insn(ALU as u8 | OP_MOV, dst, 0, 0, imm as i32)
}

fn mov64_reg(dst: u8, src: u8) -> Instruction {
    insn(ALU64 | OP_MOV | SOURCE_X as u8, dst, src, 0, 0)
}

fn mov32_reg(dst: u8, src: u8) -> Instruction {
    insn(ALU as u8 | OP_MOV | SOURCE_X as u8, dst, src, 0, 0)
}

fn scratch_offset(k: u32) -> Result<i16> {
    if k >= MEMORY_WORDS {
        bail!("scratch word {k} out of range");
    }
    Ok(-((MEMORY_WORDS - k) as i16) * 4)
}

/// Returns TC_ACT_OK: the packet goes on, uncaptured.
fn pass() -> [Instruction; 2] {
    [mov32_imm(A, 0), insn(JMP as u8 | EXIT, 0, 0, 0, 0)]
}

/// Hands the packet to the capture program in slot 0 of `programs`; if that
/// fails, the instructions after it run.
fn tail_call(programs: i32) -> [Instruction; 5] {
    [
        mov64_reg(ARGUMENT_1, CONTEXT),
        insn(
            LD as u8 | MODE_IMM as u8 | SIZE_DW,
            ARGUMENT_2,
            PSEUDO_MAP_FD,
            0,
            programs,
        ),
        Instruction::default(),
        mov32_imm(ARGUMENT_3, 0),
        insn(JMP as u8 | CALL, 0, 0, 0, HELPER_TAIL_CALL),
    ]
}

/// A jump in the output: the classic instruction it goes to, resolved once
/// every classic instruction's position in the output is known.
enum Piece {
    Plain(Instruction),
    JumpTo { code: u8, dst: u8, src: u8, target: usize },
}

/// The eBPF rendering of one classic instruction at `index`.
fn rewrite(index: usize, classic: &ClassicInstruction, programs: i32) -> Result<Vec<Piece>> {
    use Piece::{JumpTo, Plain};
    let code = classic.code;
    let k = classic.k;
    let size = code & 0x18;
    let mode = code & 0xe0;
    let op = code & 0xf0;
    let by_x = code & SOURCE_X != 0;
    let load_size = |size: u16| -> Result<u8> {
        match size {
            SIZE_W | SIZE_H | SIZE_B => Ok(size as u8),
            _ => bail!("load size {size:#x}"),
        }
    };
    let pieces = match code & 0x07 {
        LD | LDX if mode == MODE_ABS || mode == MODE_IND || mode == MODE_MSH => {
            if k >= ANCILLARY_BASE {
                bail!("skb metadata loads (offset {k:#x})");
            }
            match (code & 0x07, mode) {
                (LD, MODE_ABS) => vec![Plain(insn(
                    LD as u8 | MODE_ABS as u8 | load_size(size)?,
                    0,
                    0,
                    0,
                    k as i32,
                ))],
                (LD, MODE_IND) => vec![Plain(insn(
                    LD as u8 | MODE_IND as u8 | load_size(size)?,
                    0,
                    X,
                    0,
                    k as i32,
                ))],
                // X = 4 * (packet[k] & 0xf): the IP header length. LD_ABS
                // writes R0, so A waits in the scratch register.
                (LDX, MODE_MSH) => vec![
                    Plain(mov64_reg(SCRATCH, A)),
                    Plain(insn(LD as u8 | MODE_ABS as u8 | SIZE_B as u8, 0, 0, 0, k as i32)),
                    Plain(insn(ALU as u8 | OP_AND as u8, A, 0, 0, 0xf)),
                    Plain(insn(ALU as u8 | OP_LSH as u8, A, 0, 0, 2)),
                    Plain(mov64_reg(X, A)),
                    Plain(mov64_reg(A, SCRATCH)),
                ],
                _ => bail!("opcode {code:#x}"),
            }
        }
        class @ (LD | LDX) => {
            let dst = if class == LD { A } else { X };
            match mode {
                MODE_IMM => vec![Plain(mov32_imm(dst, k))],
                MODE_MEM => vec![Plain(insn(
                    LDX as u8 | MODE_MEM as u8 | SIZE_W as u8,
                    dst,
                    FRAME,
                    scratch_offset(k)?,
                    0,
                ))],
                // __sk_buff.len is the first field.
                MODE_LEN if size == SIZE_W => vec![Plain(insn(
                    LDX as u8 | MODE_MEM as u8 | SIZE_W as u8,
                    dst,
                    CONTEXT,
                    0,
                    0,
                ))],
                _ => bail!("opcode {code:#x}"),
            }
        }
        class @ (ST | STX) => {
            let src = if class == ST { A } else { X };
            vec![Plain(insn(
                STX as u8 | MODE_MEM as u8 | SIZE_W as u8,
                FRAME,
                src,
                scratch_offset(k)?,
                0,
            ))]
        }
        ALU if op == OP_NEG => vec![Plain(insn(ALU as u8 | OP_NEG as u8, A, 0, 0, 0))],
        ALU if op > OP_MOD + 0x10 => bail!("ALU opcode {code:#x}"),
        ALU if by_x && (op == OP_DIV || op == OP_MOD) => {
            // Classic BPF ends the filter, rejecting the packet, on division
            // by zero; eBPF would carry on with 0.
            let mut pieces = vec![Plain(insn(JMP as u8 | JUMP_NOT_EQUAL, X, 0, 2, 0))];
            pieces.extend(pass().map(Plain));
            pieces.push(Plain(insn(ALU as u8 | op as u8 | SOURCE_X as u8, A, X, 0, 0)));
            pieces
        }
        ALU if by_x => vec![Plain(insn(ALU as u8 | op as u8 | SOURCE_X as u8, A, X, 0, 0))],
        ALU if (op == OP_DIV || op == OP_MOD) && k == 0 => bail!("division by zero"),
        ALU => vec![Plain(insn(ALU as u8 | op as u8, A, 0, 0, k as i32))],
        JMP if op == JUMP_ALWAYS => vec![JumpTo {
            code: JMP as u8,
            dst: 0,
            src: 0,
            target: index + 1 + k as usize,
        }],
        JMP if op <= 0x40 => {
            // eBPF sign-extends an immediate to 64 bits; classic BPF compares
            // unsigned 32-bit values, so K goes through a register.
            let mut pieces = Vec::new();
            let operand = if by_x {
                X
            } else {
                pieces.push(Plain(mov32_imm(SCRATCH, k)));
                SCRATCH
            };
            pieces.push(JumpTo {
                code: JMP as u8 | op as u8 | SOURCE_X as u8,
                dst: A,
                src: operand,
                target: index + 1 + usize::from(classic.jt),
            });
            pieces.push(JumpTo {
                code: JMP as u8,
                dst: 0,
                src: 0,
                target: index + 1 + usize::from(classic.jf),
            });
            pieces
        }
        RET => {
            let verdict = match code & 0x18 {
                RET_K if k == 0 => return Ok(pass().map(Plain).into()),
                RET_K => None,
                RET_A => Some(A),
                RET_X => Some(X),
                _ => bail!("opcode {code:#x}"),
            };
            let mut pieces = Vec::new();
            if let Some(register) = verdict {
                // A zero verdict skips the tail call.
                pieces.push(Plain(insn(JMP as u8 | JUMP_EQUAL, register, 0, 5, 0)));
            }
            pieces.extend(tail_call(programs).map(Plain));
            pieces.extend(pass().map(Plain));
            pieces
        }
        MISC if op == MISC_TXA => vec![Plain(mov32_reg(A, X))],
        MISC => vec![Plain(mov32_reg(X, A))],
        _ => bail!("opcode {code:#x}"),
    };
    Ok(pieces)
}

/// The eBPF program for `filter`; `programs` is the fd of a one-slot program
/// array holding the capture program.
pub fn translate(filter: &[ClassicInstruction], programs: i32) -> Result<Vec<Instruction>> {
    if filter.is_empty() {
        bail!("an empty filter");
    }
    let mut prologue = vec![mov64_reg(CONTEXT, ARGUMENT_1), mov32_imm(A, 0), mov32_imm(X, 0)];
    // The verifier wants every stack word written before it is read.
    for word in (0..MEMORY_WORDS).step_by(2) {
        prologue.push(insn(
            ST as u8 | MODE_MEM as u8 | SIZE_DW,
            FRAME,
            0,
            scratch_offset(word)?,
            0,
        ));
    }
    let rewritten: Vec<Vec<Piece>> = filter
        .iter()
        .enumerate()
        .map(|(index, classic)| rewrite(index, classic, programs))
        .collect::<Result<_>>()?;
    let mut starts = Vec::with_capacity(filter.len());
    let mut position = prologue.len();
    for pieces in &rewritten {
        starts.push(position);
        position += pieces.len();
    }
    let mut out = prologue;
    for pieces in rewritten {
        for piece in pieces {
            let instruction = match piece {
                Piece::Plain(instruction) => instruction,
                Piece::JumpTo { code, dst, src, target } => {
                    let Some(&destination) = starts.get(target) else {
                        bail!("a jump past the end of the filter");
                    };
                    let off = i16::try_from(destination as i64 - out.len() as i64 - 1)?;
                    insn(code, dst, src, off, 0)
                }
            };
            out.push(instruction);
        }
    }
    Ok(out)
}

/// Compiles a pcap-filter expression for Ethernet frames, which is what TC
/// classifiers see on Ethernet and loopback interfaces.
pub fn compile(expression: &str, link_type: pcap::Linktype) -> Result<pcap::BpfProgram> {
    pcap::Capture::dead(link_type)?
        .compile(expression, true)
        .map_err(|err| anyhow::anyhow!("bad pcap filter {expression:?}: {err}"))
}

/// The instructions of a program libpcap compiled.
pub fn classic_instructions(program: &pcap::BpfProgram) -> &[ClassicInstruction] {
    const _: () = assert!(std::mem::size_of::<pcap::BpfInstruction>() == std::mem::size_of::<ClassicInstruction>());
    let instructions = program.get_instructions();
    // SAFETY: pcap::BpfInstruction is a transparent wrapper of libpcap's
    // struct bpf_insn, which has the layout of the kernel's sock_filter.
    unsafe { std::slice::from_raw_parts(instructions.as_ptr().cast(), instructions.len()) }
}

/// Loads `filter` as a classifier for `attach_type` (TCX ingress or
/// egress) that tail-calls slot 0 of the program array `programs`.
pub fn load(
    filter: &[ClassicInstruction],
    programs: BorrowedFd<'_>,
    attach_type: libbpf_sys::bpf_attach_type,
) -> Result<OwnedFd> {
    load_classifier(&translate(filter, programs.as_raw_fd())?, attach_type)
}

fn load_classifier(instructions: &[Instruction], attach_type: libbpf_sys::bpf_attach_type) -> Result<OwnedFd> {
    let mut log = vec![0u8; 64 * 1024];
    let mut opts = libbpf_sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as _,
        expected_attach_type: attach_type,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr().cast(),
        ..Default::default()
    };
    // SAFETY: the instructions, names and log buffer outlive the call; the
    // kernel verifies the program before it returns an fd.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            libbpf_sys::BPF_PROG_TYPE_SCHED_CLS,
            c"pcap_filter".as_ptr(),
            c"Dual BSD/GPL".as_ptr(),
            instructions.as_ptr().cast(),
            instructions.len() as _,
            &mut opts,
        )
    };
    if fd < 0 {
        let verifier = CStr::from_bytes_until_nul(&log)
            .map(|text| text.to_string_lossy().lines().last().unwrap_or_default().to_string())
            .unwrap_or_default();
        bail!(
            "the kernel refused the filter program: {} {verifier}",
            std::io::Error::from_raw_os_error(-fd)
        );
    }
    // SAFETY: a new fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn jumps_land_on_the_rewritten_targets() {
        let program = compile("tcp port 443", pcap::Linktype::ETHERNET).unwrap();
        let filter = classic_instructions(&program);
        let out = translate(filter, 99).unwrap();
        // Every jump lands inside the program, on an instruction that starts
        // the rewrite of a classic one (never inside the 16-byte map load).
        for (index, instruction) in out.iter().enumerate() {
            let class = instruction.code & 0x07;
            let op = instruction.code & 0xf0;
            if class == JMP as u8 && op != CALL && op != EXIT {
                let target = index as i64 + 1 + i64::from(instruction.off);
                assert!((0..out.len() as i64).contains(&target), "jump at {index} to {target}");
                assert_ne!(out[target as usize - 1].code, LD as u8 | SIZE_DW, "into a map load");
            }
        }
        // Each accepting return tail-calls through the map.
        let map_loads = out.iter().filter(|i| i.code == LD as u8 | SIZE_DW).count();
        let accepting = filter.iter().filter(|c| c.code & 0x07 == RET && c.k != 0).count();
        assert_eq!(map_loads, accepting);
        assert!(out.iter().any(|i| i.imm == 99));
    }

    #[test]
    fn metadata_loads_are_refused() {
        let metadata = [libc::sock_filter {
            code: LD | SIZE_W | MODE_ABS,
            jt: 0,
            jf: 0,
            k: 0xffff_f000,
        }];
        assert!(translate(&metadata, 1).is_err());
    }

    /// An Ethernet frame carrying IPv4 or IPv6 with a TCP or UDP header.
    fn frame(ipv6: bool, protocol: u8, source_port: u16, destination_port: u16, payload: usize, syn: bool) -> Vec<u8> {
        let mut out = vec![0u8; 12];
        let l4_len: usize = if protocol == 6 { 20 } else { 8 };
        if ipv6 {
            out.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
            out.extend(((l4_len + payload) as u16).to_be_bytes());
            out.extend([protocol, 64]);
            out.extend([0xfd; 16]);
            out.extend([0xfe; 16]);
        } else {
            out.extend([0x08, 0x00, 0x45, 0]);
            out.extend(((20 + l4_len + payload) as u16).to_be_bytes());
            out.extend([0, 0, 0x40, 0, 64, protocol, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        }
        out.extend(source_port.to_be_bytes());
        out.extend(destination_port.to_be_bytes());
        if protocol == 6 {
            out.extend([
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                0x50,
                if syn { 0x02 } else { 0x10 },
                0xff,
                0xff,
                0,
                0,
                0,
                0,
            ]);
        } else {
            out.extend(((8 + payload) as u16).to_be_bytes());
            out.extend([0, 0]);
        }
        out.extend(std::iter::repeat_n(0x61, payload));
        out
    }

    /// Runs each filter in the kernel (BPF_PROG_TEST_RUN) and through
    /// libpcap on the same frames: the verdicts must agree. Needs root and BPF.
    #[test]
    fn kernel_verdicts_match_libpcap() {
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert_ne!(
                std::env::var("ECAPTURE_E2E").as_deref(),
                Ok("required"),
                "needs root to load BPF"
            );
            return;
        }
        const CAPTURED: u32 = 7;
        let attach = libbpf_sys::BPF_TCX_INGRESS;
        let capture = load_classifier(&[mov32_imm(A, CAPTURED), insn(JMP as u8 | EXIT, 0, 0, 0, 0)], attach).unwrap();
        // SAFETY: plain map creation; the fd is owned below.
        let programs = unsafe {
            libbpf_sys::bpf_map_create(
                libbpf_sys::BPF_MAP_TYPE_PROG_ARRAY,
                std::ptr::null(),
                4,
                4,
                1,
                std::ptr::null(),
            )
        };
        assert!(programs >= 0, "creating a program array: {programs}");
        // SAFETY: the fd was just created.
        let programs = unsafe { OwnedFd::from_raw_fd(programs) };
        let (slot, target) = (0u32, capture.as_raw_fd());
        // SAFETY: key and value live across the call.
        let rc = unsafe {
            libbpf_sys::bpf_map_update_elem(
                programs.as_raw_fd(),
                (&raw const slot).cast(),
                (&raw const target).cast(),
                0,
            )
        };
        assert_eq!(rc, 0);

        let frames = [
            frame(false, 6, 40000, 443, 10, false),
            frame(false, 6, 443, 40000, 300, false),
            frame(false, 6, 40000, 8443, 0, true),
            frame(false, 17, 5353, 53, 40, false),
            frame(true, 6, 40001, 443, 0, true),
            frame(true, 17, 1500, 1600, 200, false),
            frame(false, 6, 1234, 22, 1000, false),
            // Cut inside the TCP header: loads past the end reject the packet.
            frame(false, 6, 1234, 22, 1000, false)[..40].to_vec(),
        ];
        let expressions = [
            "tcp port 443",
            "host 10.0.0.2 and tcp",
            "udp or icmp",
            "ip6 and tcp dst port 443",
            "tcp[tcpflags] & tcp-syn != 0",
            "greater 200",
            "not port 22",
            "portrange 1000-2000",
            "tcp and ip[8] = 64 and len < 100",
        ];
        let mut kept = 0;
        for expression in expressions {
            let program = compile(expression, pcap::Linktype::ETHERNET).unwrap();
            let filter = load(classic_instructions(&program), programs.as_fd(), attach)
                .unwrap_or_else(|err| panic!("{expression}: {err:#}"));
            for (index, frame) in frames.iter().enumerate() {
                let mut opts = libbpf_sys::bpf_test_run_opts {
                    sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
                    data_in: frame.as_ptr().cast(),
                    data_size_in: frame.len() as u32,
                    repeat: 1,
                    ..Default::default()
                };
                // SAFETY: the frame outlives the call; no output buffers.
                let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(filter.as_raw_fd(), &mut opts) };
                assert_eq!(rc, 0, "{expression}: test run failed on frame {index}");
                kept += usize::from(opts.retval == CAPTURED);
                assert_eq!(
                    opts.retval == CAPTURED,
                    program.filter(frame),
                    "{expression} on frame {index}: kernel returned {}",
                    opts.retval
                );
            }
        }
        // Both verdicts occurred: the comparison could have failed either way.
        assert!(kept > 0 && kept < expressions.len() * frames.len(), "{kept}");
    }
}
