//! Reading the ELF files we hook: function symbols and their file offsets,
//! the libraries a file needs, and the strings a build embeds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use object::elf::{PF_X, PT_LOAD};
use object::read::elf::{Dyn, ElfFile64, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol, SymbolKind};

/// A function symbol placed in the file, checked to lie inside an executable
/// segment: the only kind of address a uprobe may go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSymbol {
    pub name: String,
    pub address: u64,
    pub size: u64,
    pub file_offset: u64,
}

pub struct ElfImage {
    path: PathBuf,
    data: Vec<u8>,
}

impl ElfImage {
    /// Reads `path`; the error says whether it is missing or not an ELF file.
    pub fn open(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        ElfImage::from_bytes(path, data)
    }

    /// Takes the bytes of the file at `path`, which may be anything.
    pub fn from_bytes(path: &Path, data: Vec<u8>) -> Result<Self> {
        if !data.starts_with(b"\x7fELF") {
            bail!("{} is not an ELF file", path.display());
        }
        if data.get(4) != Some(&2) {
            bail!(
                "{} is a 32-bit ELF file; only 64-bit programs can be hooked",
                path.display()
            );
        }
        let image = ElfImage {
            path: path.to_path_buf(),
            data,
        };
        image.parse()?;
        Ok(image)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parse(&self) -> Result<ElfFile64<'_, Endianness>> {
        ElfFile64::parse(&*self.data).with_context(|| format!("{} is not a valid ELF file", self.path.display()))
    }

    /// Finds a defined function by name in `.dynsym` or `.symtab`, ignoring a
    /// symbol version suffix such as `@@OPENSSL_3.0.0`.
    pub fn function(&self, name: &str) -> Option<FunctionSymbol> {
        let elf = self.parse().ok()?;
        let symbol = elf
            .dynamic_symbols()
            .chain(elf.symbols())
            .filter(|sym| sym.kind() == SymbolKind::Text && sym.is_definition() && sym.address() != 0)
            .find(|sym| sym.name().is_ok_and(|n| n.split('@').next() == Some(name)))?;
        let file_offset = executable_file_offset(&elf, symbol.address())?;
        Some(FunctionSymbol {
            name: name.to_string(),
            address: symbol.address(),
            size: symbol.size(),
            file_offset,
        })
    }

    /// The address of a defined variable, by name, in `.dynsym` or `.symtab`.
    pub fn variable(&self, name: &str) -> Option<u64> {
        let elf = self.parse().ok()?;
        elf.dynamic_symbols()
            .chain(elf.symbols())
            .filter(|sym| sym.kind() == SymbolKind::Data && sym.is_definition() && sym.address() != 0)
            .find(|sym| sym.name().is_ok_and(|n| n.split('@').next() == Some(name)))
            .map(|sym| sym.address())
    }

    /// The DT_NEEDED entries: the shared libraries this file links against.
    pub fn needed_libraries(&self) -> Vec<String> {
        let Ok(elf) = self.parse() else { return Vec::new() };
        let endian = elf.endian();
        let Ok(Some((dynamic, strings_index))) = elf.elf_section_table().dynamic(endian, &*self.data) else {
            return Vec::new();
        };
        let Ok(strings) = elf.elf_section_table().strings(endian, &*self.data, strings_index) else {
            return Vec::new();
        };
        dynamic
            .iter()
            .filter(|entry| entry.d_tag(endian) == u64::from(object::elf::DT_NEEDED))
            .filter_map(|entry| entry.string(endian, strings).ok())
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect()
    }

    /// The libraries this file needs whose names start with `prefix`, opened
    /// from the directory the file is in (where a distribution installs a
    /// library's companions, such as libssl's libcrypto).
    pub fn needed_beside(&self, prefix: &str) -> Vec<ElfImage> {
        let dir = self.path().parent().unwrap_or(Path::new("/"));
        self.needed_libraries()
            .iter()
            .filter(|name| name.starts_with(prefix))
            .filter_map(|name| ElfImage::open(&dir.join(name)).ok())
            .collect()
    }

