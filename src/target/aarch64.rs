//! AArch64 machine code, as far as ecapture reads it: which fields of its
//! first argument (x0) a small function loads, stores or takes the address
//! of, and through which pointers; where a function's arguments come from at
//! its first call; what its first instruction is. A64 instructions are fixed
//! 32-bit words, so only the few forms these are built from are decoded; any
//! other instruction is taken to overwrite the register in its low five bits,
//! which loses a path or a match at worst and never invents one.

use std::collections::BTreeSet;

use super::disasm::{
    Derived, FieldPath, FirstCall, MAX_INSTRUCTIONS, ProbeSite, Source, StretchEnd, Walk, first_call_target,
};
use super::elf::{ElfImage, FunctionSymbol};

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
    /// BL to its target, or BLR (None).
    Call(Option<u64>),
    /// An indirect jump, or an instruction that never falls through.
    Stop,
    /// No register written (NOP, PACIASP, BTI and other hints).
    Nothing,
    /// Anything else: it may write these registers (31 fills the slots
    /// not used).
    Other {
        written: [u8; 3],
    },
}

/// The zero register or sp, by context; never tracked.
const SP_OR_ZERO: u8 = 31;

impl Op {
    /// The registers the instruction may write (31 standing for none).
    fn written(&self) -> Vec<u8> {
        match *self {
            Op::Memory { loaded, .. } => loaded.map(|(register, _)| register).into_iter().collect(),
            Op::Pair { loaded, .. } => loaded.map_or(Vec::new(), |(first, second, _)| vec![first, second]),
            Op::AddImmediate { dest, .. } | Op::Move { dest, .. } => vec![dest],
            Op::Other { written } => written.to_vec(),
            Op::Return | Op::Branch(_) | Op::ConditionalBranch(_) | Op::Call(_) | Op::Stop | Op::Nothing => Vec::new(),
        }
    }
}

fn bits(word: u32, low: u32, count: u32) -> u32 {
    (word >> low) & ((1 << count) - 1)
}

/// `value` of `count` bits as a signed number, times `scale`.
/// The instruction words of `code`, which starts at `start`, with their addresses.
fn words(code: &[u8], start: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
    code.chunks_exact(4).enumerate().map(move |(index, bytes)| {
        (
            start + 4 * index as u64,
            u32::from_le_bytes(bytes.try_into().expect("chunks of four")),
        )
    })
}

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
    if indexed {
        let load = !simd && bits(word, 22, 2) != 0;
        return Op::Other {
            written: [if load { rt } else { SP_OR_ZERO }, rn, SP_OR_ZERO],
        };
    }
    if pair_indexed {
        let load = !simd && bits(word, 22, 1) == 1;
        let (first, second) = if load {
            (rt, bits(word, 10, 5) as u8)
        } else {
            (SP_OR_ZERO, SP_OR_ZERO)
        };
        return Op::Other {
            written: [first, second, rn],
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
            written: [rt, SP_OR_ZERO, SP_OR_ZERO],
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
        0x9400_0000 => return Op::Call(Some(pc.wrapping_add(signed(bits(word, 0, 26), 26, 4)))),
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
        return if bits(word, 21, 2) == 1 {
            Op::Call(None)
        } else {
            Op::Stop
        };
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
        written: [rt, SP_OR_ZERO, SP_OR_ZERO],
    }
}

/// Whether the code from `start` to `end` loads `[x0 + field]` while x0
/// still holds the first argument; the AArch64 half of the same search in
/// `modules::gnutls::keylog`.
pub fn loads_first_argument_field(image: &ElfImage, start: u64, end: u64, field: u64) -> bool {
    let Some(code) = image.code_between(start, end) else {
        return false;
    };
    for (pc, word) in words(code, start) {
        match decode(word, pc) {
            Op::Memory {
                base: 0,
                offset,
                loaded: Some(_),
            } if offset == field => return true,
            Op::Call(_) | Op::Stop | Op::Return => return false,
            op if op.written().contains(&0) => return false,
            _ => {}
        }
    }
    false
}

/// A value the constant flow follows through registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// An address or number the code computed (ADRP, ADD, MOVZ).
    Constant(u64),
    /// An address on the stack (ADD from sp).
    Stack,
    /// What the call to this address returned.
    Returned(u64),
}

