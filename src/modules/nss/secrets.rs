//! Where NSS's secrets can be read, found in the libraries and checked.
//!
//! libssl3 holds a handle (`PK11SymKey`) for each secret; the bytes live in
//! softoken (libsoftokn3), which stores a derived key's value as the
//! object's `CKA_VALUE` through `sftk_forceAttribute` inside `C_DeriveKey`.
//! Neither is exported: `C_DeriveKey` is a slot of the function table
//! `NSC_GetFunctionList` hands out, and `sftk_forceAttribute` is the function
//! `C_DeriveKey` calls to set both the new key's class (a `CK_OBJECT_CLASS`
//! on its stack, 8 bytes) and its value. libssl3 passes each secret, with
//! its key log label, to `ssl3_RecordKeyLog(ss, label, key)`, which builds
//! without SSLKEYLOGFILE compile empty but still call: it is the call that
//! follows the load of the string "CLIENT_RANDOM".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::{Result, anyhow, bail};
use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use tracing::debug;

use super::methods::Isa;
use crate::target::aarch64::{self, Value};
use crate::target::disasm::{self, decode, direct_call_target};
use crate::target::elf::{ElfImage, FunctionSymbol};

/// PKCS#11: `CK_FUNCTION_LIST`'s `C_UnwrapKey` and `C_DeriveKey`, after the
/// version (padded) and 61 and 62 functions.
const UNWRAP_KEY_SLOT: u64 = 8 + 61 * 8;
const DERIVE_KEY_SLOT: u64 = 8 + 62 * 8;
const CKA_CLASS: u64 = 0x0;
const CKA_VALUE: u64 = 0x11;
const CLASS_SIZE: u64 = 8;
const TLS_RANDOM_LEN: u64 = 32;
/// How many instructions before a call its arguments are looked for.
const ARGUMENT_WINDOW: usize = 8;

/// The probe points in libssl3 and what they read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLogCall {
    pub function: FunctionSymbol,
    /// sslSocket's client random.
    pub client_random: u32,
    /// PK11SymKey's softoken object handle (libnss3).
    pub key_handle: u32,
}

impl fmt::Display for KeyLogCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "secrets named at the key log call {:#x}, client random at ss+{:#x}, key handle at key+{:#x}",
            self.function.address, self.client_random, self.key_handle
        )
    }
}

/// The probe points in softoken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftokenStores {
    pub derive_key: FunctionSymbol,
    pub force_attribute: FunctionSymbol,
    /// Where a resumed TLS 1.2 session's master secret, unwrapped from the
    /// session cache rather than derived, is stored.
    pub unwrapping: Option<Unwrapping>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwrapping {
    pub unwrap_key: FunctionSymbol,
    pub add_attribute: FunctionSymbol,
}

impl fmt::Display for SoftokenStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "derived values from C_DeriveKey {:#x} storing through {:#x}",
            self.derive_key.address, self.force_attribute.address
        )?;
        match &self.unwrapping {
            Some(unwrapping) => write!(
                f,
                ", unwrapped ones from C_UnwrapKey {:#x} through {:#x}",
                unwrapping.unwrap_key.address, unwrapping.add_attribute.address
            ),
            None => f.write_str("; resumed TLS 1.2 sessions cannot be keyed"),
        }
    }
}

fn function_at(image: &ElfImage, name: &str, address: u64, end: Option<u64>) -> Result<FunctionSymbol> {
    let file_offset = image
        .file_offset_of(address)
        .ok_or_else(|| anyhow!("{}: {name} at {address:#x} is outside the code", image.path().display()))?;
    Ok(FunctionSymbol {
        name: name.to_string(),
        address,
        size: end.map_or(0, |end| end.saturating_sub(address)),
        file_offset,
    })
}