    pub fn contains(&self, needle: &[u8]) -> bool {
        memchr::memmem::find(&self.data, needle).is_some()
    }

    /// Every NUL-terminated string in the file that starts with `prefix`.
    pub fn strings_starting_with<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        string_starts(&self.data, prefix).map(move |start| {
            let rest = &self.data[start..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            &rest[..end]
        })
    }
}

/// Reading machine code.
impl ElfImage {
    pub fn architecture(&self) -> Option<object::Architecture> {
        Some(self.parse().ok()?.architecture())
    }

    /// The file offset of `address`, if it lies in an executable segment.
    pub fn file_offset_of(&self, address: u64) -> Option<u64> {
        executable_file_offset(&self.parse().ok()?, address)
    }

    /// Machine code from `address`, which must lie in an executable
    /// segment: where a jump lands, with no symbol to give its extent.
    pub fn code_at(&self, address: u64) -> Option<&[u8]> {
        let file_offset = self.file_offset_of(address)?;
        self.function_code(&FunctionSymbol {
            name: String::new(),
            address,
            size: 0,
            file_offset,
        })
    }

    /// Machine code from `start` up to `end`, or to the end of the
    /// executable segment holding `start` if that comes first.
    pub fn code_between(&self, start: u64, end: u64) -> Option<&[u8]> {
        let first = usize::try_from(self.file_offset_of(start)?).ok()?;
        let wanted = usize::try_from(end.checked_sub(start)?).ok()?;
        let elf = self.parse().ok()?;
        let endian = elf.endian();
        let segment_end = elf.elf_program_headers().iter().find_map(|segment| {
            let offset = segment.p_offset(endian);
            let executable = segment.p_type(endian) == PT_LOAD && segment.p_flags(endian) & PF_X != 0;
            let size = segment.p_filesz(endian);
            (executable && (first as u64) >= offset && (first as u64) - offset < size)
                .then(|| usize::try_from(offset.checked_add(size)?).ok())
                .flatten()
        })?;
        let last = first.checked_add(wanted)?.min(segment_end).min(self.data.len());
        self.data.get(first..last)
    }

    /// The address and bytes of the section called `name`, when the file
    /// holds them.
    pub fn section(&self, name: &str) -> Option<(u64, &[u8])> {
        use object::ObjectSection;

        let elf = self.parse().ok()?;
        let section = elf.section_by_name(name)?;
        let (offset, size) = section.file_range()?;
        let start = usize::try_from(offset).ok()?;
        let bytes = self.data.get(start..start.checked_add(usize::try_from(size).ok()?)?)?;
        Some((section.address(), bytes))
    }

    /// The name of the section holding `address`.
    pub fn section_name_at(&self, address: u64) -> Option<String> {
        use object::ObjectSection;

        let elf = self.parse().ok()?;
        elf.sections()
            .find(|section| address >= section.address() && address < section.address() + section.size())
            .and_then(|section| section.name().ok().map(str::to_string))
    }

    /// Every function's start, stripped ones included, from the unwind
    /// table (`.eh_frame_hdr`), sorted.
    pub fn function_starts(&self) -> Result<Vec<u64>> {
        let path = self.path.display();
        let (header_address, header) = self
            .section(".eh_frame_hdr")
            .with_context(|| format!("{path} has no .eh_frame_hdr to find functions in"))?;
        unwind_table_starts(header_address, header)
            .with_context(|| format!("{path}: its .eh_frame_hdr is in a form not read"))
    }

