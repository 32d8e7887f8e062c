//! Reading machine code: which fields of its first argument a small function
//! touches. Used to check struct layouts against the library at hand.

use std::collections::BTreeSet;

use crate::target::elf::{ElfImage, FunctionSymbol};

/// Longest stretch of an accessor we decode before giving up.
#[cfg(target_arch = "x86_64")]
const MAX_INSTRUCTIONS: usize = 64;

/// Displacements of every memory operand based on the function's first
/// argument (or a register copied from it), on the straight path from its
/// entry to its first return or tail jump. None when the function is missing
/// or the architecture has no decoder here.
#[cfg(target_arch = "x86_64")]
pub fn first_argument_offsets(image: &ElfImage, function: &str) -> Option<BTreeSet<u64>> {
    use iced_x86::{
        Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
    };

    let symbol = image.function(function)?;
    let code = image.function_code(&symbol)?;
    let mut decoder = Decoder::with_ip(64, code, symbol.address, DecoderOptions::NONE);
    let mut info_factory = InstructionInfoFactory::new();
    let mut holders: BTreeSet<Register> = BTreeSet::from([Register::RDI]);
    let mut offsets = BTreeSet::new();
    for instruction in decoder.iter().take(MAX_INSTRUCTIONS) {
        if instruction.is_invalid() {
            return None;
        }
        let base = instruction.memory_base().full_register();
        if (0..instruction.op_count()).any(|i| instruction.op_kind(i) == OpKind::Memory)
            && holders.contains(&base)
            && instruction.memory_index() == Register::None
        {
            offsets.insert(instruction.memory_displacement64());
        }
        let copies_argument = instruction.mnemonic() == Mnemonic::Mov
            && instruction.op0_kind() == OpKind::Register
            && instruction.op1_kind() == OpKind::Register
            && holders.contains(&instruction.op1_register().full_register());
        let written: Vec<Register> = info_factory
            .info(&instruction)
            .used_registers()
            .iter()
            .filter(|used| {
                matches!(
                    used.access(),
                    OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite
                )
            })
            .map(|used| used.register().full_register())
            .collect();
        for register in written {
            holders.remove(&register);
        }
        if copies_argument {
            holders.insert(instruction.op0_register().full_register());
        }
        if matches!(
            instruction.flow_control(),
            FlowControl::Return | FlowControl::UnconditionalBranch
        ) {
            break;
        }
    }
    Some(offsets)
}

/// The function that both `plain` and `extended` call first, when `extended`
/// passes its four arguments through unchanged (OpenSSL's SSL_write and
/// SSL_write_ex both call ssl_write_internal(ssl, buf, num, &written)).
/// Hooking it catches both entry points and BIO users that call it directly;
/// its address is a call target the compiler emitted, so an instruction
/// boundary, and it is further checked to decode and to lie in `.text`.
#[cfg(target_arch = "x86_64")]
pub fn shared_callee(image: &ElfImage, plain: &str, extended: &str) -> Option<FunctionSymbol> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, OpAccess, OpKind, Register};

    const ARGUMENTS: [Register; 4] = [Register::RDI, Register::RSI, Register::RDX, Register::RCX];
    // Returns the target of the first direct call, and whether the argument
    // registers were still untouched when it was made.
    let first_call = |name: &str| -> Option<(u64, bool)> {
        let symbol = image.function(name)?;
        let mut decoder = Decoder::with_ip(64, image.function_code(&symbol)?, symbol.address, DecoderOptions::NONE);
        let mut info_factory = InstructionInfoFactory::new();
        let mut arguments_intact = true;
        for instruction in decoder.iter().take(MAX_INSTRUCTIONS) {
            if instruction.is_invalid() {
                return None;
            }
            match instruction.flow_control() {
                FlowControl::Call if instruction.op0_kind() == OpKind::NearBranch64 => {
                    return Some((instruction.near_branch_target(), arguments_intact));
                }
                FlowControl::Call | FlowControl::IndirectCall | FlowControl::Return => return None,
                FlowControl::UnconditionalBranch | FlowControl::IndirectBranch => return None,
                _ => {}
            }
            let clobbers = info_factory.info(&instruction).used_registers().iter().any(|used| {
                matches!(
                    used.access(),
                    OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite
                ) && ARGUMENTS.contains(&used.register().full_register())
            });
            arguments_intact &= !clobbers;
        }
        None
    };
    let (target, intact) = first_call(extended)?;
    let (plain_target, _) = first_call(plain)?;
    if !intact || plain_target != target || image.section_name_at(target)? != ".text" {
        return None;
    }
    let symbol = FunctionSymbol {
        name: format!("{plain}/{extended} callee"),
        address: target,
        size: 0,
        file_offset: 0,
    };
    let file_offset = image.file_offset_of(target)?;
    let code = image.function_code(&FunctionSymbol {
        file_offset,
        ..symbol.clone()
    })?;
    let mut decoder = Decoder::with_ip(64, code, target, DecoderOptions::NONE);
    if decoder.decode().is_invalid() {
        return None;
    }
    Some(FunctionSymbol { file_offset, ..symbol })
}

