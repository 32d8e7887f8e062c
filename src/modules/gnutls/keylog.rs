//! Where GnuTLS hands each secret it derives to its key log hook, found in
//! the library itself and checked, never taken from a table of versions.
//!
//! Every secret, TLS 1.3's and TLS 1.2's master secret alike, goes through the
//! internal `_gnutls_call_keylog_func(session, label, secret, size)` whatever
//! hook the program set, and whether or not SSLKEYLOGFILE is set. It is not
//! exported; it is the one function besides the exported getter
//! `gnutls_session_get_keylog_function` that loads the session's hook field,
//! straight from its first argument. Its start comes from the unwind table
//! (`.eh_frame_hdr`), which lists every function's start.

use std::fmt;

use anyhow::{Result, anyhow, bail};

use crate::target::elf::{ElfImage, FunctionSymbol};
use crate::target::{aarch64, disasm};

/// The function every secret goes through, where a session keeps its
/// client random (which names the secrets in a key log), and what a resumed
/// TLS 1.2 session is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeylogSite {
    pub function: FunctionSymbol,
    pub client_random: u32,
    pub resumption: Option<ResumedSessions>,
}

/// A resumed TLS 1.2 session derives no secret, so the key log call never
/// sees one: its master secret is read from the session when
/// `gnutls_handshake` returns 0, with the version to tell it from TLS 1.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumedSessions {
    pub handshake: FunctionSymbol,
    /// Where `gnutls_session_get_master_secret` points.
    pub master_secret: u32,
    /// What `gnutls_protocol_get_version` follows: the session's version
    /// entry, then the protocol number in it.
    pub version_entry: u32,
    pub version_id: u32,
}

impl fmt::Display for KeylogSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "secrets from the key log call at {:#x}, client random at session+{:#x}",
            self.function.address, self.client_random
        )?;
        match &self.resumption {
            Some(resumed) => write!(
                f,
                "; resumed sessions' master secret at session+{:#x}, version at session+{:#x}+{:#x}",
                resumed.master_secret, resumed.version_entry, resumed.version_id
            ),
            None => f.write_str("; resumed TLS 1.2 sessions cannot be keyed"),
        }
    }
}

const HOOK_GETTER: &str = "gnutls_session_get_keylog_function";
const RANDOM_GETTER: &str = "gnutls_session_get_random";
const TLS_RANDOM_LEN: u64 = 32;

pub fn locate(image: &ElfImage) -> Result<KeylogSite> {
    let path = image.path().display();
    let loads_first_argument_field = match image.architecture() {
        Some(object::Architecture::X86_64) => loads_first_argument_field,
        Some(object::Architecture::Aarch64) => aarch64::loads_first_argument_field,
        _ => bail!("{path}: finding GnuTLS's key log call is done for x86_64 and aarch64 only"),
    };
    let hook_field = disasm::single_field(image, HOOK_GETTER)
        .ok_or_else(|| anyhow!("{path}: {HOOK_GETTER} does not read one session field; this GnuTLS is not known"))?;
    let client_random = client_random_field(image)
        .ok_or_else(|| anyhow!("{path}: {RANDOM_GETTER} does not show where the randoms are"))?;
    let getter = image
        .function(HOOK_GETTER)
        .ok_or_else(|| anyhow!("{path} has no {HOOK_GETTER}"))?;
    let starts = image.function_starts()?;
    let loaders: Vec<u64> = starts
        .windows(2)
        .filter(|pair| pair[0] != getter.address)
        .filter(|pair| loads_first_argument_field(image, pair[0], pair[1], hook_field))
        .map(|pair| pair[0])
        .collect();
    let [address] = loaders[..] else {
        bail!(
            "{path}: {} functions load the key log hook, not one; this GnuTLS is not known",
            loaders.len()
        );
    };
    let file_offset = image
        .file_offset_of(address)
        .ok_or_else(|| anyhow!("{path}: the key log call at {address:#x} is outside the code"))?;
    Ok(KeylogSite {
        function: FunctionSymbol {
            name: "_gnutls_call_keylog_func".to_string(),
            address,
            size: 0,
            file_offset,
        },
        client_random: u32::try_from(client_random)?,
        resumption: resumed_sessions(image),
    })
}

