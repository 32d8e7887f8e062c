//! Reading machine code: which fields of its first argument a small function
//! touches, and through which pointers (to check struct layouts against the
//! library at hand); which internal function the API funnels into, and where
//! a probe costs least. x86_64 here, AArch64 in `aarch64`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::target::elf::{ElfImage, FunctionSymbol};

/// Longest stretch of a function we decode before giving up.
pub(super) const MAX_INSTRUCTIONS: usize = 64;

/// Instructions decoded over all the branches of one accessor.
pub(super) const MAX_EXPLORED: usize = 512;

/// The full registers `instruction` writes, even only conditionally.
fn written_registers(
    info_factory: &mut iced_x86::InstructionInfoFactory,
    instruction: &iced_x86::Instruction,
) -> Vec<iced_x86::Register> {
    use iced_x86::OpAccess;
    info_factory
        .info(instruction)
        .used_registers()
        .iter()
        .filter(|used| {
            matches!(
                used.access(),
                OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite
            )
        })
        .map(|used| used.register().full_register())
        .collect()
}

/// A field reached from the first argument: `[0x30, 0x110]` is the field at
/// 0x110 of the object whose pointer is at 0x30 of the argument. The last
/// step may be an address taken (a `lea`, or an `add` to a pointer) rather
/// than a load, as when an accessor passes an array to memcpy.
pub type FieldPath = Vec<u64>;

/// Every field path the function touches on any branch from its entry up to
/// its returns and tail jumps. None when the function is missing, does not
/// decode, or is of an architecture without a decoder. Decoded by the file's
/// architecture, not the host's, so each decoder is tested on any host.
pub fn field_paths(image: &ElfImage, function: &str) -> Option<BTreeSet<FieldPath>> {
    match image.architecture()? {
        object::Architecture::X86_64 => x86_64_field_paths(image, function),
        object::Architecture::Aarch64 => super::aarch64::field_paths(image, function),
        _ => None,
    }
}

/// The x86-64 instructions from `start` to `end`, up to the first that does not decode.
pub fn decode(image: &ElfImage, start: u64, end: u64) -> Vec<iced_x86::Instruction> {
    let Some(code) = image.code_between(start, end) else {
        return Vec::new();
    };
    iced_x86::Decoder::with_ip(64, code, start, iced_x86::DecoderOptions::NONE)
        .into_iter()
        .take_while(|instruction| !instruction.is_invalid())
        .collect()
}

/// Where a direct `call` goes.
pub fn direct_call_target(instruction: &iced_x86::Instruction) -> Option<u64> {
    (instruction.mnemonic() == iced_x86::Mnemonic::Call && instruction.op0_kind() == iced_x86::OpKind::NearBranch64)
        .then(|| instruction.near_branch_target())
}

/// The one field an accessor reads from its first argument.
pub fn single_field(image: &ElfImage, function: &str) -> Option<u64> {
    let paths = field_paths(image, function)?;
    match paths.into_iter().collect::<Vec<_>>().as_slice() {
        [path] if path.len() == 1 => Some(path[0]),
        _ => None,
    }
}

/// A register's value: the pointer reached by following `loads` from the
/// first argument, plus `bias` bytes.
#[derive(Clone)]
pub(super) struct Derived {
    pub loads: FieldPath,
    pub bias: u64,
}

impl Derived {
    pub fn field(&self, displacement: u64) -> FieldPath {
        let mut path = self.loads.clone();
        path.push(self.bias.wrapping_add(displacement));
        path
    }
}

/// A walk over every branch of one function, from its entry: where each
/// branch starts and what its registers hold there, and the field paths
/// found so far. Shared by the decoders of each architecture.
pub(super) struct Walk<'a, R> {
    pub start: u64,
    pub end: u64,
    pub code: &'a [u8],
    pending: Vec<(u64, BTreeMap<R, Derived>)>,
    started: HashSet<u64>,
    explored: usize,
    pub paths: BTreeSet<FieldPath>,
}

