//! The SSL layer's I/O methods in libssl3: the functions NSPR's `PR_Read`,
//! `PR_Write`, `PR_Recv`, `PR_Send` and `PR_Writev` end in for an SSL socket,
//! and only for one. Probing them rather than NSPR's generic calls keeps
//! files and pipes out of the capture, and costs nothing on other I/O.
//!
//! They are static. libssl3 builds its method table at run time: it copies
//! NSPR's defaults (`PR_GetDefaultIOMethods`) into a static `PRIOMethods`,
//! stamps it `PR_DESC_LAYERED`, and stores its own functions over some
//! slots. That one function is read here, following which code addresses
//! reach which slot, through registers, SSE lanes and stack slots alike, as
//! compilers vectorise those stores. Each method found must then prove
//! itself an SSL method: a function start that checks the socket's layer
//! identity against the one libssl3 got from `PR_GetUniqueIdentity`.

use std::collections::HashMap;
use std::fmt;

use anyhow::{Result, anyhow, bail};
use iced_x86::{Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register};

use crate::target::aarch64::{self, Value};
use crate::target::disasm::{decode, direct_call_target};
use crate::target::elf::{ElfImage, FunctionSymbol};

/// prio.h: `PRDescType`'s value for a layer pushed on a socket.
const PR_DESC_LAYERED: u64 = 4;

/// `PRIOMethods` slots (prio.h, a public ABI): the file type, padded, then
/// one pointer per method.
const READ_SLOT: u64 = 16;
const WRITE_SLOT: u64 = 24;
const WRITEV_SLOT: u64 = 88;
const RECV_SLOT: u64 = 136;
const SEND_SLOT: u64 = 144;

/// How far into a method its check of the layer identity must come.
const IDENTITY_CHECK_WINDOW: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslMethods {
    pub read: FunctionSymbol,
    pub write: FunctionSymbol,
    pub recv: FunctionSymbol,
    pub send: FunctionSymbol,
    /// Whether `PR_Writev` hands its buffers to the send method, so that
    /// probing that one sees them.
    pub writev_sends: bool,
}

impl fmt::Display for SslMethods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SSL layer methods: read {:#x}, write {:#x}, recv {:#x}, send {:#x}",
            self.read.address, self.write.address, self.recv.address, self.send.address
        )
    }
}

/// The instruction sets the searches read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    X86_64,
    Aarch64,
}

impl Isa {
    pub(super) fn of(image: &ElfImage) -> Result<Isa> {
        match image.architecture() {
            Some(object::Architecture::X86_64) => Ok(Isa::X86_64),
            Some(object::Architecture::Aarch64) => Ok(Isa::Aarch64),
            _ => bail!("{}: NSS is read as x86_64 or AArch64 code only", image.path().display()),
        }
    }

    /// The targets of the direct calls from `start` to `end`.
    pub(super) fn direct_calls(self, image: &ElfImage, start: u64, end: u64) -> Vec<u64> {
        match self {
            Isa::X86_64 => decode(image, start, end)
                .iter()
                .filter_map(direct_call_target)
                .collect(),
            Isa::Aarch64 => aarch64::constant_flow(image, start, end)
                .calls
                .into_iter()
                .map(|call| call.target)
                .collect(),
        }
    }
}

/// What the function that fills the method table stores: static slots with
/// the code address stored when known, the table stamped PR_DESC_LAYERED,
/// and where the identity from PR_GetUniqueIdentity is kept.
#[derive(Default)]
struct TableSetup {
    stores: HashMap<u64, Option<u64>>,
    layered_table: Option<u64>,
    identity_variable: Option<u64>,
}

impl TableSetup {
    fn read(isa: Isa, image: &ElfImage, imports: &Imports, start: u64, end: u64) -> TableSetup {
        match isa {
            Isa::X86_64 => {
                let run = MethodTableSetup::run(image, imports, &decode(image, start, end));
                TableSetup {
                    stores: run.stores,
                    layered_table: run.layered_table,
                    identity_variable: run.identity_variable,
                }
            }
            Isa::Aarch64 => {
                let flow = aarch64::constant_flow(image, start, end);
                let mut setup = TableSetup::default();
                for (address, bytes, value) in flow.stores {
                    match (bytes, value) {
                        (8, Some(Value::Constant(code))) => {
                            setup.stores.insert(address, Some(code));
                        }
                        (8, _) => {
                            setup.stores.insert(address, None);
                        }
                        (4, Some(Value::Constant(PR_DESC_LAYERED))) => setup.layered_table = Some(address),
                        (4, Some(Value::Returned(callee)))
                            if imports.at_stub(isa, image, callee) == Some("PR_GetUniqueIdentity") =>
                        {
                            setup.identity_variable = Some(address);
                        }
                        _ => {}
                    }
                }
                setup
            }
        }
    }
}