/// A direct call, with what x0-x7 held at it, and which of them the
/// instructions just before it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowCall {
    pub target: u64,
    pub arguments: [Option<Value>; 8],
    pub set_just_before: [bool; 8],
}

/// What a run of AArch64 code does with the values it computes, read in
/// order without following branches: stores and loads at addresses it
/// computed, and its direct calls. Whoever uses it checks what it finds.
#[derive(Debug, Default)]
pub struct ConstantFlow {
    /// (address, bytes, value stored).
    pub stores: Vec<(u64, u64, Option<Value>)>,
    /// Addresses loaded from.
    pub loads: Vec<u64>,
    /// Addresses computed with ADRP and ADD, in order.
    pub computed: Vec<u64>,
    pub calls: Vec<FlowCall>,
}

/// How many instructions before a call count as setting up its arguments.
const ARGUMENT_WINDOW: usize = 8;

pub fn constant_flow(image: &ElfImage, start: u64, end: u64) -> ConstantFlow {
    const CALLER_SAVED: std::ops::RangeInclusive<u8> = 0..=18;
    const LINK_REGISTER: u8 = 30;
    let mut flow = ConstantFlow::default();
    let Some(code) = image.code_between(start, end) else {
        return flow;
    };
    let mut registers: std::collections::HashMap<u8, Value> = std::collections::HashMap::new();
    // The index of the instruction that last wrote each register.
    let mut written_at = [usize::MAX; 32];
    let value_of = |registers: &std::collections::HashMap<u8, Value>, register: u8| {
        if register == SP_OR_ZERO {
            Some(Value::Constant(0))
        } else {
            registers.get(&register).copied()
        }
    };
    for (index, (pc, word)) in words(code, start).enumerate() {
        let rd = bits(word, 0, 5) as u8;
        // ADRP: the 4 KiB page of pc plus a signed 33-bit offset.
        if word & 0x9F00_0000 == 0x9000_0000 {
            let immediate = (bits(word, 5, 19) << 2) | bits(word, 29, 2);
            let page = (pc & !0xFFF).wrapping_add(signed(immediate, 21, 4096));
            registers.insert(rd, Value::Constant(page));
            written_at[usize::from(rd)] = index;
            continue;
        }
        // MOVZ, 32 or 64 bits.
        if word & 0x7F80_0000 == 0x5280_0000 {
            let value = u64::from(bits(word, 5, 16)) << (16 * bits(word, 21, 2));
            registers.insert(rd, Value::Constant(value));
            written_at[usize::from(rd)] = index;
            continue;
        }
        let simd = bits(word, 26, 1) == 1;
        let op = decode(word, pc);
        for register in op.written().into_iter().filter(|&register| register < 32) {
            written_at[usize::from(register)] = index;
        }
        match op {
            Op::Memory { base, offset, loaded } => {
                let address = match value_of(&registers, base) {
                    Some(Value::Constant(base)) if base != 0 => Some(base.wrapping_add(offset)),
                    _ => None,
                };
                match loaded {
                    Some((register, _)) => {
                        flow.loads.extend(address);
                        registers.remove(&register);
                    }
                    None if !simd && bits(word, 22, 2) == 0 => {
                        if let Some(address) = address {
                            flow.stores
                                .push((address, 1 << bits(word, 30, 2), value_of(&registers, rd)));
                        }
                    }
                    None => {}
                }
            }
            Op::Pair {
                base,
                offset,
                size,
                loaded,
            } => match loaded {
                Some((first, second, _)) => {
                    registers.remove(&first);
                    registers.remove(&second);
                }
                None => {
                    if let Some(Value::Constant(base)) = value_of(&registers, base).filter(|_| base != SP_OR_ZERO) {
                        let address = base.wrapping_add(offset);
                        let second = bits(word, 10, 5) as u8;
                        flow.stores.push((address, size, value_of(&registers, rd)));
                        flow.stores
                            .push((address.wrapping_add(size), size, value_of(&registers, second)));
                    }
                }
            },
            Op::AddImmediate { dest, source, addend } => {
                let value = match (source, registers.get(&source)) {
                    (SP_OR_ZERO, _) => Some(Value::Stack),
                    (_, Some(Value::Constant(base))) => {
                        flow.computed.push(base.wrapping_add(addend));
                        Some(Value::Constant(base.wrapping_add(addend)))
                    }
                    _ => None,
                };
                registers.remove(&dest);
                if let Some(value) = value {
                    registers.insert(dest, value);
                }
            }
            Op::Move { dest, source } => match value_of(&registers, source) {
                Some(value) => {
                    registers.insert(dest, value);
                }
                None => {
                    registers.remove(&dest);
                }
            },
            Op::Call(target) => {
                if let Some(target) = target {
                    let arguments = std::array::from_fn(|register| registers.get(&(register as u8)).copied());
                    let set_just_before =
                        std::array::from_fn(|register| index.saturating_sub(written_at[register]) <= ARGUMENT_WINDOW);
                    flow.calls.push(FlowCall {
                        target,
                        arguments,
                        set_just_before,
                    });
                }
                registers.retain(|register, _| !CALLER_SAVED.contains(register) && *register != LINK_REGISTER);
                if let Some(target) = target {
                    registers.insert(0, Value::Returned(target));
                }
            }
            Op::Other { written } => {
                // MOV Wd, Wm (ORR with the zero register) keeps a small constant.
                let moved = (word & 0x7FE0_FFE0 == 0x2A00_03E0)
                    .then(|| value_of(&registers, bits(word, 16, 5) as u8))
                    .flatten();
                for register in written {
                    registers.remove(&register);
                }
                if let Some(value) = moved {
                    registers.insert(rd, value);
                }
            }
            Op::Return | Op::Stop | Op::Branch(_) | Op::ConditionalBranch(_) | Op::Nothing => {}
        }
    }
    flow
}