/// libssl3's key log call; `libnss3` is the libnss3 it links.
pub fn key_log_call(libssl3: &ElfImage, libnss3: &ElfImage) -> Result<KeyLogCall> {
    let isa = Isa::of(libssl3)?;
    let path = libssl3.path().display();
    let label = libssl3
        .string_address(b"CLIENT_RANDOM")
        .ok_or_else(|| anyhow!("{path} has no CLIENT_RANDOM label; is it NSS's libssl3?"))?;
    let starts = libssl3.function_starts()?;
    let mut callees = BTreeSet::new();
    for pair in starts.windows(2) {
        match isa {
            Isa::X86_64 => {
                let code = decode(libssl3, pair[0], pair[1]);
                for (index, instruction) in code.iter().enumerate() {
                    if instruction.mnemonic() == Mnemonic::Lea
                        && instruction.is_ip_rel_memory_operand()
                        && instruction.ip_rel_memory_address() == label
                    {
                        callees.extend(code[index..].iter().take(ARGUMENT_WINDOW).find_map(direct_call_target));
                    }
                }
            }
            // The label is the call's second argument.
            Isa::Aarch64 => callees.extend(
                aarch64::constant_flow(libssl3, pair[0], pair[1])
                    .calls
                    .iter()
                    .filter(|call| call.arguments[1] == Some(Value::Constant(label)))
                    .map(|call| call.target),
            ),
        }
    }
    let [address] = callees.iter().copied().collect::<Vec<_>>()[..] else {
        bail!(
            "{path}: {} calls follow the CLIENT_RANDOM label, not one; this NSS is not known",
            callees.len()
        );
    };
    // An empty function may have no unwind entry: its one `ret` is then
    // the whole of it.
    let is_start = starts.binary_search(&address).is_ok();
    let returns_at_once = match isa {
        Isa::X86_64 => decode(libssl3, address, address + 8)
            .iter()
            .find(|instruction| instruction.mnemonic() != Mnemonic::Endbr64)
            .is_some_and(|instruction| instruction.mnemonic() == Mnemonic::Ret),
        Isa::Aarch64 => aarch64::returns_at_once(libssl3, address),
    };
    if !is_start && !returns_at_once {
        bail!("{path}: the key log call's target {address:#x} is not a function start");
    }
    let function = function_at(libssl3, "ssl3_RecordKeyLog", address, None)?;
    let client_random = client_random(isa, libssl3)
        .ok_or_else(|| anyhow!("{path}: SSL_ExportKeyingMaterial does not show where the client random is"))?;
    let key_handle = disasm::single_field(libnss3, "PK11_GetSymKeyHandle").ok_or_else(|| {
        anyhow!(
            "{}: PK11_GetSymKeyHandle does not read one field",
            libnss3.path().display()
        )
    })?;
    Ok(KeyLogCall {
        function,
        client_random: u32::try_from(client_random)?,
        key_handle: u32::try_from(key_handle)?,
    })
}

/// `SSL_ExportKeyingMaterial` builds the TLS 1.2 exporter's seed, the client
/// random then the server random (32 bytes each), from the socket: the
/// first 64 bytes it loads from one base register, in two runs.
fn client_random(isa: Isa, libssl3: &ElfImage) -> Option<u64> {
    let exporter = libssl3.function("SSL_ExportKeyingMaterial")?;
    let end = libssl3
        .function_starts()
        .ok()?
        .into_iter()
        .find(|&start| start > exporter.address)?;
    // (base register, offset, bytes)
    let all: Vec<(u32, u64, u64)> = match isa {
        Isa::X86_64 => decode(libssl3, exporter.address, end)
            .iter()
            .filter_map(wide_load)
            .map(|(base, offset, bytes)| (base as u32, offset, bytes))
            .collect(),
        Isa::Aarch64 => aarch64::wide_loads(libssl3, exporter.address, end)
            .into_iter()
            .map(|(base, offset, bytes)| (u32::from(base), offset, bytes))
            .collect(),
    };
    let mut loads = Vec::new();
    for load in all {
        loads.push(load);
        if loads.iter().map(|load| load.2).sum::<u64>() >= 2 * TLS_RANDOM_LEN {
            break;
        }
    }
    let base = loads.first()?.0;
    let mut runs: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    let mut run = 0;
    let mut next = None;
    for &(register, offset, size) in &loads {
        if register != base {
            return None;
        }
        if next.is_some_and(|next| next != offset) {
            run += 1;
        }
        let entry = runs.entry(run).or_insert((offset, 0));
        entry.1 += size;
        next = Some(offset + size);
    }
    match runs.values().copied().collect::<Vec<_>>()[..] {
        [(client, TLS_RANDOM_LEN), (server, TLS_RANDOM_LEN)] if client != server => Some(client),
        _ => None,
    }
}