pub fn locate(image: &ElfImage) -> Result<SslMethods> {
    let path = image.path().display();
    let isa = Isa::of(image)?;
    let starts = image.function_starts()?;
    let imports = Imports::of(image);
    let setup = starts
        .windows(2)
        .find(|pair| imports.called_from(isa, image, pair[0], pair[1], "PR_GetDefaultIOMethods"))
        .ok_or_else(|| {
            anyhow!("{path}: no function fills a method table from PR_GetDefaultIOMethods; is it libssl3?")
        })?;
    let table = TableSetup::read(isa, image, &imports, setup[0], setup[1]);
    let identity = table
        .identity_variable
        .ok_or_else(|| anyhow!("{path}: the SSL layer's identity is not stored where it is looked for"))?;
    let base = table
        .layered_table
        .ok_or_else(|| anyhow!("{path}: no method table is stamped PR_DESC_LAYERED"))?;
    // PR_Writev's method checks its buffers, then sends them through the
    // send method: it is only read, never probed, and needs no check.
    let method = |slot: u64, name: &str, probed: bool| -> Result<FunctionSymbol> {
        let address = table
            .stores
            .get(&(base + slot))
            .copied()
            .flatten()
            .ok_or_else(|| anyhow!("{path}: the SSL layer's {name} method is not set where expected"))?;
        let end = starts.iter().find(|&&start| start > address).copied();
        if starts.binary_search(&address).is_err() || (probed && !checks_identity(isa, image, address, end, identity)) {
            bail!("{path}: what sits in the {name} slot ({address:#x}) does not check for an SSL socket");
        }
        let file_offset = image
            .file_offset_of(address)
            .ok_or_else(|| anyhow!("{path}: the {name} method at {address:#x} is outside the code"))?;
        Ok(FunctionSymbol {
            name: format!("ssl_{name}"),
            address,
            size: end.map_or(0, |end| end - address),
            file_offset,
        })
    };
    let send = method(SEND_SLOT, "Send", true)?;
    let writev = method(WRITEV_SLOT, "WriteV", false)?;
    let writev_sends = isa
        .direct_calls(image, writev.address, writev.address + writev.size)
        .contains(&send.address);
    Ok(SslMethods {
        read: method(READ_SLOT, "Read", true)?,
        write: method(WRITE_SLOT, "Write", true)?,
        recv: method(RECV_SLOT, "Recv", true)?,
        send,
        writev_sends,
    })
}

/// Imported functions, by the slot the dynamic linker fills for each.
struct Imports(HashMap<u64, String>);

impl Imports {
    fn of(image: &ElfImage) -> Imports {
        Imports(image.imported_slots())
    }

    /// Whether the code from `start` to `end` calls the imported `name`.
    fn called_from(&self, isa: Isa, image: &ElfImage, start: u64, end: u64, name: &str) -> bool {
        match isa {
            Isa::X86_64 => decode(image, start, end)
                .iter()
                .any(|instruction| self.called(image, instruction) == Some(name)),
            Isa::Aarch64 => isa
                .direct_calls(image, start, end)
                .into_iter()
                .any(|target| self.at_stub(isa, image, target) == Some(name)),
        }
    }