/// The fields a function loads, one through the other, from what its first
/// call returns: `PR_FileDesc2NativeHandle`'s walk to the descriptor.
pub fn loads_from_first_call_result(image: &ElfImage, start: u64, end: u64) -> Vec<u64> {
    let Some(code) = image.code_between(start, end) else {
        return Vec::new();
    };
    let mut holder = None;
    let mut fields = Vec::new();
    for (pc, word) in words(code, start) {
        match decode(word, pc) {
            Op::Call(_) if holder.is_none() => holder = Some(0),
            Op::Memory {
                base,
                offset,
                loaded: Some((register, _)),
            } if Some(base) == holder => {
                fields.push(offset);
                holder = Some(register);
            }
            Op::Return | Op::Stop | Op::Call(_) if holder.is_some() => break,
            _ => {}
        }
    }
    fields
}

/// The 8- and 16-byte loads (LDR, LDP; general or vector registers) from a
/// base register other than sp, in order: (base, offset, bytes).
pub fn wide_loads(image: &ElfImage, start: u64, end: u64) -> Vec<(u8, u64, u64)> {
    let Some(code) = image.code_between(start, end) else {
        return Vec::new();
    };
    let mut loads = Vec::new();
    for bytes in code.chunks_exact(4) {
        let word = u32::from_le_bytes(bytes.try_into().expect("chunks of four"));
        let base = bits(word, 5, 5) as u8;
        if base == SP_OR_ZERO {
            continue;
        }
        let (size, opc, simd) = (bits(word, 30, 2), bits(word, 22, 2), bits(word, 26, 1) == 1);
        // LDR (unsigned offset): Xt, or Qt (size 0, opc 3).
        if word & 0x3B00_0000 == 0x3900_0000 {
            let bytes = match (simd, size, opc) {
                (false, 3, 1) => 8,
                (true, 0, 3) => 16,
                _ => continue,
            };
            loads.push((base, u64::from(bits(word, 10, 12)) * bytes, bytes));
        }
        // LDP (signed offset): Xt pairs (opc 2) or Qt pairs (simd, opc 2).
        if word & 0x3BC0_0000 == 0x2940_0000 && bits(word, 30, 2) == 2 {
            let bytes = if simd { 16 } else { 8 };
            let offset = signed(bits(word, 15, 7), 7, bytes as i64);
            loads.push((base, offset, bytes));
            loads.push((base, offset.wrapping_add(bytes), bytes));
        }
    }
    loads
}

