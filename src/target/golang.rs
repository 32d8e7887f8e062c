//! Reading Go programs: the toolchain version from the build info, and
//! function addresses from the symbol table or, in stripped programs, from
//! the runtime's own function table (`.gopclntab`), which stripping keeps.
//! The file may be anything: every read is bounded and checked.

use anyhow::{Result, anyhow, bail};

use super::elf::{ElfImage, FunctionSymbol};

/// A Go toolchain version, such as go1.19.8 = (1, 19).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "go{}.{}", self.major, self.minor)
    }
}

const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
/// Flag of Go 1.18 and later: the strings follow the header inline.
const BUILDINFO_INLINE: u8 = 0x2;
const BUILDINFO_HEADER: usize = 32;

/// The version string ("go1.19.8") the build info records.
pub fn version_string(image: &ElfImage) -> Result<String> {
    let path = image.path().display();
    let (_, info) = image
        .section(".go.buildinfo")
        .ok_or_else(|| anyhow!("{path} is not a Go program (no .go.buildinfo)"))?;
    if !info.starts_with(BUILDINFO_MAGIC) || info.len() < BUILDINFO_HEADER {
        bail!("{path}: its Go build info is not in a known form");
    }
    let pointer_size = usize::from(info[14]);
    let flags = info[15];
    if flags & BUILDINFO_INLINE != 0 {
        let (version, _) = varint_string(&info[BUILDINFO_HEADER..])
            .ok_or_else(|| anyhow!("{path}: its Go build info holds no version"))?;
        return Ok(String::from_utf8_lossy(version).into_owned());
    }
    // Before Go 1.18: a pointer to the version's string header (data, length).
    let big_endian = flags & 0x1 != 0;
    let read_pointer = |bytes: &[u8]| -> Option<u64> {
        Some(match (pointer_size, big_endian) {
            (8, false) => u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?),
            (8, true) => u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?),
            (4, false) => u64::from(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?)),
            (4, true) => u64::from(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?)),
            _ => return None,
        })
    };
    let version = (|| {
        let header = read_pointer(info.get(16..)?)?;
        let header_bytes = image.bytes_at(header, 2 * pointer_size as u64)?;
        let data = read_pointer(header_bytes)?;
        let length = read_pointer(header_bytes.get(pointer_size..)?)?;
        if length > 64 {
            return None;
        }
        Some(String::from_utf8_lossy(image.bytes_at(data, length)?).into_owned())
    })();
    version.ok_or_else(|| anyhow!("{path}: its Go build info holds no version"))
}

/// A length-prefixed (unsigned LEB128) string, and what follows it.
fn varint_string(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut length: u64 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        length |= u64::from(byte & 0x7f).checked_shl(7 * index as u32)?;
        if byte & 0x80 == 0 {
            let rest = &bytes[index + 1..];
            let length = usize::try_from(length).ok()?;
            return (length <= rest.len()).then(|| rest.split_at(length));
        }
    }
    None
}

/// "go1.19.8" as (1, 19); "devel" and other forms as None.
pub fn parse_version(text: &str) -> Option<GoVersion> {
    let mut parts = text.strip_prefix("go")?.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(GoVersion { major, minor })
}

/// A Go function by its full name ("crypto/tls.(*Config).writeKeyLog"):
/// from the symbol table, or else from `.gopclntab`.
pub fn function(image: &ElfImage, name: &str) -> Option<FunctionSymbol> {
    image.function(name).or_else(|| pclntab_function(image, name))
}

/// Where `function`'s stack-bound check branches, past which a probe sees
/// the arguments as at entry (see `disasm::go_stack_check_branch`); None
/// when it does not begin with the usual check.
pub fn stack_check_branch(image: &ElfImage, function: &FunctionSymbol) -> Option<u64> {
    match image.architecture()? {
        object::Architecture::X86_64 => super::disasm::go_stack_check_branch(image, function),
        object::Architecture::Aarch64 => super::aarch64::go_stack_check_branch(image, function),
        _ => None,
    }
}

/// Where `function`'s receiver can be read at any instruction of its body, as
/// an offset from the stack pointer (see `disasm::go_receiver_spill`); None
/// when its code does not show it for certain.
pub fn receiver_spill_slot(image: &ElfImage, function: &FunctionSymbol) -> Option<u64> {
    match image.architecture()? {
        object::Architecture::X86_64 => super::disasm::go_receiver_spill(image, function),
        object::Architecture::Aarch64 => super::aarch64::go_receiver_spill(image, function),
        _ => None,
    }
}

/// The addresses of `function`'s direct calls of `callee`, decoded from its start.
pub fn calls_of(image: &ElfImage, function: &FunctionSymbol, callee: u64) -> Vec<u64> {
    match image.architecture() {
        Some(object::Architecture::X86_64) => super::disasm::calls_of(image, function, callee),
        Some(object::Architecture::Aarch64) => super::aarch64::calls_of(image, function, callee),
        _ => Vec::new(),
    }
}

/// The magic numbers of the function table's header: Go 1.16-1.17,
/// 1.18-1.19, 1.20 and later.
const PCLNTAB_116: u32 = 0xffff_fffa;
const PCLNTAB_118: u32 = 0xffff_fff0;
const PCLNTAB_120: u32 = 0xffff_fff1;