    /// The slots (GOT entries) the dynamic linker fills with the address of
    /// an imported symbol, by the symbol's name.
    pub fn imported_slots(&self) -> HashMap<u64, String> {
        use object::read::{ObjectSymbolTable, RelocationTarget};

        let Ok(elf) = self.parse() else { return HashMap::new() };
        let (Some(relocations), Some(symbols)) = (elf.dynamic_relocations(), elf.dynamic_symbol_table()) else {
            return HashMap::new();
        };
        relocations
            .filter_map(|(slot, relocation)| {
                let RelocationTarget::Symbol(index) = relocation.target() else {
                    return None;
                };
                let name = symbols.symbol_by_index(index).ok()?.name().ok()?;
                Some((slot, name.split('@').next().unwrap_or(name).to_string()))
            })
            .filter(|(_, name)| !name.is_empty())
            .collect()
    }

    /// The pointer the dynamic linker stores at `address` relative to the
    /// load address (a relative relocation's addend): a function table entry.
    pub fn relocated_pointer(&self, address: u64) -> Option<u64> {
        use object::read::{RelocationFlags, RelocationTarget};

        let elf = self.parse().ok()?;
        elf.dynamic_relocations()?
            .find(|(slot, _)| *slot == address)
            .filter(|(_, relocation)| {
                relocation.target() == RelocationTarget::Absolute
                    && matches!(relocation.flags(), RelocationFlags::Elf { r_type } if r_type == object::elf::R_X86_64_RELATIVE || r_type == object::elf::R_AARCH64_RELATIVE)
            })
            .and_then(|(_, relocation)| u64::try_from(relocation.addend()).ok())
    }

    /// The page where the first loaded segment starts: what a process's
    /// mapping of the file at offset 0 corresponds to.
    pub fn first_load_page(&self) -> Option<u64> {
        let elf = self.parse().ok()?;
        let endian = elf.endian();
        elf.elf_program_headers()
            .iter()
            .filter(|segment| segment.p_type(endian) == PT_LOAD)
            .map(|segment| segment.p_vaddr(endian) & !0xFFF)
            .min()
    }

    /// `length` bytes at `address`, where a loaded segment holds them in the file.
    pub fn bytes_at(&self, address: u64, length: u64) -> Option<&[u8]> {
        let elf = self.parse().ok()?;
        let endian = elf.endian();
        let start = elf.elf_program_headers().iter().find_map(|segment| {
            let offset = address.checked_sub(segment.p_vaddr(endian))?;
            (segment.p_type(endian) == PT_LOAD && offset.checked_add(length)? <= segment.p_filesz(endian))
                .then(|| segment.p_offset(endian).checked_add(offset))
                .flatten()
        })?;
        let start = usize::try_from(start).ok()?;
        self.data.get(start..start.checked_add(usize::try_from(length).ok()?)?)
    }

    /// The address of the NUL-terminated string `text`, where a loaded
    /// segment holds it.
    pub fn string_address(&self, text: &[u8]) -> Option<u64> {
        let elf = self.parse().ok()?;
        let endian = elf.endian();
        string_starts(&self.data, text)
            .filter(|&start| self.data.get(start + text.len()) == Some(&0))
            .find_map(|start| {
                let start = u64::try_from(start).ok()?;
                elf.elf_program_headers().iter().find_map(|segment| {
                    let offset = segment.p_offset(endian);
                    let in_file = start >= offset && start - offset < segment.p_filesz(endian);
                    (segment.p_type(endian) == PT_LOAD && in_file)
                        .then(|| segment.p_vaddr(endian).checked_add(start - offset))
                        .flatten()
                })
            })
    }

    /// The machine code of a function found by `function`, from its file
    /// offset; a symbol without a size gets a short window.
    pub fn function_code(&self, symbol: &FunctionSymbol) -> Option<&[u8]> {
        let start = usize::try_from(symbol.file_offset).ok()?;
        let len = if symbol.size > 0 { symbol.size as usize } else { 256 };
        let end = start.checked_add(len)?.min(self.data.len());
        self.data.get(start..end)
    }
}