impl<'a, R: Ord + Clone> Walk<'a, R> {
    /// Starts at `function`, whose first argument is in `argument`.
    pub fn new(image: &'a ElfImage, function: &str, argument: R) -> Option<Walk<'a, R>> {
        let symbol = image.function(function)?;
        let code = image.function_code(&symbol)?;
        let start_registers = BTreeMap::from([(
            argument,
            Derived {
                loads: Vec::new(),
                bias: 0,
            },
        )]);
        Some(Walk {
            start: symbol.address,
            end: symbol.address + code.len() as u64,
            code,
            pending: vec![(symbol.address, start_registers)],
            started: HashSet::new(),
            explored: 0,
            paths: BTreeSet::new(),
        })
    }

    /// The next branch not walked yet: its address, its code, its registers.
    pub fn next_branch(&mut self) -> Option<(u64, &'a [u8], BTreeMap<R, Derived>)> {
        while let Some((address, registers)) = self.pending.pop() {
            if self.started.insert(address) {
                let from = usize::try_from(address.checked_sub(self.start)?).ok()?;
                return Some((address, self.code.get(from..)?, registers));
            }
        }
        None
    }

    /// A branch to `target` with `registers`; one outside the function is
    /// a tail call, not followed.
    pub fn branch(&mut self, target: u64, registers: BTreeMap<R, Derived>) {
        if (self.start..self.end).contains(&target) {
            self.pending.push((target, registers));
        }
    }

    /// Counts one instruction; false once the walk has gone on too long.
    pub fn count_instruction(&mut self) -> bool {
        self.explored += 1;
        self.explored <= MAX_EXPLORED
    }
}

fn x86_64_field_paths(image: &ElfImage, function: &str) -> Option<BTreeSet<FieldPath>> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpKind, Register};

    // The System V calls may overwrite these.
    const CALLER_SAVED: [Register; 9] = [
        Register::RAX,
        Register::RCX,
        Register::RDX,
        Register::RSI,
        Register::RDI,
        Register::R8,
        Register::R9,
        Register::R10,
        Register::R11,
    ];

    let mut walk = Walk::new(image, function, Register::RDI)?;
    let mut info_factory = InstructionInfoFactory::new();
    while let Some((start, code, mut registers)) = walk.next_branch() {
        let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
        for instruction in decoder.iter().take(MAX_INSTRUCTIONS) {
            if instruction.is_invalid() || !walk.count_instruction() {
                return None;
            }
            let mut result: Option<Derived> = None;
            let has_memory_operand = (0..instruction.op_count()).any(|i| instruction.op_kind(i) == OpKind::Memory);
            let base = registers.get(&instruction.memory_base().full_register());
            if let Some(base) = base.filter(|_| has_memory_operand && instruction.memory_index() == Register::None) {
                let field = base.field(instruction.memory_displacement64());
                let to_pointer = instruction.op0_kind() == OpKind::Register && instruction.op0_register().is_gpr64();
                result = match instruction.mnemonic() {
                    Mnemonic::Mov if to_pointer && instruction.op1_kind() == OpKind::Memory => Some(Derived {
                        loads: field.clone(),
                        bias: 0,
                    }),
                    Mnemonic::Lea => Some(Derived {
                        loads: base.loads.clone(),
                        bias: *field.last().expect("a field path is never empty"),
                    }),
                    _ => None,
                };
                walk.paths.insert(field);
            }
            let source = registers.get(&instruction.op1_register().full_register());
            if instruction.op0_kind() == OpKind::Register && instruction.op1_kind() == OpKind::Register {
                if instruction.mnemonic() == Mnemonic::Mov {
                    result = source.cloned();
                }
            } else if instruction.mnemonic() == Mnemonic::Add
                && instruction.op0_kind() == OpKind::Register
                && matches!(instruction.op1_kind(), OpKind::Immediate8to64 | OpKind::Immediate32to64)
                && let Some(pointer) = registers.get(&instruction.op0_register().full_register())
            {
                let moved = Derived {
                    loads: pointer.loads.clone(),
                    bias: pointer.bias.wrapping_add(instruction.immediate(1)),
                };
                walk.paths.insert(moved.field(0));
                result = Some(moved);
            }
            let written = written_registers(&mut info_factory, &instruction);
            for register in written {
                registers.remove(&register);
            }
            let flow = instruction.flow_control();
            if matches!(flow, FlowControl::Call | FlowControl::IndirectCall) {
                for register in CALLER_SAVED {
                    registers.remove(&register);
                }
            }
            if let Some(value) = result {
                registers.insert(instruction.op0_register().full_register(), value);
            }
            let target = instruction.near_branch_target();
            match flow {
                FlowControl::ConditionalBranch => walk.branch(target, registers.clone()),
                FlowControl::UnconditionalBranch => {
                    walk.branch(target, registers);
                    break;
                }
                FlowControl::Return | FlowControl::IndirectBranch | FlowControl::Interrupt | FlowControl::Exception => {
                    break;
                }
                _ => {}
            }
        }
    }
    Some(walk.paths)
}

