//! Where an SSL object's socket BIO keeps its file descriptor, read from the
//! library's own accessors. With it the return probe names a session's
//! socket itself; the syscall tracepoints that can do the same put every
//! system call of every process on the kernel's slow path.

use std::fmt;

use crate::target::disasm;
use crate::target::elf::ElfImage;

/// Offsets from an SSL object to the fd of its read BIO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketBioLayout {
    /// The read BIO pointer in the SSL object (SSL_get_rbio).
    pub ssl_rbio: u32,
    /// From 3.2 SSL_get_rbio first checks the object's type tag at 0: only
    /// a TLS connection (tag 0) has its BIO there.
    pub ssl_type_tagged: bool,
    /// The method pointer in the BIO (BIO_method_type); the method's type is
    /// its first field.
    pub bio_method: u32,
    /// `num`, the fd of a descriptor BIO: the int after `retry_reason`
    /// (BIO_get_retry_reason) in every OpenSSL and BoringSSL `bio_st`.
    pub bio_num: u32,
}

impl SocketBioLayout {
    /// Reads the offsets from the accessors of `libssl` and of the library
    /// that has the BIO functions: `libssl` itself when OpenSSL is linked in
    /// statically, else the libcrypto it needs. None unless each accessor
    /// reads exactly one candidate field.
    pub fn derive(libssl: &ElfImage) -> Option<SocketBioLayout> {
        let rbio_paths = disasm::field_paths(libssl, "SSL_get_rbio")?;
        let ssl_type_tagged = rbio_paths.contains(&vec![0]);
        let ssl_rbio = only(
            rbio_paths
                .iter()
                .filter(|path| path.len() == 1 && path[0] != 0)
                .map(|path| path[0]),
        )?;
        let with_bio = |image: &ElfImage| -> Option<(u64, u64)> {
            let method = only(
                disasm::field_paths(image, "BIO_method_type")?
                    .iter()
                    .filter(|path| path.len() == 2 && path[1] == 0)
                    .map(|path| path[0]),
            )?;
            let retry_reason = only(
                disasm::field_paths(image, "BIO_get_retry_reason")?
                    .iter()
                    .filter(|path| path.len() == 1)
                    .map(|path| path[0]),
            )?;
            Some((method, retry_reason))
        };
        let (bio_method, retry_reason) =
            with_bio(libssl).or_else(|| libssl.needed_beside("libcrypto").iter().find_map(with_bio))?;
        Some(SocketBioLayout {
            ssl_rbio: u32::try_from(ssl_rbio).ok()?,
            ssl_type_tagged,
            bio_method: u32::try_from(bio_method).ok()?,
            bio_num: u32::try_from(retry_reason + 4).ok()?,
        })
    }
}

impl fmt::Display for SocketBioLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "socket fds read from the BIO at SSL+{:#x} (fd at BIO+{:#x})",
            self.ssl_rbio, self.bio_num
        )
    }
}

/// The one value of `values`; None when there are none or several.
fn only(mut values: impl Iterator<Item = u64>) -> Option<u64> {
    let first = values.next()?;
    values.all(|other| other == first).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn derived(path: &str) -> SocketBioLayout {
        SocketBioLayout::derive(&ElfImage::open(Path::new(path)).unwrap()).unwrap()
    }

    #[test]
    fn openssl_3_0_offsets_come_from_libssl_and_its_libcrypto() {
        assert_eq!(
            derived("/usr/lib/x86_64-linux-gnu/libssl.so.3"),
            SocketBioLayout {
                ssl_rbio: 0x10,
                ssl_type_tagged: false,
                bio_method: 0x8,
                bio_num: 0x38,
            }
        );
    }

    #[test]
    fn boringssl_offsets_differ_and_are_found_too() {
        assert_eq!(
            derived("/usr/lib/x86_64-linux-gnu/android/libssl.so.0"),
            SocketBioLayout {
                ssl_rbio: 0x18,
                ssl_type_tagged: false,
                bio_method: 0,
                bio_num: 0x18,
            }
        );
    }

    #[test]
    fn a_library_without_the_accessors_gets_no_layout() {
        let libc = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
        assert_eq!(SocketBioLayout::derive(&libc), None);
    }
}