/// Function starts from the binary search table of `.eh_frame_hdr`, in the
/// encoding every GNU toolchain writes: `eh_frame_ptr` as pc-relative sdata4,
/// the count as udata4, the table as sdata4 relative to the section.
fn unwind_table_starts(section_address: u64, header: &[u8]) -> Option<Vec<u64>> {
    const PCREL_SDATA4: u8 = 0x1b;
    const UDATA4: u8 = 0x03;
    const DATAREL_SDATA4: u8 = 0x3b;
    if header.get(..4)? != [1, PCREL_SDATA4, UDATA4, DATAREL_SDATA4] {
        return None;
    }
    let word = |at: usize| -> Option<[u8; 4]> { header.get(at..at.checked_add(4)?)?.try_into().ok() };
    let count = usize::try_from(u32::from_le_bytes(word(8)?)).ok()?;
    let mut starts = (0..count)
        .map(|index| {
            let relative = i32::from_le_bytes(word(12usize.checked_add(index.checked_mul(8)?)?)?);
            section_address.checked_add_signed(i64::from(relative))
        })
        .collect::<Option<Vec<u64>>>()?;
    starts.sort_unstable();
    Some(starts)
}

/// Offsets of every occurrence of `needle` in `haystack` that begins a C
/// string (preceded by a NUL or the start of the data).
fn string_starts<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    memchr::memmem::find_iter(haystack, needle).filter(move |&i| i == 0 || haystack[i - 1] == 0)
}

/// Converts a virtual address into the file offset uprobes expect, only if it
/// falls inside an executable loadable segment backed by file bytes.
fn executable_file_offset(elf: &ElfFile64<'_, Endianness>, address: u64) -> Option<u64> {
    let endian = elf.endian();
    elf.elf_program_headers().iter().find_map(|segment| {
        let start = segment.p_vaddr(endian);
        let file_size = segment.p_filesz(endian);
        let executable = segment.p_type(endian) == PT_LOAD && segment.p_flags(endian) & PF_X != 0;
        // A hostile file's segments may reach past 2^64.
        let end = start.checked_add(file_size)?;
        if !executable || address < start || address >= end {
            return None;
        }
        (address - start).checked_add(segment.p_offset(endian))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIBSSL3: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

    #[test]
    fn finds_versioned_dynamic_function_in_libssl() {
        let image = ElfImage::open(Path::new(LIBSSL3)).unwrap();
        let write = image.function("SSL_write").expect("libssl exports SSL_write");
        assert!(write.size > 0);
        // Shared objects map their text at the same offset as its address.
        assert_eq!(write.file_offset, write.address);
        assert!(image.function("SSL_no_such_function").is_none());
    }

    #[test]
    fn lists_needed_libraries() {
        let image = ElfImage::open(Path::new(LIBSSL3)).unwrap();
        assert!(image.needed_libraries().iter().any(|lib| lib == "libcrypto.so.3"));
    }

    #[test]
    fn a_truncated_unwind_table_is_refused() {
        assert!(unwind_table_starts(0x1000, &[1, 0x1b, 0x03, 0x3b, 0, 0, 0, 0, 9, 0, 0, 0]).is_none());
        assert!(unwind_table_starts(0x1000, &[2, 0x1b, 0x03, 0x3b]).is_none());
    }

    #[test]
    fn imports_and_strings_of_libssl() {
        let image = ElfImage::open(Path::new(LIBSSL3)).unwrap();
        let slots = image.imported_slots();
        assert!(
            slots.values().any(|name| name == "SSL_CTX_new" || name == "ERR_new"),
            "{slots:?}"
        );
        let address = image.string_address(b"CLIENT_RANDOM").unwrap();
        assert!(
            image
                .section_name_at(address)
                .is_some_and(|name| name.contains("rodata"))
        );
    }

    #[test]
    fn rejects_missing_and_non_elf_files() {
        let missing = ElfImage::open(Path::new("/nonexistent/libssl.so")).err().unwrap();
        assert!(format!("{missing:#}").contains("cannot read"));
        let text = ElfImage::open(Path::new("/etc/passwd")).err().unwrap();
        assert!(text.to_string().contains("not an ELF file"));
    }
}