    /// The imported function a PLT stub at `stub` jumps to.
    fn at_stub<'a>(&'a self, isa: Isa, image: &ElfImage, stub: u64) -> Option<&'a str> {
        let slot = match isa {
            Isa::X86_64 => decode(image, stub, stub + 16)
                .iter()
                .take(2)
                .find(|jump| jump.mnemonic() == Mnemonic::Jmp && jump.is_ip_rel_memory_operand())?
                .ip_rel_memory_address(),
            Isa::Aarch64 => aarch64::plt_slot(image, stub)?,
        };
        self.0.get(&slot).map(String::as_str)
    }

    /// The imported function `instruction` calls: through a PLT stub
    /// (`jmp *slot`, after an `endbr64`), or straight through its slot.
    fn called<'a>(&'a self, image: &ElfImage, instruction: &Instruction) -> Option<&'a str> {
        if instruction.mnemonic() != Mnemonic::Call {
            return None;
        }
        let slot = match instruction.op0_kind() {
            OpKind::Memory if instruction.is_ip_rel_memory_operand() => instruction.ip_rel_memory_address(),
            OpKind::NearBranch64 => return self.at_stub(Isa::X86_64, image, instruction.near_branch_target()),
            _ => return None,
        };
        self.0.get(&slot).map(String::as_str)
    }
}

/// What one straight-line function stores: which code address lands in
/// which static slot. Registers, the two 64-bit lanes of SSE registers and
/// 8-byte stack slots hold a code address (`lea rip+...`) or nothing known.
#[derive(Default)]
struct MethodTableSetup {
    registers: HashMap<Register, u64>,
    lanes: HashMap<(Register, u8), u64>,
    stack: HashMap<i64, u64>,
    /// Static slots written, with the code address stored when known.
    stores: HashMap<u64, Option<u64>>,
    /// The static table whose first word is set to PR_DESC_LAYERED.
    layered_table: Option<u64>,
    /// Where the identity PR_GetUniqueIdentity returned is kept.
    identity_variable: Option<u64>,
}

impl MethodTableSetup {
    fn run(image: &ElfImage, imports: &Imports, instructions: &[Instruction]) -> MethodTableSetup {
        let mut setup = MethodTableSetup::default();
        let mut info = InstructionInfoFactory::new();
        let mut identity_in_eax = false;
        for instruction in instructions {
            if instruction.mnemonic() == Mnemonic::Call {
                identity_in_eax = imports.called(image, instruction) == Some("PR_GetUniqueIdentity");
                setup.forget_caller_saved();
                continue;
            }
            if identity_in_eax
                && instruction.mnemonic() == Mnemonic::Mov
                && instruction.is_ip_rel_memory_operand()
                && instruction.op0_kind() == OpKind::Memory
                && instruction.op1_kind() == OpKind::Register
                && instruction.op1_register() == Register::EAX
            {
                setup
                    .identity_variable
                    .get_or_insert(instruction.ip_rel_memory_address());
            }
            if !setup.follow(instruction) {
                setup.forget_written(info.info(instruction).used_registers());
            }
            if info
                .info(instruction)
                .used_registers()
                .iter()
                .any(|used| used.register().full_register() == Register::RAX && used.access() != OpAccess::Read)
            {
                identity_in_eax = false;
            }
        }
        setup
    }