/// The function that both `plain` and `extended` call first, and which of
/// its arguments (4 or 5) receives the length pointer. OpenSSL's SSL_write
/// and SSL_write_ex both call ssl_write_internal(ssl, buf, num, &written),
/// and from 3.2 ssl_write_internal(ssl, buf, num, flags, &written), through
/// SSL_write_ex2. Hooking it catches both entry points and BIO users that
/// call it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedCallee {
    pub symbol: FunctionSymbol,
    /// 1-based position of the `size_t *` that receives the length.
    pub length_argument: usize,
}

/// Where an argument register's value at a call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The caller's own argument n (0-based), unchanged.
    Argument(usize),
    /// The address of a local variable.
    StackAddress,
    Other,
}

/// Where a function makes its first direct call: the target, and where each
/// of the first six argument registers' values came from.
pub(super) type FirstCall = (u64, [Source; 6]);

/// Tail jumps followed on the way to a function's first call.
const TAIL_JUMPS: usize = 2;

/// How a stretch of code on the way to a function's first call ends.
pub(super) enum StretchEnd {
    /// A direct call to this address.
    Call(u64),
    /// A jump to this address, where the next stretch starts.
    Jump(u64),
    /// Anything else: a return, an indirect branch, code that does not
    /// decode, or a stretch too long.
    Lost,
}

/// The target of `name`'s first direct call, through at most TAIL_JUMPS
/// tail jumps. `stretch` decodes the code from each address reached, for
/// the architecture, and tracks the argument registers as it goes.
pub(super) fn first_call_target(
    image: &ElfImage,
    name: &str,
    mut stretch: impl FnMut(u64, &[u8]) -> StretchEnd,
) -> Option<u64> {
    let mut address = image.function(name)?.address;
    for _ in 0..=TAIL_JUMPS {
        match stretch(address, image.code_at(address)?) {
            StretchEnd::Call(target) => return Some(target),
            StretchEnd::Jump(target) => address = target,
            StretchEnd::Lost => return None,
        }
    }
    None
}

/// `plain` takes (ssl, buf, int num) and passes a local variable for the
/// length; `extended` takes (ssl, buf, size_t num, size_t *len) and passes
/// its first three arguments through, and its `len` in the same position as
/// the plain function's local. Both must reach the same function in `.text`
/// with their first direct call, following tail jumps. The target is a call
/// target the compiler emitted, so an instruction boundary, and is checked to
/// decode. Decoded by the file's architecture, as `field_paths` is.
pub fn shared_callee(image: &ElfImage, plain: &str, extended: &str) -> Option<SharedCallee> {
    let first_call = |name: &str| match image.architecture()? {
        object::Architecture::X86_64 => x86_64_first_call(image, name),
        object::Architecture::Aarch64 => super::aarch64::first_call(image, name),
        _ => None,
    };
    let (target, extended_sources) = first_call(extended)?;
    let (plain_target, plain_sources) = first_call(plain)?;
    let length = extended_sources.iter().position(|&s| s == Source::Argument(3))?;
    let passed_through = extended_sources[..3] == [0, 1, 2].map(Source::Argument);
    let plain_matches =
        plain_sources[..2] == [0, 1].map(Source::Argument) && plain_sources[length] == Source::StackAddress;
    if plain_target != target || !passed_through || !plain_matches || !(3..=4).contains(&length) {
        return None;
    }
    if image.section_name_at(target)? != ".text" {
        return None;
    }
    let symbol = FunctionSymbol {
        name: format!("{plain}/{extended} callee"),
        address: target,
        size: 0,
        file_offset: image.file_offset_of(target)?,
    };
    probe_site(image, &symbol)?;
    Some(SharedCallee {
        symbol,
        length_argument: length + 1,
    })
}