/// Whether the function at `address` returns at once (after hints such as
/// BTI): an empty function.
pub fn returns_at_once(image: &ElfImage, address: u64) -> bool {
    let Some(code) = image.code_between(address, address.saturating_add(16)) else {
        return false;
    };
    code.chunks_exact(4)
        .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("chunks of four")))
        .map(|word| decode(word, address))
        .find(|op| *op != Op::Nothing)
        == Some(Op::Return)
}

/// The addresses of the return instructions from `start` to `end`.
pub fn return_instructions(image: &ElfImage, start: u64, end: u64) -> Vec<u64> {
    let Some(code) = image.code_between(start, end) else {
        return Vec::new();
    };
    words(code, start)
        .filter(|&(pc, word)| decode(word, pc) == Op::Return)
        .map(|(pc, _)| pc)
        .collect()
}

/// The slot a PLT stub at `stub` jumps through: ADRP x16, then LDR x17
/// from that page.
pub fn plt_slot(image: &ElfImage, stub: u64) -> Option<u64> {
    constant_flow(image, stub, stub.checked_add(16)?).loads.first().copied()
}

/// See `disasm::field_paths`; this is its AArch64 half.
pub fn field_paths(image: &ElfImage, function: &str) -> Option<BTreeSet<FieldPath>> {
    // The procedure call standard lets a callee overwrite these.
    const CALLER_SAVED: std::ops::RangeInclusive<u8> = 0..=18;
    const LINK_REGISTER: u8 = 30;

    let mut walk = Walk::new(image, function, 0u8)?;
    while let Some((start, code, mut registers)) = walk.next_branch() {
        for (pc, word) in words(code, start).take(MAX_INSTRUCTIONS) {
            if !walk.count_instruction() {
                return None;
            }
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
                Op::Call(_) => {
                    registers.retain(|register, _| !CALLER_SAVED.contains(register) && *register != LINK_REGISTER);
                }
                Op::Other { written } => {
                    for register in written {
                        registers.remove(&register);
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

/// See `disasm::shared_callee`; the first direct call of `name` and where
/// its arguments came from, following tail jumps.
pub(super) fn first_call(image: &ElfImage, name: &str) -> Option<FirstCall> {
    // Register 31 is sp as the source of ADD (immediate), the zero register
    // elsewhere.
    let mut sources = [Source::Other; 32];
    for (index, source) in sources.iter_mut().take(6).enumerate() {
        *source = Source::Argument(index);
    }
    let target = first_call_target(image, name, |address, code| {
        for (pc, word) in words(code, address).take(MAX_INSTRUCTIONS) {
            match decode(word, pc) {
                Op::Call(Some(target)) => return StretchEnd::Call(target),
                Op::Branch(target) => return StretchEnd::Jump(target),
                Op::Call(None) | Op::Return | Op::Stop => return StretchEnd::Lost,
                Op::ConditionalBranch(_) | Op::Nothing => {}
                Op::Memory { loaded, .. } => {
                    if let Some((register, _)) = loaded {
                        sources[usize::from(register)] = Source::Other;
                    }
                }
                Op::Pair { loaded, .. } => {
                    if let Some((first, second, _)) = loaded {
                        sources[usize::from(first)] = Source::Other;
                        sources[usize::from(second)] = Source::Other;
                    }
                }
                Op::AddImmediate { dest, source, addend } => {
                    sources[usize::from(dest)] = match sources[usize::from(source)] {
                        _ if source == SP_OR_ZERO => Source::StackAddress,
                        Source::StackAddress => Source::StackAddress,
                        unchanged if addend == 0 => unchanged,
                        _ => Source::Other,
                    };
                }
                Op::Move { dest, source } => {
                    sources[usize::from(dest)] = if source == SP_OR_ZERO {
                        Source::Other
                    } else {
                        sources[usize::from(source)]
                    };
                }
                Op::Other { written } => {
                    for register in written {
                        sources[usize::from(register)] = Source::Other;
                    }
                }
            }
        }
        StretchEnd::Lost
    })?;
    Some((target, sources[..6].try_into().expect("six argument registers")))
}

/// The instruction forms a function may begin with, by mask and value, and
/// whether the kernel simulates them (branches, ADR/ADRP) instead of
/// stepping them out of line. A64 instructions are aligned words, so the
/// entry is always a boundary; nothing is skipped.
const ENTRY_FORMS: [(u32, u32, &str, bool); 22] = [
    (0xFC00_0000, 0x1400_0000, "b", true),
    (0xFC00_0000, 0x9400_0000, "bl", true),
    (0xFF00_0010, 0x5400_0000, "b.cond", true),
    (0x7F00_0000, 0x3400_0000, "cbz", true),
    (0x7F00_0000, 0x3500_0000, "cbnz", true),
    (0x7F00_0000, 0x3600_0000, "tbz", true),
    (0x7F00_0000, 0x3700_0000, "tbnz", true),
    (0x9F00_0000, 0x1000_0000, "adr", true),
    (0x9F00_0000, 0x9000_0000, "adrp", true),
    (0xFFFF_FC1F, 0xD63F_0000, "blr", true),
    (0xFFFF_FC1F, 0xD65F_0000, "ret", true),
    (0xFFFF_FFFF, 0xD503_201F, "nop", false),
    (0xFFFF_FFFF, 0xD503_233F, "paciasp", false),
    (0xFFFF_FFFF, 0xD503_237F, "pacibsp", false),
    (0xFFFF_FF3F, 0xD503_241F, "bti", false),
    (0x3E40_0000, 0x2800_0000, "stp", false),
    (0x3E40_0000, 0x2840_0000, "ldp", false),
    (0x7F80_0000, 0x1100_0000, "add", false),
    (0x7F80_0000, 0x5100_0000, "sub", false),
    (0x7FE0_FFE0, 0x2A00_03E0, "mov", false),
    (0x3FC0_0000, 0x3900_0000, "str", false),
    (0x3FC0_0000, 0x3940_0000, "ldr", false),
];

/// See `disasm::probe_site`: on AArch64 the probe stays at the entry.
pub fn probe_site(image: &ElfImage, symbol: &FunctionSymbol) -> Option<ProbeSite> {
    let code = image.function_code(symbol)?;
    let word = u32::from_le_bytes(code.get(..4)?.try_into().ok()?);
    if decode(word, symbol.address) == Op::Stop {
        return None;
    }
    site_at(image, symbol.address, 0)
}

/// See `disasm::site_at`.
pub fn site_at(image: &ElfImage, address: u64, offset: u64) -> Option<ProbeSite> {
    if !address.is_multiple_of(4) {
        return None;
    }
    let word = u32::from_le_bytes(image.code_between(address, address.checked_add(4)?)?.try_into().ok()?);
    let form = ENTRY_FORMS.iter().find(|&&(mask, value, _, _)| word & mask == value);
    let emulated = form.is_some_and(|&(_, _, _, simulated)| simulated);
    Some(ProbeSite {
        mnemonic: form.map_or_else(
            || format!("instruction {word:#010x}"),
            |&(_, _, name, _)| name.to_string(),
        ),
        emulated,
        offset,
        cost: if emulated {
            "simulated by the kernel"
        } else {
            "single-stepped out of line"
        },
    })
}

/// The B.LS of the stack-bound check a Go function with a frame begins with
/// (`ldr x16, [x28, #16]; [sub x17, sp, #N;] cmp sp|x17, x16`): see
/// `disasm::go_stack_check_branch`. Before it only x16, x17 (Go's scratch
/// registers) and the flags are written.
pub fn go_stack_check_branch(image: &ElfImage, function: &FunctionSymbol) -> Option<u64> {
    const B_LS: (u32, u32) = (0xFF00_001F, 0x5400_0009);
    let code = image.code_between(function.address, function.address.checked_add(16)?)?;
    for (pc, word) in words(code, function.address) {
        let scratch = |register: u8| matches!(register, 16 | 17 | SP_OR_ZERO);
        match decode(word, pc) {
            Op::ConditionalBranch(_) if word & B_LS.0 == B_LS.1 => return Some(pc),
            Op::Memory {
                loaded: Some((loaded, _)),
                ..
            } if scratch(loaded) => {}
            Op::AddImmediate { dest, .. } | Op::Move { dest, .. } if scratch(dest) => {}
            Op::Other { written } if written.into_iter().all(scratch) => {}
            _ => return None,
        }
    }
    None
}

/// Where a Go function's receiver stays for its whole body: see
/// `disasm::go_receiver_spill`. The prologue saves the link register as it
/// makes the frame (`str x30, [sp, #-N]!`), and the receiver's slot is the
/// first above the frame, as on x86-64.
pub fn go_receiver_spill(image: &ElfImage, function: &FunctionSymbol) -> Option<u64> {
    let code = image.code_between(function.address, function.address.checked_add(function.size)?)?;
    let stack_check = go_stack_check_branch(image, function)?;
    receiver_spill_in(&words(code, function.address).collect::<Vec<_>>(), stack_check)
}

/// How far a prologue instruction moves sp down to make a frame:
/// `str x30, [sp, #-N]!`, `stp x29, x30, [sp, #-N]!` or `sub sp, sp, #N`.
fn stack_allocation(word: u32) -> Option<u64> {
    let down = |offset: u64| {
        (offset as i64)
            .checked_neg()
            .filter(|bytes| *bytes > 0)
            .map(|bytes| bytes as u64)
    };
    let from_sp = bits(word, 5, 5) == u32::from(SP_OR_ZERO);
    if word & 0xFFE0_0C00 == 0xF800_0C00 && from_sp {
        return down(signed(bits(word, 12, 9), 9, 1));
    }
    if word & 0xFFC0_0000 == 0xA980_0000 && from_sp {
        return down(signed(bits(word, 15, 7), 7, 8));
    }
    match decode(word, 0) {
        Op::AddImmediate {
            dest: SP_OR_ZERO,
            source: SP_OR_ZERO,
            addend,
        } => down(addend),
        _ => None,
    }
}

/// Whether `word` writes sp: a load or store that writes its base back, or
/// an ADD/SUB (immediate or extended register) into sp.
fn writes_sp(word: u32) -> bool {
    let base_sp = bits(word, 5, 5) == u32::from(SP_OR_ZERO);
    let dest_sp = bits(word, 0, 5) == u32::from(SP_OR_ZERO);
    let indexed = word & 0x3B20_0400 == 0x3800_0400;
    let pair_indexed = word & 0x3A80_0000 == 0x2880_0000;
    let sets_flags = bits(word, 29, 1) == 1;
    let add_immediate = word & 0x1F80_0000 == 0x1100_0000;
    let add_extended = word & 0x1FE0_0000 == 0x0B20_0000;
    ((indexed || pair_indexed) && base_sp) || ((add_immediate || add_extended) && dest_sp && !sets_flags)
}

/// The bytes a store at [sp + offset] may write, as (offset, size); None for
/// loads and for any other base. A writeback form, which stores at sp or at
/// sp + offset, counts as both.
fn sp_store(word: u32) -> Option<(i64, u64)> {
    if bits(word, 5, 5) != u32::from(SP_OR_ZERO) {
        return None;
    }
    let simd = bits(word, 26, 1) == 1;
    let opc = bits(word, 22, 2);
    let (offset, size, writeback) = if word & 0x3A00_0000 == 0x2800_0000 {
        if bits(word, 22, 1) == 1 {
            return None;
        }
        let element = if simd {
            4u64 << bits(word, 30, 2)
        } else {
            4 << bits(word, 31, 1)
        };
        let offset = signed(bits(word, 15, 7), 7, element as i64) as i64;
        (offset, 2 * element, bits(word, 23, 1) == 1)
    } else if word & 0x3A00_0000 == 0x3800_0000 {
        let store = if simd { opc & 1 == 0 } else { opc == 0 };
        if !store {
            return None;
        }
        let size = if simd && opc & 2 != 0 {
            16
        } else {
            1u64 << bits(word, 30, 2)
        };
        if word & 0x3B00_0000 == 0x3900_0000 {
            ((u64::from(bits(word, 10, 12)) * size) as i64, size, false)
        } else if bits(word, 21, 1) == 1 {
            // At sp plus a register: anywhere.
            return Some((-(1 << 40), 1 << 41));
        } else {
            (signed(bits(word, 12, 9), 9, 1) as i64, size, bits(word, 10, 1) == 1)
        }
    } else {
        return None;
    };
    if writeback {
        return Some((offset.min(0), size + offset.unsigned_abs()));
    }
    Some((offset, size))
}

fn receiver_spill_in(code: &[(u64, u32)], stack_check: u64) -> Option<u64> {
    let mut frame = 0u64;
    let mut spill = None;
    for (index, &(pc, word)) in code.iter().enumerate() {
        if pc == stack_check {
            continue;
        }
        if let Some(bytes) = stack_allocation(word) {
            frame = frame.checked_add(bytes)?;
            continue;
        }
        // str x0, [sp, #slot]
        if word & 0xFFC0_03FF == 0xF900_03E0 {
            let slot = u64::from(bits(word, 10, 12)) * 8;
            if Some(slot) == frame.checked_add(8) {
                spill = Some((index, slot));
                break;
            }
        }
        let op = decode(word, pc);
        let flows_on = matches!(
            op,
            Op::Memory { .. }
                | Op::Pair { .. }
                | Op::AddImmediate { .. }
                | Op::Move { .. }
                | Op::Other { .. }
                | Op::Nothing
        );
        if !flows_on || op.written().contains(&0) || writes_sp(word) {
            return None;
        }
    }
    let (spill_index, slot) = spill?;
    let slot_bytes = slot as i128..slot as i128 + 8;
    let overlaps_slot = |start: i64, size: u64| {
        let (start, end) = (i128::from(start), i128::from(start) + i128::from(size.max(1)));
        start < slot_bytes.end && end > slot_bytes.start
    };
    for (index, &(pc, word)) in code.iter().enumerate().skip(spill_index + 1) {
        if sp_store(word).is_some_and(|(offset, size)| overlaps_slot(offset, size)) {
            return None;
        }
        if let Op::AddImmediate {
            dest,
            source: SP_OR_ZERO,
            addend,
        } = decode(word, pc)
            && dest != SP_OR_ZERO
            && overlaps_slot(addend as i64, 1)
        {
            return None;
        }
        let epilogue = code[index + 1..]
            .iter()
            .take(2)
            .any(|&(next_pc, next)| matches!(decode(next, next_pc), Op::Return | Op::Branch(_)));
        if writes_sp(word) && !epilogue {
            return None;
        }
    }
    Some(slot)
}

/// The addresses of `function`'s BL instructions to `callee`.
pub fn calls_of(image: &ElfImage, function: &FunctionSymbol, callee: u64) -> Vec<u64> {
    let Some(code) = image.code_between(function.address, function.address.saturating_add(function.size)) else {
        return Vec::new();
    };
    words(code, function.address)
        .filter(|&(pc, word)| decode(word, pc) == Op::Call(Some(callee)))
        .map(|(pc, _)| pc)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::modules::openssl::layout::{self, CheckOutcome};
    use crate::modules::openssl::socket_bio::SocketBioLayout;
    use crate::target::disasm;

    const LIBSSL: &str = "/usr/lib/aarch64-linux-gnu/libssl.so.3";
    const BORINGSSL: &str = "/usr/lib/aarch64-linux-gnu/android/libssl.so.0";

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
        assert_eq!(decode(0xA9BF_7BFD, 0), Op::Other { written: [31, 31, 31] });
        // ldp x0, x1, [sp], #16 loads both and writes back sp
        assert_eq!(decode(0xA8C1_07E0, 0), Op::Other { written: [0, 1, 31] });
        assert_eq!(decode(0xAA01_03E0, 0), Op::Move { dest: 0, source: 1 });
        assert_eq!(decode(0xD65F_03C0, 0), Op::Return);
        assert_eq!(decode(0xD503_233F, 0), Op::Nothing, "paciasp");
        assert_eq!(decode(0x1400_0002, 0x100), Op::Branch(0x108));
        assert_eq!(decode(0xB4FF_FFE0, 0x100), Op::ConditionalBranch(0xFC), "cbz x0, .-4");
        assert_eq!(decode(0x97FF_FF81, 0x35970), Op::Call(Some(0x35774)), "bl .-0x1fc");
        assert_eq!(decode(0xD63F_0020, 0), Op::Call(None), "blr x1");
        assert_eq!(decode(0xD61F_0020, 0), Op::Stop, "br x1");
    }

    #[test]
    fn finds_the_internal_functions_behind_the_arm64_ssl_api() {
        let image = ElfImage::open(Path::new(LIBSSL)).unwrap();
        let write = disasm::shared_callee(&image, "SSL_write", "SSL_write_ex").expect("ssl_write_internal");
        let read = disasm::shared_callee(&image, "SSL_read", "SSL_read_ex").expect("ssl_read_internal");
        // SSL_write: `mov x3, sp; bl 0x35b30`; SSL_write_ex: `bl 0x35b30`.
        assert_eq!((write.symbol.address, write.length_argument), (0x35b30, 4));
        assert_eq!((read.symbol.address, read.length_argument), (0x35774, 4));
        assert!(disasm::shared_callee(&image, "SSL_write", "SSL_read_ex").is_none());
        let boringssl = ElfImage::open(Path::new(BORINGSSL)).unwrap();
        assert!(disasm::shared_callee(&boringssl, "SSL_write", "SSL_write_ex").is_none());
    }

    #[test]
    fn tells_simulated_probe_sites_from_stepped_ones() {
        let image = ElfImage::open(Path::new(LIBSSL)).unwrap();
        let internal = disasm::shared_callee(&image, "SSL_write", "SSL_write_ex").unwrap();
        let site = disasm::probe_site(&image, &internal.symbol).unwrap();
        assert_eq!(site.to_string(), "sub: single-stepped out of line");
        let simulated = disasm::probe_site(&image, &image.function("SSL_get_peer_cert_chain").unwrap()).unwrap();
        assert_eq!(
            (simulated.mnemonic.as_str(), simulated.emulated, simulated.offset),
            ("cbz", true, 0)
        );
        let pair = disasm::probe_site(&image, &image.function("SSL_write_ex").unwrap()).unwrap();
        assert_eq!((pair.mnemonic.as_str(), pair.emulated), ("stp", false));
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
        let libssl = ElfImage::open(Path::new(BORINGSSL)).unwrap();
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

    #[test]
    fn finds_where_a_go_function_keeps_its_receiver() {
        // Go 1.19's Read: stack check, `str x30, [sp, #-112]!`, the frame
        // pointer, the spill at 120; a call, and an epilogue.
        const PROLOGUE: [u32; 6] = [
            0xF940_0B90,
            0xEB30_63FF,
            0x5400_1B89,
            0xF819_0FFE,
            0xF81F_83FD,
            0xD100_23FD,
        ];
        const SPILL: u32 = 0xF900_3FE0; // str x0, [sp, #120]
        const CALL: u32 = 0x9400_0000;
        const EPILOGUE: [u32; 4] = [0xF940_3FE0, 0xA97F_FBFD, 0x9101_C3FF, 0xD65F_03C0];
        let b_ls = 0x1008;
        let code = |middle: &[u32], before_spill: &[u32]| -> Vec<(u64, u32)> {
            let words = [&PROLOGUE[..], before_spill, &[SPILL], middle, &EPILOGUE[..]].concat();
            words
                .into_iter()
                .enumerate()
                .map(|(index, word)| (0x1000 + 4 * index as u64, word))
                .collect()
        };
        assert_eq!(receiver_spill_in(&code(&[CALL], &[]), b_ls), Some(120));
        // Stores beside the slot, as of the other arguments, are fine.
        let neighbours = [0xF900_47E2, 0xF900_43E1, 0xA904_7FFF, CALL];
        assert_eq!(receiver_spill_in(&code(&neighbours, &[]), b_ls), Some(120));
        for (middle, before_spill) in [
            (&[CALL, 0xF900_3FE1][..], &[][..]), // str x1, [sp, #120]
            (&[0xA907_FFFF, CALL], &[]),         // stp xzr, xzr, [sp, #112]
            (&[0x9101_E3E1, CALL], &[]),         // add x1, sp, #120
            (&[0xD100_43FF, CALL], &[]),         // sub sp, sp, #16
            (&[CALL], &[0xAA03_03E0]),           // mov x0, x3 before the spill
        ] {
            assert_eq!(
                receiver_spill_in(&code(middle, before_spill), b_ls),
                None,
                "{middle:x?} {before_spill:x?}"
            );
        }
        assert_eq!(
            receiver_spill_in(&code(&[CALL], &[]), 0x1004),
            None,
            "no stack check there"
        );
    }
}