/// A load of 8 or 16 bytes from a field (`base + displacement`).
fn wide_load(instruction: &Instruction) -> Option<(Register, u64, u64)> {
    let size = match instruction.mnemonic() {
        Mnemonic::Movdqu | Mnemonic::Movups | Mnemonic::Movdqa | Mnemonic::Movaps => 16,
        Mnemonic::Mov if instruction.op0_kind() == OpKind::Register && instruction.op0_register().size() == 8 => 8,
        _ => return None,
    };
    let base = instruction.memory_base();
    (instruction.op0_kind() == OpKind::Register
        && instruction.op1_kind() == OpKind::Memory
        && instruction.memory_index() == Register::None
        && !matches!(base, Register::RSP | Register::RIP | Register::None))
    .then(|| (base, instruction.memory_displacement64(), size))
}

/// softoken's derive function and the attribute store it calls.
pub fn softoken_stores(softoken: &ElfImage) -> Result<SoftokenStores> {
    let isa = Isa::of(softoken)?;
    let path = softoken.path().display();
    let list = softoken
        .function("NSC_GetFunctionList")
        .ok_or_else(|| anyhow!("{path} has no NSC_GetFunctionList; is it NSS's softoken?"))?;
    let table = match isa {
        Isa::X86_64 => decode(softoken, list.address, list.address + 32)
            .iter()
            .find(|instruction| instruction.mnemonic() == Mnemonic::Lea && instruction.is_ip_rel_memory_operand())
            .map(Instruction::ip_rel_memory_address),
        Isa::Aarch64 => aarch64::constant_flow(softoken, list.address, list.address + 32)
            .computed
            .first()
            .copied(),
    }
    .ok_or_else(|| anyhow!("{path}: NSC_GetFunctionList hands out no table"))?;
    let starts = softoken.function_starts()?;
    let function = |address: u64, name: &str| -> Result<FunctionSymbol> {
        if starts.binary_search(&address).is_err() {
            bail!("{path}: {name} ({address:#x}) is not a function start");
        }
        function_at(
            softoken,
            name,
            address,
            starts.iter().find(|&&start| start > address).copied(),
        )
    };
    let slot = |offset: u64, name: &str| -> Result<FunctionSymbol> {
        let address = softoken
            .relocated_pointer(table + offset)
            .ok_or_else(|| anyhow!("{path}: the function table has no {name}"))?;
        function(address, name)
    };
    let derive_key = slot(DERIVE_KEY_SLOT, "NSC_DeriveKey")?;
    let derive_stores = attribute_stores(isa, softoken, &derive_key);
    let stores: Vec<u64> = derive_stores
        .class
        .intersection(&derive_stores.value)
        .copied()
        .collect();
    let [force_attribute] = stores[..] else {
        bail!(
            "{path}: {} functions store both a key's class and its value, not one; this NSS is not known",
            stores.len()
        );
    };
    let unwrapping = slot(UNWRAP_KEY_SLOT, "NSC_UnwrapKey").and_then(|unwrap_key| {
        let stores: Vec<u64> = attribute_stores(isa, softoken, &unwrap_key).value.into_iter().collect();
        let [add_attribute] = stores[..] else {
            bail!(
                "{path}: {} functions store an unwrapped key's value, not one",
                stores.len()
            );
        };
        Ok(Unwrapping {
            unwrap_key,
            add_attribute: function(add_attribute, "sftk_AddAttributeType")?,
        })
    });
    Ok(SoftokenStores {
        derive_key,
        force_attribute: function(force_attribute, "sftk_forceAttribute")?,
        unwrapping: unwrapping
            .inspect_err(|err| debug!("resumed TLS 1.2 sessions cannot be keyed: {err:#}"))
            .ok(),
    })
}

/// The functions `function` calls to store a key's class (a `CK_OBJECT_CLASS`
/// on its stack) and its value.
struct AttributeStores {
    class: BTreeSet<u64>,
    value: BTreeSet<u64>,
}

fn attribute_stores(isa: Isa, image: &ElfImage, function: &FunctionSymbol) -> AttributeStores {
    let end = function.address + function.size;
    let calls: Vec<(u64, Arguments)> = match isa {
        Isa::X86_64 => {
            let code = decode(image, function.address, end);
            code.iter()
                .enumerate()
                .filter_map(|(index, instruction)| {
                    Some((direct_call_target(instruction)?, Arguments::before(&code[..index])))
                })
                .collect()
        }
        Isa::Aarch64 => aarch64::constant_flow(image, function.address, end)
            .calls
            .into_iter()
            .map(|call| {
                let constant = |register: usize| match call.arguments[register] {
                    Some(Value::Constant(value)) if call.set_just_before[register] => Some(value),
                    _ => None,
                };
                let arguments = Arguments {
                    type_: constant(1),
                    length: constant(3),
                    value_set: call.set_just_before[2],
                    value_on_stack: call.arguments[2] == Some(Value::Stack),
                };
                (call.target, arguments)
            })
            .collect(),
    };
    let mut stores = AttributeStores {
        class: BTreeSet::new(),
        value: BTreeSet::new(),
    };
    for (target, arguments) in calls {
        if arguments.type_ == Some(CKA_CLASS) && arguments.length == Some(CLASS_SIZE) && arguments.value_on_stack {
            stores.class.insert(target);
        }
        if arguments.type_ == Some(CKA_VALUE) && arguments.value_set {
            stores.value.insert(target);
        }
    }
    stores
}