fn x86_64_first_call(image: &ElfImage, name: &str) -> Option<FirstCall> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpKind, Register};

    const ARGUMENTS: [Register; 6] = [
        Register::RDI,
        Register::RSI,
        Register::RDX,
        Register::RCX,
        Register::R8,
        Register::R9,
    ];
    let argument_index = |register: Register| ARGUMENTS.iter().position(|&r| r == register.full_register());
    let mut sources = [0, 1, 2, 3, 4, 5].map(Source::Argument);
    let mut info_factory = InstructionInfoFactory::new();
    let target = first_call_target(image, name, |address, code| {
        let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
        for instruction in decoder.iter().take(MAX_INSTRUCTIONS) {
            if instruction.is_invalid() {
                return StretchEnd::Lost;
            }
            match instruction.flow_control() {
                FlowControl::Call if instruction.op0_kind() == OpKind::NearBranch64 => {
                    return StretchEnd::Call(instruction.near_branch_target());
                }
                FlowControl::UnconditionalBranch if instruction.op0_kind() == OpKind::NearBranch64 => {
                    return StretchEnd::Jump(instruction.near_branch_target());
                }
                FlowControl::Next | FlowControl::ConditionalBranch => {}
                _ => return StretchEnd::Lost,
            }
            let copied = match instruction.mnemonic() {
                Mnemonic::Mov
                    if instruction.op1_kind() == OpKind::Register && instruction.op1_register() == Register::RSP =>
                {
                    Some(Source::StackAddress)
                }
                Mnemonic::Mov if instruction.op1_kind() == OpKind::Register => {
                    argument_index(instruction.op1_register()).map(|from| sources[from])
                }
                Mnemonic::Lea if instruction.memory_base() == Register::RSP => Some(Source::StackAddress),
                _ => None,
            };
            let written = written_registers(&mut info_factory, &instruction);
            for index in written.into_iter().filter_map(argument_index) {
                sources[index] = copied.unwrap_or(Source::Other);
            }
        }
        StretchEnd::Lost
    })?;
    Some((target, sources))
}

/// Where an entry probe goes in a function, and what the kernel does with
/// the instruction it replaces: it emulates some (on x86 push, nop, call and
/// jmp: about 0.5 us a hit on the development VM) and single-steps the rest
/// (about 10 us there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSite {
    pub mnemonic: String,
    pub emulated: bool,
    /// Bytes from the function's start. Past the start only when the
    /// instructions before are tests and branches (OpenSSL 3.2+ begins
    /// ssl_write_internal with `test rdi, rdi; je`): they change neither the
    /// stack nor the arguments, so the probe sees the call as at its entry,
    /// and a return probe still finds the return address on top of the stack.
    pub offset: u64,
    /// What a hit costs, as far as it is known for the architecture.
    pub cost: &'static str,
}

impl std::fmt::Display for ProbeSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.offset > 0 {
            write!(f, "{} at +{}: {}", self.mnemonic, self.offset, self.cost)
        } else {
            write!(f, "{}: {}", self.mnemonic, self.cost)
        }
    }
}

/// What the kernel does with the instruction at `address`, `offset` bytes
/// into its function, when a probe replaces it. `address` must be an
/// instruction boundary found by decoding from the function's start.
pub fn site_at(image: &ElfImage, address: u64, offset: u64) -> Option<ProbeSite> {
    match image.architecture()? {
        object::Architecture::X86_64 => {
            let instruction = decode(image, address, address.checked_add(16)?).into_iter().next()?;
            let emulated = x86_64_emulated(instruction.mnemonic())
                || instruction.flow_control() == iced_x86::FlowControl::ConditionalBranch;
            Some(ProbeSite {
                mnemonic: format!("{:?}", instruction.mnemonic()).to_lowercase(),
                emulated,
                offset,
                cost: x86_64_cost(emulated),
            })
        }
        object::Architecture::Aarch64 => super::aarch64::site_at(image, address, offset),
        _ => None,
    }
}

