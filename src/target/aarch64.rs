//! AArch64 machine code, as far as accessors go: which fields of its first
//! argument (x0) a small function loads, stores or takes the address of, and
//! through which pointers. A64 instructions are fixed 32-bit words, so only
//! the few forms accessors are built from are decoded; any other instruction
//! is taken to overwrite the register in its low five bits, which loses a
//! path at worst and never invents one.

use std::collections::BTreeSet;

use super::disasm::{Derived, FieldPath, MAX_INSTRUCTIONS, Walk};
use super::elf::ElfImage;

/// What an instruction does, in the terms the walk needs. Registers are
/// numbered 0-30; 31 is the zero register or sp, neither of which is tracked.
#[derive(Debug, PartialEq, Eq)]
enum Op {
    /// Loads or stores at [base + offset]; for a load, `loaded` is the
    /// register filled and whether it holds a whole 64-bit value.
    Memory {
        base: u8,
        offset: u64,
        loaded: Option<(u8, bool)>,
    },
    /// LDP/STP: two accesses, `size` bytes apart.
    Pair {
        base: u8,
        offset: u64,
        size: u64,
        loaded: Option<(u8, u8, bool)>,
    },
    /// ADD/SUB (immediate) on 64-bit registers, not setting flags.
    AddImmediate {
        dest: u8,
        source: u8,
        addend: u64,
    },
    /// MOV Xd, Xm (ORR with the zero register).
    Move {
        dest: u8,
        source: u8,
    },
    Return,
    Branch(u64),
    ConditionalBranch(u64),
    Call,
    /// An indirect jump, or an instruction that never falls through.
    Stop,
    /// No register written (NOP, PACIASP, BTI and other hints).
    Nothing,
    /// Anything else: it may write `written` (and `also`).
    Other {
        written: u8,
        also: Option<u8>,
    },
}

fn bits(word: u32, low: u32, count: u32) -> u32 {
    (word >> low) & ((1 << count) - 1)
}

/// `value` of `count` bits as a signed number, times `scale`.
fn signed(value: u32, count: u32, scale: i64) -> u64 {
    let shift = 32 - count;
    ((((value << shift) as i32) >> shift) as i64 * scale) as u64
}

fn decode(word: u32, pc: u64) -> Op {
    let rt = bits(word, 0, 5) as u8;
    let rn = bits(word, 5, 5) as u8;
    let size = bits(word, 30, 2);
    let simd = bits(word, 26, 1) == 1;
    // LDR/STR (unsigned immediate) and LDUR/STUR (unscaled immediate).
    let unsigned_offset = word & 0x3B00_0000 == 0x3900_0000;
    let unscaled = word & 0x3B20_0C00 == 0x3800_0000;
    if unsigned_offset || unscaled {
        let opc = bits(word, 22, 2);
        let offset = if unsigned_offset {
            u64::from(bits(word, 10, 12)) << size
        } else {
            signed(bits(word, 12, 9), 9, 1)
        };
        let prefetch = size == 3 && opc == 2;
        let loaded = (!simd && opc != 0 && !prefetch).then_some((rt, size == 3 && opc == 1));
        return Op::Memory {
            base: rn,
            offset,
            loaded,
        };
    }
    // LDP/STP with a signed offset (no writeback).
    if word & 0x3BC0_0000 & !0x0040_0000 == 0x2900_0000 && !simd {
        let load = bits(word, 22, 1) == 1;
        let wide = bits(word, 31, 1) == 1;
        let size = if wide { 8 } else { 4 };
        return Op::Pair {
            base: rn,
            offset: signed(bits(word, 15, 7), 7, size as i64),
            size,
            loaded: load.then_some((rt, bits(word, 10, 5) as u8, wide)),
        };
    }
    // Loads and stores with writeback (pre/post-index, single or pair)
    // change their base as well.
    let indexed = word & 0x3B20_0400 == 0x3800_0400;
    let pair_indexed = word & 0x3A80_0000 == 0x2880_0000;
    if indexed || pair_indexed {
        return Op::Other {
            written: rt,
            also: Some(rn),
        };
    }
    // ADD/SUB (immediate), 64-bit, without flags.
    if word & 0x1F80_0000 == 0x1100_0000 {
        let imm = u64::from(bits(word, 10, 12)) << (12 * bits(word, 22, 1));
        let sixty_four = bits(word, 31, 1) == 1;
        let sets_flags = bits(word, 29, 1) == 1;
        if sixty_four && !sets_flags {
            let subtract = bits(word, 30, 1) == 1;
            return Op::AddImmediate {
                dest: rt,
                source: rn,
                addend: if subtract { imm.wrapping_neg() } else { imm },
            };
        }
        return Op::Other {
            written: rt,
            also: None,
        };
    }
    if word & 0xFFE0_FFE0 == 0xAA00_03E0 {
        return Op::Move {
            dest: rt,
            source: bits(word, 16, 5) as u8,
        };
    }
    // RET, RETAA, RETAB.
    if word & 0xFFFF_FC1F == 0xD65F_0000 || word == 0xD65F_0BFF || word == 0xD65F_0FFF {
        return Op::Return;
    }
    match word & 0xFC00_0000 {
        0x1400_0000 => return Op::Branch(pc.wrapping_add(signed(bits(word, 0, 26), 26, 4))),
        0x9400_0000 => return Op::Call,
        _ => {}
    }
    // B.cond, CBZ/CBNZ, TBZ/TBNZ.
    if word & 0xFF00_0010 == 0x5400_0000 || word & 0x7E00_0000 == 0x3400_0000 {
        return Op::ConditionalBranch(pc.wrapping_add(signed(bits(word, 5, 19), 19, 4)));
    }
    if word & 0x7E00_0000 == 0x3600_0000 {
        return Op::ConditionalBranch(pc.wrapping_add(signed(bits(word, 5, 14), 14, 4)));
    }
    // Branches to a register: BLR (and its authenticated forms) call, the
    // rest jump away.
    if word & 0xFE00_0000 == 0xD600_0000 {
        return if bits(word, 21, 2) == 1 { Op::Call } else { Op::Stop };
    }
    // Hints (NOP, PACIASP, AUTIASP, BTI...).
    if word & 0xFFFF_F01F == 0xD503_201F {
        return Op::Nothing;
    }
    // UDF, BRK, HLT and the other exception-generating instructions.
    if word & 0xFFFF_0000 == 0 || word & 0xFF00_0000 == 0xD400_0000 {
        return Op::Stop;
    }
    Op::Other {
        written: rt,
        also: None,
    }
}