    /// Applies an instruction that moves code addresses around; false for
    /// any other.
    fn follow(&mut self, instruction: &Instruction) -> bool {
        use Mnemonic::*;
        let op0 = instruction.op0_kind();
        let op1 = instruction.op1_kind();
        match instruction.mnemonic() {
            Lea if instruction.is_ip_rel_memory_operand() => {
                self.registers.insert(
                    instruction.op0_register().full_register(),
                    instruction.ip_rel_memory_address(),
                );
            }
            Mov if op0 == OpKind::Register && op1 == OpKind::Register => {
                let value = self.registers.get(&instruction.op1_register().full_register()).copied();
                self.set_register(instruction.op0_register().full_register(), value);
            }
            Mov if op0 == OpKind::Memory && instruction.is_ip_rel_memory_operand() => {
                let address = instruction.ip_rel_memory_address();
                match op1 {
                    OpKind::Register => {
                        let value = self.registers.get(&instruction.op1_register().full_register()).copied();
                        self.stores.insert(address, value);
                    }
                    OpKind::Immediate32 | OpKind::Immediate32to64 => {
                        if instruction.immediate(1) == PR_DESC_LAYERED {
                            self.layered_table = Some(address);
                        }
                        self.stores.insert(address, None);
                    }
                    _ => return false,
                }
            }
            Movq if op0 == OpKind::Register && instruction.op0_register().is_xmm() && op1 == OpKind::Register => {
                let value = self.registers.get(&instruction.op1_register().full_register()).copied();
                self.set_lanes(instruction.op0_register(), [value, None]);
            }
            Punpcklqdq if op1 == OpKind::Register => {
                let low = self.lanes.get(&(instruction.op0_register(), 0)).copied();
                let high = self.lanes.get(&(instruction.op1_register(), 0)).copied();
                self.set_lanes(instruction.op0_register(), [low, high]);
            }
            Movhps if op0 == OpKind::Register => {
                let low = self.lanes.get(&(instruction.op0_register(), 0)).copied();
                self.set_lanes(instruction.op0_register(), [low, None]);
            }
            Movaps | Movups | Movdqa | Movdqu if op0 == OpKind::Memory && op1 == OpKind::Register => {
                let lanes = [0, 1].map(|lane| self.lanes.get(&(instruction.op1_register(), lane)).copied());
                if instruction.is_ip_rel_memory_operand() {
                    let address = instruction.ip_rel_memory_address();
                    self.stores.insert(address, lanes[0]);
                    self.stores.insert(address + 8, lanes[1]);
                } else if let Some(slot) = stack_slot(instruction) {
                    self.set_stack(slot, lanes[0]);
                    self.set_stack(slot + 8, lanes[1]);
                }
            }
            Movaps | Movups | Movdqa | Movdqu if op0 == OpKind::Register && op1 == OpKind::Memory => {
                let lanes = stack_slot(instruction).map_or([None, None], |slot| {
                    [self.stack.get(&slot).copied(), self.stack.get(&(slot + 8)).copied()]
                });
                self.set_lanes(instruction.op0_register(), lanes);
            }
            _ => return false,
        }
        true
    }

    fn set_register(&mut self, register: Register, value: Option<u64>) {
        match value {
            Some(value) => self.registers.insert(register, value),
            None => self.registers.remove(&register),
        };
    }

    fn set_lanes(&mut self, register: Register, lanes: [Option<u64>; 2]) {
        for (lane, value) in (0u8..).zip(lanes) {
            match value {
                Some(value) => self.lanes.insert((register, lane), value),
                None => self.lanes.remove(&(register, lane)),
            };
        }
    }

    fn set_stack(&mut self, slot: i64, value: Option<u64>) {
        match value {
            Some(value) => self.stack.insert(slot, value),
            None => self.stack.remove(&slot),
        };
    }

    fn forget_caller_saved(&mut self) {
        use Register::*;
        for register in [RAX, RCX, RDX, RSI, RDI, R8, R9, R10, R11] {
            self.registers.remove(&register);
        }
        self.lanes.clear();
    }

    fn forget_written(&mut self, used: &[iced_x86::UsedRegister]) {
        for register in used
            .iter()
            .filter(|used| used.access() != OpAccess::Read && used.access() != OpAccess::CondRead)
        {
            let full = register.register().full_register();
            if full == Register::RSP {
                self.stack.clear();
            }
            self.registers.remove(&full);
            self.lanes
                .retain(|(lane_register, _), _| lane_register.full_register() != full);
        }
    }
}

/// The rsp-relative slot an instruction's memory operand names.
fn stack_slot(instruction: &Instruction) -> Option<i64> {
    (instruction.memory_base() == Register::RSP && instruction.memory_index() == Register::None)
        .then(|| instruction.memory_displacement64() as i64)
}

/// Whether the function at `address` loads the layer identity variable
/// among its first instructions, as ssl_FindSocket does inlined.
fn checks_identity(isa: Isa, image: &ElfImage, address: u64, end: Option<u64>, identity: u64) -> bool {
    match isa {
        Isa::X86_64 => decode(image, address, end.unwrap_or(address + 256))
            .iter()
            .take(IDENTITY_CHECK_WINDOW)
            .any(|instruction| {
                instruction.is_ip_rel_memory_operand()
                    && instruction.ip_rel_memory_address() == identity
                    && instruction.mnemonic() != Mnemonic::Lea
            }),
        Isa::Aarch64 => {
            let window = address + 4 * IDENTITY_CHECK_WINDOW as u64;
            aarch64::constant_flow(image, address, end.map_or(window, |end| end.min(window)))
                .loads
                .contains(&identity)
        }
    }
}