/// Where `symbol`'s entry probe goes; None if its code does not decode.
pub fn probe_site(image: &ElfImage, symbol: &FunctionSymbol) -> Option<ProbeSite> {
    match image.architecture()? {
        object::Architecture::X86_64 => x86_64_probe_site(image, symbol),
        object::Architecture::Aarch64 => super::aarch64::probe_site(image, symbol),
        _ => None,
    }
}

/// The addresses of `function`'s return instructions.
pub fn return_instructions(image: &ElfImage, function: &FunctionSymbol) -> Vec<u64> {
    let end = function.address + function.size;
    match image.architecture() {
        Some(object::Architecture::X86_64) => decode(image, function.address, end)
            .iter()
            .filter(|instruction| instruction.mnemonic() == iced_x86::Mnemonic::Ret)
            .map(|instruction| instruction.ip())
            .collect(),
        Some(object::Architecture::Aarch64) => super::aarch64::return_instructions(image, function.address, end),
        _ => Vec::new(),
    }
}

/// Instructions a probe may be moved past.
const MAX_SKIPPED: usize = 4;

/// Instructions the kernel emulates besides conditional branches, which
/// `x86_64_probe_site` moves past rather than onto.
fn x86_64_emulated(mnemonic: iced_x86::Mnemonic) -> bool {
    use iced_x86::Mnemonic;
    matches!(
        mnemonic,
        Mnemonic::Push | Mnemonic::Nop | Mnemonic::Call | Mnemonic::Jmp
    )
}

/// The order of magnitude, as measured on the development VM (see the
/// README's performance section); bare metal single-steps faster.
fn x86_64_cost(emulated: bool) -> &'static str {
    if emulated {
        "emulated; about 0.5 us a hit in a VM"
    } else {
        "single-stepped; about 10 us a hit in a VM: 20x an emulated one"
    }
}

fn x86_64_probe_site(image: &ElfImage, symbol: &FunctionSymbol) -> Option<ProbeSite> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, OpAccess, Register};

    let mut decoder = Decoder::with_ip(64, image.function_code(symbol)?, symbol.address, DecoderOptions::NONE);
    let mut info_factory = InstructionInfoFactory::new();
    let mut first = None;
    for instruction in decoder.iter().take(MAX_SKIPPED + 1) {
        if instruction.is_invalid() {
            return None;
        }
        let emulated = x86_64_emulated(instruction.mnemonic());
        let site = ProbeSite {
            mnemonic: format!("{:?}", instruction.mnemonic()).to_lowercase(),
            emulated,
            offset: instruction.ip() - symbol.address,
            cost: x86_64_cost(emulated),
        };
        if site.emulated {
            return Some(site);
        }
        first.get_or_insert(ProbeSite { offset: 0, ..site });
        let info = info_factory.info(&instruction);
        let writes_only_flags = info.used_memory().iter().all(|m| m.access() == OpAccess::Read)
            && info.used_registers().iter().all(|used| {
                used.access() == OpAccess::Read || used.access() == OpAccess::None || used.register() == Register::None
            });
        let goes_on = matches!(
            instruction.flow_control(),
            FlowControl::Next | FlowControl::ConditionalBranch
        );
        if !writes_only_flags || !goes_on {
            return first;
        }
    }
    first
}

/// The JBE of the stack-bound check a Go function with a frame begins with
/// (`cmp rsp, [r14+16]`, or `lea r12, [rsp-N]; cmp r12, [r14+16]` for a
/// large frame), where it jumps to grow the stack. The instructions before
/// it write only flags and Go's scratch registers R12 and R13, so there the
/// arguments are as at entry; the kernel emulates the branch.
pub fn go_stack_check_branch(image: &ElfImage, function: &FunctionSymbol) -> Option<u64> {
    use iced_x86::{FlowControl, InstructionInfoFactory, Mnemonic, OpAccess, Register};

    let mut info_factory = InstructionInfoFactory::new();
    let end = function.address.checked_add(function.size.clamp(1, 64))?;
    for instruction in decode(image, function.address, end).iter().take(3) {
        if instruction.mnemonic() == Mnemonic::Jbe {
            return Some(instruction.ip());
        }
        let info = info_factory.info(instruction);
        let scratch_only = info.used_memory().iter().all(|m| m.access() == OpAccess::Read)
            && info.used_registers().iter().all(|used| {
                matches!(used.access(), OpAccess::Read | OpAccess::None)
                    || matches!(used.register(), Register::R12 | Register::R13 | Register::None)
            });
        if !scratch_only || instruction.flow_control() != FlowControl::Next {
            return None;
        }
    }
    None
}