/// What resumed sessions are read from; None when an accessor does not show it.
fn resumed_sessions(image: &ElfImage) -> Option<ResumedSessions> {
    let master_secret = disasm::single_field(image, "gnutls_session_get_master_secret")?;
    // It tests the entry pointer, then loads the number from it.
    let paths = disasm::field_paths(image, "gnutls_protocol_get_version")?;
    let [version_entry, version_id] = paths.iter().max_by_key(|path| path.len())?[..] else {
        return None;
    };
    if !paths
        .iter()
        .all(|path| path[..] == [version_entry] || path[..] == [version_entry, version_id])
    {
        return None;
    }
    Some(ResumedSessions {
        handshake: image.function("gnutls_handshake")?,
        master_secret: u32::try_from(master_secret).ok()?,
        version_entry: u32::try_from(version_entry).ok()?,
        version_id: u32::try_from(version_id).ok()?,
    })
}

/// `gnutls_session_get_random` hands out the client's and the server's
/// randoms, 32 bytes each, the client's first in the session's security
/// parameters.
fn client_random_field(image: &ElfImage) -> Option<u64> {
    let paths = disasm::field_paths(image, RANDOM_GETTER)?;
    let fields: Vec<u64> = paths
        .iter()
        .filter(|path| path.len() == 1)
        .map(|path| path[0])
        .collect();
    match fields.as_slice() {
        [client, server] if client + TLS_RANDOM_LEN == *server => Some(*client),
        _ => None,
    }
}

/// Whether the function from `start` to `end` loads `[rdi + field]` while
/// rdi still holds its first argument (no instruction before wrote it).
fn loads_first_argument_field(image: &ElfImage, start: u64, end: u64, field: u64) -> bool {
    use iced_x86::{InstructionInfoFactory, OpKind, Register};

    let mut info = InstructionInfoFactory::new();
    for instruction in disasm::decode(image, start, end) {
        let loads_field = (0..instruction.op_count()).any(|operand| {
            instruction.op_kind(operand) == OpKind::Memory
                && instruction.memory_base() == Register::RDI
                && instruction.memory_index() == Register::None
                && instruction.memory_displacement64() == field
        }) && instruction.op0_kind() == OpKind::Register;
        if loads_field {
            return true;
        }
        let writes_rdi =
            info.info(&instruction).used_registers().iter().any(|used| {
                used.register().full_register() == Register::RDI && used.access() != iced_x86::OpAccess::Read
            });
        if writes_rdi {
            return false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const LIBGNUTLS: &str = "/usr/lib/x86_64-linux-gnu/libgnutls.so.30";

    #[test]
    fn finds_the_key_log_call_of_the_system_gnutls() {
        let image = ElfImage::open(Path::new(LIBGNUTLS)).unwrap();
        let site = locate(&image).unwrap();
        // Checked with gdb on Debian's 3.7.9 (research notes): the call sits
        // just after the exported setter, and the client random at +0x50.
        let setter = image.function("gnutls_session_set_keylog_function").unwrap();
        assert!(site.function.address > setter.address && site.function.address < setter.address + 0x40);
        assert_eq!(site.client_random, 0x50);
        assert!(disasm::probe_site(&image, &site.function).is_some());
        let resumed = site.resumption.unwrap();
        assert_eq!(resumed.master_secret, 0x20);
        assert_eq!(resumed.version_id, 8);
    }

    #[test]
    fn finds_an_internal_function_placed_before_the_getter() {
        let stub = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/elf/gnutls-stub-x86_64.so");
        let image = ElfImage::open(Path::new(stub)).unwrap();
        let site = locate(&image).unwrap();
        let getter = image.function(HOOK_GETTER).unwrap();
        assert_ne!(site.function.address, getter.address);
        assert_eq!(site.client_random, 0x50);
    }

    #[test]
    fn finds_the_key_log_call_of_the_arm64_gnutls() {
        let image = ElfImage::open(Path::new("/usr/lib/aarch64-linux-gnu/libgnutls.so.30")).unwrap();
        let site = locate(&image).unwrap();
        let setter = image.function("gnutls_session_set_keylog_function").unwrap();
        assert!(site.function.address > setter.address && site.function.address < setter.address + 0x40);
        assert_eq!(site.client_random, 0x50);
        let resumed = site.resumption.unwrap();
        assert_eq!((resumed.master_secret, resumed.version_id), (0x20, 8));
        assert!(disasm::probe_site(&image, &site.function).is_some());
    }

    #[test]
    fn a_library_that_is_not_gnutls_is_refused() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")).unwrap();
        assert!(locate(&image).is_err());
    }
}