/// What the kernel does with the instruction a uprobe replaces: x86 emulates
/// push, nop, call and jmp (about 0.5 us a hit on the development VM) and
/// single-steps everything else (about 10 us there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSite {
    pub mnemonic: String,
    pub emulated: bool,
}

impl std::fmt::Display for ProbeSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.emulated { "emulated" } else { "single-stepped" };
        write!(f, "{}: {how}", self.mnemonic)
    }
}

#[cfg(target_arch = "x86_64")]
pub fn probe_site(image: &ElfImage, symbol: &FunctionSymbol) -> Option<ProbeSite> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    let mut decoder = Decoder::with_ip(64, image.function_code(symbol)?, symbol.address, DecoderOptions::NONE);
    let first = decoder.decode();
    if first.is_invalid() {
        return None;
    }
    let emulated = matches!(
        first.mnemonic(),
        Mnemonic::Push | Mnemonic::Nop | Mnemonic::Call | Mnemonic::Jmp
    );
    Some(ProbeSite {
        mnemonic: format!("{:?}", first.mnemonic()).to_lowercase(),
        emulated,
    })
}

#[cfg(not(target_arch = "x86_64"))]
pub fn probe_site(_image: &ElfImage, _symbol: &FunctionSymbol) -> Option<ProbeSite> {
    None
}

#[cfg(not(target_arch = "x86_64"))]
pub fn shared_callee(_image: &ElfImage, _plain: &str, _extended: &str) -> Option<FunctionSymbol> {
    None
}

#[cfg(not(target_arch = "x86_64"))]
pub fn first_argument_offsets(_image: &ElfImage, _function: &str) -> Option<BTreeSet<u64>> {
    None
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn reads_field_offsets_of_libssl_accessors() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")).unwrap();
        // SSL_CIPHER_get_id is `mov eax, [rdi+0x18]; ret` in every 1.1.1+ build.
        assert_eq!(
            first_argument_offsets(&image, "SSL_CIPHER_get_id"),
            Some(BTreeSet::from([0x18]))
        );
        // SSL_SESSION_get_master_key copies rdi elsewhere before using it.
        let master = first_argument_offsets(&image, "SSL_SESSION_get_master_key").unwrap();
        assert!(master.contains(&0x50), "{master:?}");
        assert_eq!(first_argument_offsets(&image, "no_such_function"), None);
    }

    #[test]
    fn tells_emulated_probe_sites_from_single_stepped_ones() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")).unwrap();
        let internal = shared_callee(&image, "SSL_write", "SSL_write_ex").unwrap();
        assert_eq!(
            probe_site(&image, &internal).unwrap(),
            ProbeSite {
                mnemonic: "push".into(),
                emulated: true
            }
        );
        // SSL_write itself starts by making room on the stack.
        let exported = probe_site(&image, &image.function("SSL_write").unwrap()).unwrap();
        assert!(!exported.emulated, "{exported}");
    }

    #[test]
    fn finds_the_internal_functions_behind_the_ssl_api() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")).unwrap();
        let write = shared_callee(&image, "SSL_write", "SSL_write_ex").expect("ssl_write_internal");
        let read = shared_callee(&image, "SSL_read", "SSL_read_ex").expect("ssl_read_internal");
        assert_ne!(write.address, read.address);
        for internal in [&write, &read] {
            // A shared object's text is mapped at its file offset.
            assert_eq!(internal.file_offset, internal.address);
            assert!(image.function("SSL_write").unwrap().address != internal.address);
        }
        // Functions that do not share a callee are refused.
        assert!(shared_callee(&image, "SSL_write", "SSL_read_ex").is_none());
    }
}