fn pclntab_function(image: &ElfImage, name: &str) -> Option<FunctionSymbol> {
    let (table_address, table) = image.section(".gopclntab")?;
    let magic = u32::from_le_bytes(table.get(..4)?.try_into().ok()?);
    let pointer_size = usize::from(*table.get(7)?);
    if pointer_size != 8 || table.get(4..6)? != [0, 0] {
        return None;
    }
    let word = |index: usize| -> Option<u64> {
        let at = 8usize.checked_add(index.checked_mul(8)?)?;
        Some(u64::from_le_bytes(table.get(at..at.checked_add(8)?)?.try_into().ok()?))
    };
    let nfunc = usize::try_from(word(0)?).ok()?;
    // The header's words after nfunc and nfiles; 1.18 added textStart.
    let (text_start, names, functab) = match magic {
        PCLNTAB_116 => (None, word(2)?, word(6)?),
        // textStart is relocated in position-independent programs.
        PCLNTAB_118 | PCLNTAB_120 => {
            let field = table_address.checked_add(8 + 2 * 8)?;
            let text = image.relocated_pointer(field).unwrap_or(word(2)?);
            (Some(text), word(3)?, word(7)?)
        }
        _ => return None,
    };
    let names = table.get(usize::try_from(names).ok()?..)?;
    let functab = table.get(usize::try_from(functab).ok()?..)?;
    // Each entry: the function's entry and its _func's offset from functab;
    // u32 offsets since 1.18, full words before.
    let entry_size = if text_start.is_some() { 8 } else { 16 };
    for index in 0..nfunc {
        let entry = functab.get(index.checked_mul(entry_size)?..)?;
        let (address, func_offset) = match text_start {
            Some(text) => (
                text.checked_add(u64::from(u32::from_le_bytes(entry.get(..4)?.try_into().ok()?)))?,
                u64::from(u32::from_le_bytes(entry.get(4..8)?.try_into().ok()?)),
            ),
            None => (
                u64::from_le_bytes(entry.get(..8)?.try_into().ok()?),
                u64::from_le_bytes(entry.get(8..16)?.try_into().ok()?),
            ),
        };
        // _func: the entry (u32 offset, or a word before 1.18), then nameOff.
        let func = functab.get(usize::try_from(func_offset).ok()?..)?;
        let name_at = if text_start.is_some() { 4 } else { 8 };
        let name_offset = i32::from_le_bytes(func.get(name_at..name_at + 4)?.try_into().ok()?);
        let found = names.get(usize::try_from(name_offset).ok()?..)?;
        let end = found.iter().position(|&b| b == 0)?;
        if &found[..end] != name.as_bytes() {
            continue;
        }
        let next = functab
            .get(index.checked_add(1)?.checked_mul(entry_size)?..)
            .and_then(|next| match text_start {
                Some(text) => text.checked_add(u64::from(u32::from_le_bytes(next.get(..4)?.try_into().ok()?))),
                None => Some(u64::from_le_bytes(next.get(..8)?.try_into().ok()?)),
            });
        return Some(FunctionSymbol {
            name: name.to_string(),
            address,
            size: next.map_or(0, |next| next.saturating_sub(address)),
            file_offset: image.file_offset_of(address)?,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Debian's go command: a stripped Go 1.19 program that uses crypto/tls.
    const GO: &str = "/usr/lib/go-1.19/bin/go";

    #[test]
    fn reads_the_version_of_debian_s_go() {
        let image = ElfImage::open(Path::new(GO)).unwrap();
        let version = version_string(&image).unwrap();
        assert!(version.starts_with("go1.19"), "{version}");
        assert_eq!(parse_version(&version), Some(GoVersion { major: 1, minor: 19 }));
    }

    #[test]
    fn finds_functions_of_a_stripped_program_in_its_function_table() {
        let image = ElfImage::open(Path::new(GO)).unwrap();
        assert!(image.function("runtime.main").is_none(), "the go command is stripped");
        let main = function(&image, "runtime.main").unwrap();
        let key_log = function(&image, "crypto/tls.(*Config).writeKeyLog").unwrap();
        let (text, code) = image.section(".text").unwrap();
        for found in [&main, &key_log] {
            assert!(
                found.address >= text && found.address < text + code.len() as u64,
                "{found:?}"
            );
            assert!(found.size > 0 && found.size < 4096, "{found:?}");
        }
        assert!(function(&image, "crypto/tls.(*Config).noSuchFunction").is_none());
    }

    #[test]
    fn finds_where_crypto_tls_keeps_its_receiver() {
        let image = ElfImage::open(Path::new(GO)).unwrap();
        // `sub rsp, 0x68`, then the receiver stored at the ABI's slot.
        let read = function(&image, "crypto/tls.(*Conn).Read").unwrap();
        assert_eq!(receiver_spill_slot(&image, &read), Some(0x70));
        // A function that never stores its receiver.
        let len = function(&image, "crypto/tls.(*halfConn).explicitNonceLen").unwrap();
        assert_eq!(receiver_spill_slot(&image, &len), None);
    }

    #[test]
    fn versions_and_strings_in_other_forms() {
        assert_eq!(parse_version("go1.22rc1"), Some(GoVersion { major: 1, minor: 22 }));
        assert_eq!(parse_version("devel +abc"), None);
        assert_eq!(
            varint_string(&[3, b'a', b'b', b'c', 9]),
            Some((&b"abc"[..], &[9u8][..]))
        );
        assert_eq!(varint_string(&[5, b'a']), None);
        assert_eq!(varint_string(&[0x80; 12]), None);
    }

    #[test]
    fn other_files_are_refused() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")).unwrap();
        assert!(
            version_string(&image)
                .unwrap_err()
                .to_string()
                .contains("not a Go program")
        );
        assert!(function(&image, "runtime.main").is_none());
    }
}