/// The fields loaded one through the other from what the first call
/// returns (in rax).
fn x86_64_loads_from_first_call_result(code: &[Instruction]) -> Vec<u64> {
    let Some(after_call) = code
        .iter()
        .position(|instruction| instruction.mnemonic() == Mnemonic::Call)
    else {
        return Vec::new();
    };
    let mut holder = Register::RAX;
    let mut fields = Vec::new();
    for instruction in &code[after_call + 1..] {
        if instruction.flow_control() == iced_x86::FlowControl::Return {
            break;
        }
        if instruction.mnemonic() == Mnemonic::Mov
            && instruction.op0_kind() == OpKind::Register
            && instruction.op1_kind() == OpKind::Memory
            && instruction.memory_base() == holder
            && instruction.memory_index() == Register::None
        {
            fields.push(instruction.memory_displacement64());
            holder = instruction.op0_register().full_register();
        }
    }
    fields
}

/// Where the bottom layer of a socket keeps its descriptor: its private
/// state, then the descriptor in it, as `PR_FileDesc2NativeHandle` reads
/// them from the layer `PR_GetIdentitiesLayer` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorPath {
    pub secret: u32,
    pub osfd: u32,
}

pub fn descriptor_path(nspr: &ElfImage) -> Result<DescriptorPath> {
    let path = nspr.path().display();
    let function = nspr
        .function("PR_FileDesc2NativeHandle")
        .ok_or_else(|| anyhow!("{path} has no PR_FileDesc2NativeHandle; is it NSPR's libnspr4?"))?;
    let end = function.address + function.size.max(64);
    let fields = match Isa::of(nspr)? {
        Isa::X86_64 => x86_64_loads_from_first_call_result(&decode(nspr, function.address, end)),
        Isa::Aarch64 => aarch64::loads_from_first_call_result(nspr, function.address, end),
    };
    match fields[..] {
        [secret, osfd] => Ok(DescriptorPath {
            secret: u32::try_from(secret)?,
            osfd: u32::try_from(osfd)?,
        }),
        _ => bail!("{path}: PR_FileDesc2NativeHandle does not read the descriptor as expected"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const LIBSSL3: &str = "/usr/lib/x86_64-linux-gnu/libssl3.so";

    #[test]
    fn finds_the_methods_of_the_system_nss() {
        let image = ElfImage::open(Path::new(LIBSSL3)).unwrap();
        let methods = locate(&image).unwrap();
        let addresses = [
            methods.read.address,
            methods.write.address,
            methods.recv.address,
            methods.send.address,
        ];
        let mut distinct = addresses.to_vec();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{methods}");
        // Debian's libssl3 builds ssl_WriteV on ssl_Send.
        assert!(methods.writev_sends);
        for method in [&methods.read, &methods.write, &methods.recv, &methods.send] {
            assert!(
                crate::target::disasm::probe_site(&image, method).is_some(),
                "{method:?}"
            );
        }
    }

    #[test]
    fn finds_the_descriptor_of_the_system_nspr() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libnspr4.so")).unwrap();
        // PRFileDesc.secret (prio.h), and PRFilePrivate's md.osfd on Linux.
        assert_eq!(
            descriptor_path(&image).unwrap(),
            DescriptorPath { secret: 8, osfd: 0x1c }
        );
    }

    #[test]
    fn finds_the_methods_and_descriptor_of_the_arm64_nss() {
        let image = ElfImage::open(Path::new("/usr/lib/aarch64-linux-gnu/libssl3.so")).unwrap();
        let methods = locate(&image).unwrap();
        let mut addresses = [
            methods.read.address,
            methods.write.address,
            methods.recv.address,
            methods.send.address,
        ];
        addresses.sort_unstable();
        assert!(addresses.windows(2).all(|pair| pair[0] != pair[1]), "{methods}");
        assert!(methods.writev_sends);
        let nspr = ElfImage::open(Path::new("/usr/lib/aarch64-linux-gnu/libnspr4.so")).unwrap();
        assert_eq!(
            descriptor_path(&nspr).unwrap(),
            DescriptorPath { secret: 8, osfd: 0x1c }
        );
    }

    #[test]
    fn a_library_that_is_not_nss_is_refused() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")).unwrap();
        let err = locate(&image).unwrap_err();
        assert!(err.to_string().contains("PR_GetDefaultIOMethods"), "{err}");
    }
}