/// What the instructions just before a call set its second to fourth
/// arguments to (type, value, length), within the straight run that leads
/// to it.
#[derive(Default)]
struct Arguments {
    type_: Option<u64>,
    length: Option<u64>,
    value_set: bool,
    value_on_stack: bool,
}

impl Arguments {
    fn before(code: &[Instruction]) -> Arguments {
        let mut arguments = Arguments::default();
        let mut seen = BTreeSet::new();
        for instruction in code.iter().rev().take(ARGUMENT_WINDOW) {
            if instruction.flow_control() != iced_x86::FlowControl::Next {
                break;
            }
            if instruction.op_count() == 0 || instruction.op0_kind() != OpKind::Register {
                continue;
            }
            let register = instruction.op0_register().full_register();
            if !seen.insert(register) {
                continue;
            }
            match register {
                Register::RSI => arguments.type_ = constant(instruction),
                Register::RCX => arguments.length = constant(instruction),
                Register::RDX => {
                    arguments.value_set = true;
                    arguments.value_on_stack =
                        instruction.mnemonic() == Mnemonic::Lea && instruction.memory_base() == Register::RSP;
                }
                _ => {}
            }
        }
        arguments
    }
}

/// The constant an instruction puts in its destination register.
fn constant(instruction: &Instruction) -> Option<u64> {
    match instruction.mnemonic() {
        Mnemonic::Xor
            if instruction.op1_kind() == OpKind::Register
                && instruction.op1_register() == instruction.op0_register() =>
        {
            Some(0)
        }
        Mnemonic::Mov
            if matches!(
                instruction.op1_kind(),
                OpKind::Immediate32 | OpKind::Immediate32to64 | OpKind::Immediate64
            ) =>
        {
            Some(instruction.immediate(1))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const DIR: &str = "/usr/lib/x86_64-linux-gnu";

    fn open(name: &str) -> ElfImage {
        ElfImage::open(&Path::new(DIR).join(name)).unwrap()
    }

    #[test]
    fn finds_the_key_log_call_of_the_system_nss() {
        let call = key_log_call(&open("libssl3.so"), &open("libnss3.so")).unwrap();
        // Checked with gdb on Debian's 3.87 (research notes).
        assert_eq!(call.client_random, 0x620);
        assert_eq!(call.key_handle, 8);
    }

    #[test]
    fn finds_softoken_s_derive_and_attribute_store() {
        let image = open("libsoftokn3.so");
        let stores = softoken_stores(&image).unwrap();
        assert_ne!(stores.derive_key.address, stores.force_attribute.address);
        let unwrapping = stores.unwrapping.unwrap();
        assert_ne!(unwrapping.add_attribute.address, stores.force_attribute.address);
        assert!(disasm::probe_site(&image, &stores.derive_key).is_some());
        assert!(disasm::probe_site(&image, &stores.force_attribute).is_some());
    }

    #[test]
    fn finds_the_secrets_of_the_arm64_nss() {
        let arm64 = |name: &str| ElfImage::open(&Path::new("/usr/lib/aarch64-linux-gnu").join(name)).unwrap();
        let call = key_log_call(&arm64("libssl3.so"), &arm64("libnss3.so")).unwrap();
        assert_eq!((call.client_random, call.key_handle), (0x620, 8));
        let stores = softoken_stores(&arm64("libsoftokn3.so")).unwrap();
        assert_ne!(stores.derive_key.address, stores.force_attribute.address);
        let unwrapping = stores.unwrapping.unwrap();
        assert_ne!(unwrapping.add_attribute.address, stores.force_attribute.address);
    }

    #[test]
    fn other_libraries_are_refused() {
        let openssl = open("libssl.so.3");
        assert!(key_log_call(&openssl, &open("libnss3.so")).is_err());
        assert!(softoken_stores(&openssl).is_err());
    }
}