/// Where a Go function's receiver (its first integer argument) can be read
/// anywhere in its body: the offset from the stack pointer, as the prologue
/// leaves it, of the slot Go's register ABI reserves for spilling it, the
/// first above the return address. Go code moves the stack pointer only in
/// prologues and epilogues, so one offset serves every instruction between.
/// None unless the prologue stores the argument there untouched, nothing
/// else writes that slot or takes its address, and the stack pointer moves
/// nowhere but right before a return or tail jump.
pub fn go_receiver_spill(image: &ElfImage, function: &FunctionSymbol) -> Option<u64> {
    let end = function.address.checked_add(function.size)?;
    let instructions = decode(image, function.address, end);
    if instructions.last()?.next_ip() != end {
        return None;
    }
    receiver_spill_in(&instructions, go_stack_check_branch(image, function)?)
}

/// How far `instruction` moves the stack pointer down to make a frame.
fn stack_allocation(instruction: &iced_x86::Instruction) -> Option<u64> {
    use iced_x86::{Mnemonic, OpKind, Register};
    match instruction.mnemonic() {
        Mnemonic::Push if instruction.op0_kind() == OpKind::Register => Some(8),
        Mnemonic::Sub if instruction.op0_kind() == OpKind::Register && instruction.op0_register() == Register::RSP => {
            matches!(instruction.op1_kind(), OpKind::Immediate8to64 | OpKind::Immediate32to64)
                .then(|| instruction.immediate(1))
        }
        _ => None,
    }
}

fn receiver_spill_in(instructions: &[iced_x86::Instruction], stack_check: u64) -> Option<u64> {
    use iced_x86::{FlowControl, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register};

    let mut info_factory = InstructionInfoFactory::new();
    let mut frame = 0u64;
    let mut spill = None;
    for (index, instruction) in instructions.iter().enumerate() {
        if instruction.ip() == stack_check {
            continue;
        }
        if let Some(bytes) = stack_allocation(instruction) {
            frame = frame.checked_add(bytes)?;
            continue;
        }
        let stores_receiver = instruction.mnemonic() == Mnemonic::Mov
            && instruction.op0_kind() == OpKind::Memory
            && instruction.memory_base() == Register::RSP
            && instruction.memory_index() == Register::None
            && instruction.op1_kind() == OpKind::Register
            && instruction.op1_register() == Register::RAX;
        if stores_receiver && Some(instruction.memory_displacement64()) == frame.checked_add(8) {
            spill = Some((index, instruction.memory_displacement64()));
            break;
        }
        let written = written_registers(&mut info_factory, instruction);
        if written.contains(&Register::RAX)
            || written.contains(&Register::RSP)
            || instruction.flow_control() != FlowControl::Next
        {
            return None;
        }
    }
    let (spill_index, slot) = spill?;
    let overlaps_slot = |start: u64, size: u64| {
        let (start, slot) = (start as i64 as i128, slot as i128);
        start < slot + 8 && start + size.max(1) as i128 > slot
    };
    for (index, instruction) in instructions.iter().enumerate().skip(spill_index + 1) {
        let address_taken = instruction.mnemonic() == Mnemonic::Lea
            && instruction.memory_base() == Register::RSP
            && (instruction.memory_index() != Register::None || overlaps_slot(instruction.memory_displacement64(), 1));
        let written = info_factory.info(instruction).used_memory().iter().any(|memory| {
            memory.base() == Register::RSP
                && matches!(
                    memory.access(),
                    OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
                )
                && (memory.index() != Register::None
                    || overlaps_slot(memory.displacement(), memory.memory_size().size() as u64))
        });
        if address_taken || written {
            return None;
        }
        let moves_stack = !matches!(
            instruction.flow_control(),
            FlowControl::Call | FlowControl::IndirectCall | FlowControl::Return
        ) && written_registers(&mut info_factory, instruction).contains(&Register::RSP);
        let epilogue = instructions[index + 1..].iter().take(2).any(|next| {
            matches!(
                next.flow_control(),
                FlowControl::Return | FlowControl::UnconditionalBranch
            )
        });
        if moves_stack && !epilogue {
            return None;
        }
    }
    Some(slot)
}