/// See `disasm::field_paths`; this is its AArch64 half.
pub fn field_paths(image: &ElfImage, function: &str) -> Option<BTreeSet<FieldPath>> {
    // The procedure call standard lets a callee overwrite these.
    const CALLER_SAVED: std::ops::RangeInclusive<u8> = 0..=18;
    const LINK_REGISTER: u8 = 30;

    let mut walk = Walk::new(image, function, 0u8)?;
    while let Some((start, code, mut registers)) = walk.next_branch() {
        for (index, bytes) in code.chunks_exact(4).take(MAX_INSTRUCTIONS).enumerate() {
            if !walk.count_instruction() {
                return None;
            }
            let pc = start + 4 * index as u64;
            let word = u32::from_le_bytes(bytes.try_into().expect("chunks of four"));
            match decode(word, pc) {
                Op::Memory { base, offset, loaded } => {
                    let field = registers.get(&base).map(|pointer| pointer.field(offset));
                    if let Some(field) = &field {
                        walk.paths.insert(field.clone());
                    }
                    if let Some((register, whole)) = loaded {
                        registers.remove(&register);
                        if let Some(loads) = field.filter(|_| whole) {
                            registers.insert(register, Derived { loads, bias: 0 });
                        }
                    }
                }
                Op::Pair {
                    base,
                    offset,
                    size,
                    loaded,
                } => {
                    let fields = registers
                        .get(&base)
                        .map(|pointer| [pointer.field(offset), pointer.field(offset.wrapping_add(size))]);
                    if let Some(fields) = &fields {
                        walk.paths.extend(fields.iter().cloned());
                    }
                    if let Some((first, second, whole)) = loaded {
                        registers.remove(&first);
                        registers.remove(&second);
                        if let Some([one, two]) = fields.filter(|_| whole) {
                            registers.insert(first, Derived { loads: one, bias: 0 });
                            registers.insert(second, Derived { loads: two, bias: 0 });
                        }
                    }
                }
                Op::AddImmediate { dest, source, addend } => {
                    let moved = registers.get(&source).map(|pointer| Derived {
                        loads: pointer.loads.clone(),
                        bias: pointer.bias.wrapping_add(addend),
                    });
                    registers.remove(&dest);
                    if let Some(moved) = moved {
                        walk.paths.insert(moved.field(0));
                        registers.insert(dest, moved);
                    }
                }
                Op::Move { dest, source } => {
                    let copied = registers.get(&source).cloned();
                    registers.remove(&dest);
                    if let Some(copied) = copied {
                        registers.insert(dest, copied);
                    }
                }
                Op::Call => {
                    registers.retain(|register, _| !CALLER_SAVED.contains(register) && *register != LINK_REGISTER);
                }
                Op::Other { written, also } => {
                    registers.remove(&written);
                    if let Some(also) = also {
                        registers.remove(&also);
                    }
                }
                Op::Nothing => {}
                Op::ConditionalBranch(target) => walk.branch(target, registers.clone()),
                Op::Branch(target) => {
                    walk.branch(target, registers);
                    break;
                }
                Op::Return | Op::Stop => break,
            }
        }
    }
    Some(walk.paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::modules::openssl::layout::{self, CheckOutcome};
    use crate::modules::openssl::socket_bio::SocketBioLayout;

    const LIBSSL: &str = "/usr/lib/aarch64-linux-gnu/libssl.so.3";

    #[test]
    fn decodes_the_forms_accessors_use() {
        // ldr x0, [x0, #0x10]
        assert_eq!(
            decode(0xF940_0800, 0),
            Op::Memory {
                base: 0,
                offset: 0x10,
                loaded: Some((0, true))
            }
        );
        // ldr w0, [x1, #0x34]
        assert_eq!(
            decode(0xB940_3420, 0),
            Op::Memory {
                base: 1,
                offset: 0x34,
                loaded: Some((0, false))
            }
        );
        // ldur x1, [x0, #-8]
        assert_eq!(
            decode(0xF85F_8001, 0),
            Op::Memory {
                base: 0,
                offset: (-8i64) as u64,
                loaded: Some((1, true))
            }
        );
        // add x0, x0, #0x50 and sub x1, x2, #0x10
        assert_eq!(
            decode(0x9101_4000, 0),
            Op::AddImmediate {
                dest: 0,
                source: 0,
                addend: 0x50
            }
        );
        assert_eq!(
            decode(0xD100_4041, 0),
            Op::AddImmediate {
                dest: 1,
                source: 2,
                addend: (-0x10i64) as u64
            }
        );
        // ldp x1, x2, [x0, #0x20]
        assert_eq!(
            decode(0xA942_0801, 0),
            Op::Pair {
                base: 0,
                offset: 0x20,
                size: 8,
                loaded: Some((1, 2, true))
            }
        );
        // stp x29, x30, [sp, #-16]! writes back sp
        assert!(matches!(decode(0xA9BF_7BFD, 0), Op::Other { also: Some(31), .. }));
        assert_eq!(decode(0xAA01_03E0, 0), Op::Move { dest: 0, source: 1 });
        assert_eq!(decode(0xD65F_03C0, 0), Op::Return);
        assert_eq!(decode(0xD503_233F, 0), Op::Nothing, "paciasp");
        assert_eq!(decode(0x1400_0002, 0x100), Op::Branch(0x108));
        assert_eq!(decode(0xB4FF_FFE0, 0x100), Op::ConditionalBranch(0xFC), "cbz x0, .-4");
        assert_eq!(decode(0x9400_0000, 0), Op::Call);
        assert_eq!(decode(0xD63F_0020, 0), Op::Call, "blr x1");
        assert_eq!(decode(0xD61F_0020, 0), Op::Stop, "br x1");
    }

    #[test]
    fn arm64_libssl_accessors_confirm_the_openssl_3_0_layout() {
        let image = ElfImage::open(Path::new(LIBSSL)).unwrap();
        let checks = layout::check(layout::for_version("3.0.2").layout, &image);
        assert!(checks.iter().all(|c| c.outcome == CheckOutcome::Agrees), "{checks:?}");
        let older = layout::check(layout::for_version("1.1.1w").layout, &image);
        assert!(older.iter().any(|c| c.outcome == CheckOutcome::Disagrees), "{older:?}");
    }

    #[test]
    fn arm64_socket_bio_offsets_match_x86_64() {
        let derived = SocketBioLayout::derive(&ElfImage::open(Path::new(LIBSSL)).unwrap());
        assert_eq!(
            derived,
            Some(SocketBioLayout {
                ssl_rbio: 0x10,
                ssl_type_tagged: false,
                bio_method: 0x8,
                bio_num: 0x38,
            })
        );
    }

    #[test]
    fn arm64_boringssl_layout_is_chosen_by_its_accessors() {
        let libssl = ElfImage::open(Path::new("/usr/lib/aarch64-linux-gnu/android/libssl.so.0")).unwrap();
        let selection = layout::select_boringssl(&libssl).unwrap();
        assert_eq!(selection.layout.name, "boringssl android 13");
        assert!(selection.expected, "{:?}", selection.checks);
        assert_eq!(
            SocketBioLayout::derive(&libssl),
            Some(SocketBioLayout {
                ssl_rbio: 0x18,
                ssl_type_tagged: false,
                bio_method: 0,
                bio_num: 0x18,
            })
        );
    }
}
