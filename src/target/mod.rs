//! Finding what to hook: ELF files, their symbols, and where processes map them.

pub mod aarch64;
pub mod disasm;
pub mod elf;
pub mod foreign;
pub mod golang;
pub mod libpath;