/// The addresses of `function`'s direct calls of `callee`.
pub fn calls_of(image: &ElfImage, function: &FunctionSymbol, callee: u64) -> Vec<u64> {
    decode(image, function.address, function.address.saturating_add(function.size))
        .iter()
        .filter(|instruction| direct_call_target(instruction) == Some(callee))
        .map(|instruction| instruction.ip())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn has(paths: &BTreeSet<FieldPath>, path: &[u64]) -> bool {
        paths.contains(path)
    }

    #[test]
    fn reads_field_offsets_of_libssl_accessors() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")).unwrap();
        // SSL_CIPHER_get_id is `mov eax, [rdi+0x18]; ret` in every 1.1.1+ build.
        assert_eq!(
            field_paths(&image, "SSL_CIPHER_get_id"),
            Some(BTreeSet::from([vec![0x18]]))
        );
        // SSL_SESSION_get_master_key copies rdi elsewhere before using it.
        let master = field_paths(&image, "SSL_SESSION_get_master_key").unwrap();
        assert!(has(&master, &[0x50]), "{master:?}");
        assert_eq!(field_paths(&image, "no_such_function"), None);
    }

    #[test]
    fn follows_pointers_and_branches_in_boringssl_accessors() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/android/libssl.so.0")).unwrap();
        // ssl->s3->client_random, passed to memcpy as s3 + 0x30.
        let random = field_paths(&image, "SSL_get_client_random").unwrap();
        assert!(has(&random, &[0x30, 0x30]), "{random:?}");
        // ssl->s3->hs->early_session on one branch, ssl->s3->established_session on another.
        let session = field_paths(&image, "SSL_get_session").unwrap();
        for path in [&[0x30, 0x110, 0x5e0][..], &[0x30, 0x1c8], &[0x58]] {
            assert!(has(&session, path), "{path:x?} in {session:x?}");
        }
        // A callee may overwrite rax: what it held before the call is forgotten.
        assert!(!has(&session, &[0x30, 0x110, 0x1c8]), "{session:x?}");
    }

    #[test]
    fn tells_emulated_probe_sites_from_single_stepped_ones() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")).unwrap();
        let internal = shared_callee(&image, "SSL_write", "SSL_write_ex").unwrap();
        let site = probe_site(&image, &internal.symbol).unwrap();
        assert_eq!((site.mnemonic.as_str(), site.emulated, site.offset), ("push", true, 0));
        assert_eq!(site.to_string(), "push: emulated; about 0.5 us a hit in a VM");
        // SSL_write itself starts by making room on the stack, which no
        // probe may be moved past.
        let exported = probe_site(&image, &image.function("SSL_write").unwrap()).unwrap();
        assert!(!exported.emulated && exported.offset == 0, "{exported}");
        // SSL_free begins `test rdi, rdi; je ...; push r13`: the probe goes
        // on the push, 9 bytes in.
        let free = probe_site(&image, &image.function("SSL_free").unwrap()).unwrap();
        assert_eq!(
            (free.mnemonic.as_str(), free.emulated, free.offset),
            ("push", true, 9),
            "{free}"
        );
        // SSL_get_error begins by writing eax: nothing may be skipped.
        let error = probe_site(&image, &image.function("SSL_get_error").unwrap()).unwrap();
        assert_eq!((error.emulated, error.offset), (false, 0), "{error}");
    }

    /// The x86-64 code of `parts`, laid out from 0x1000.
    fn x86_64_code(parts: &[&[u8]]) -> Vec<iced_x86::Instruction> {
        let bytes = parts.concat();
        iced_x86::Decoder::with_ip(64, &bytes, 0x1000, iced_x86::DecoderOptions::NONE)
            .into_iter()
            .collect()
    }

    #[test]
    fn finds_where_a_go_function_keeps_its_receiver() {
        const STACK_CHECK: &[u8] = &[0x49, 0x3b, 0x66, 0x10, 0x76, 0x40]; // cmp rsp, [r14+16]; jbe
        const PUSH_RBP: &[u8] = &[0x55, 0x48, 0x89, 0xe5]; // push rbp; mov rbp, rsp
        const FRAME: &[u8] = &[0x48, 0x83, 0xec, 0x20]; // sub rsp, 0x20
        const SPILL: &[u8] = &[0x48, 0x89, 0x44, 0x24, 0x30]; // mov [rsp+0x30], rax
        const CALL: &[u8] = &[0xe8, 0, 0, 0, 0];
        const RELOAD: &[u8] = &[0x48, 0x8b, 0x44, 0x24, 0x30]; // mov rax, [rsp+0x30]
        const EPILOGUE: &[u8] = &[0x48, 0x83, 0xc4, 0x20, 0x5d, 0xc3]; // add rsp, 0x20; pop rbp; ret
        let jbe = 0x1004;
        // Go 1.19's, which stores the frame pointer inside the frame.
        let go_119 = x86_64_code(&[
            STACK_CHECK,
            &[0x48, 0x83, 0xec, 0x68],       // sub rsp, 0x68
            &[0x48, 0x89, 0x6c, 0x24, 0x60], // mov [rsp+0x60], rbp
            &[0x48, 0x8d, 0x6c, 0x24, 0x60], // lea rbp, [rsp+0x60]
            &[0x48, 0x89, 0x44, 0x24, 0x70], // mov [rsp+0x70], rax
            CALL,
            &[0x48, 0x8b, 0x6c, 0x24, 0x60, 0x48, 0x83, 0xc4, 0x68, 0xc3],
        ]);
        assert_eq!(receiver_spill_in(&go_119, jbe), Some(0x70));
        // A prologue that pushes the frame pointer, then makes the frame.
        let body = |before_spill: &[u8], after_spill: &[u8]| {
            x86_64_code(&[
                STACK_CHECK,
                PUSH_RBP,
                FRAME,
                before_spill,
                SPILL,
                after_spill,
                CALL,
                RELOAD,
                EPILOGUE,
            ])
        };
        assert_eq!(receiver_spill_in(&body(&[], &[]), jbe), Some(0x30));
        for (before_spill, after_spill) in [
            (&[0x31, 0xc0][..], &[][..]),           // xor eax, eax: rax no longer the receiver
            (&[], &[0x48, 0x89, 0x5c, 0x24, 0x30]), // mov [rsp+0x30], rbx
            (&[], &[0x48, 0x8d, 0x7c, 0x24, 0x30]), // lea rdi, [rsp+0x30]
            (&[], &[0x48, 0x83, 0xec, 0x08]),       // sub rsp, 8 in the body
            (&[0xe8, 0, 0, 0, 0], &[]),             // a call before the spill
        ] {
            let code = body(before_spill, after_spill);
            assert_eq!(receiver_spill_in(&code, jbe), None, "{code:?}");
        }
        // rax stored elsewhere than the ABI's slot, or no stack check there
        let elsewhere = x86_64_code(&[
            STACK_CHECK,
            PUSH_RBP,
            FRAME,
            &[0x48, 0x89, 0x44, 0x24, 0x28],
            CALL,
            EPILOGUE,
        ]);
        assert_eq!(receiver_spill_in(&elsewhere, jbe), None);
        let unchecked = x86_64_code(&[PUSH_RBP, FRAME, SPILL, CALL, EPILOGUE]);
        assert_eq!(receiver_spill_in(&unchecked, jbe), None);
    }

    #[test]
    fn finds_the_internal_functions_behind_the_ssl_api() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")).unwrap();
        let write = shared_callee(&image, "SSL_write", "SSL_write_ex").expect("ssl_write_internal");
        let read = shared_callee(&image, "SSL_read", "SSL_read_ex").expect("ssl_read_internal");
        assert_ne!(write.symbol.address, read.symbol.address);
        // OpenSSL 3.0 passes the length pointer fourth.
        assert_eq!((write.length_argument, read.length_argument), (4, 4));
        for internal in [&write.symbol, &read.symbol] {
            // A shared object's text is mapped at its file offset.
            assert_eq!(internal.file_offset, internal.address);
            assert!(image.function("SSL_write").unwrap().address != internal.address);
        }
        // Functions that do not share a callee are refused.
        assert!(shared_callee(&image, "SSL_write", "SSL_read_ex").is_none());
    }
}
