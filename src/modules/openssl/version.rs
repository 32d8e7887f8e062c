//! Which TLS library a file is, and which release, read from the file itself.

use std::fmt;

use crate::target::elf::ElfImage;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SslLibrary {
    /// An OpenSSL release such as "3.0.13" or "1.1.1w"; None when no version
    /// string was found in the file or the libcrypto it needs.
    OpenSsl(Option<String>),
    BoringSsl,
}

impl fmt::Display for SslLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SslLibrary::OpenSsl(Some(version)) => write!(f, "OpenSSL {version}"),
            SslLibrary::OpenSsl(None) => write!(f, "OpenSSL (version unknown)"),
            SslLibrary::BoringSsl => write!(f, "BoringSSL"),
        }
    }
}

/// Reads a --ssl_version value: "openssl 3.0.13", "3.0.13" or "boringssl".
pub fn parse_override(text: &str) -> anyhow::Result<SslLibrary> {
    let lower = text.trim().to_ascii_lowercase();
    if lower.starts_with("boringssl") {
        return Ok(SslLibrary::BoringSsl);
    }
    let version = lower.strip_prefix("openssl").unwrap_or(&lower).trim();
    parse_banner(&format!("OpenSSL {version}"))
        .map(|v| SslLibrary::OpenSsl(Some(v)))
        .ok_or_else(|| {
            anyhow::anyhow!("--ssl_version {text:?} is not a version like \"openssl 3.0.13\" or \"boringssl\"")
        })
}

/// Functions only BoringSSL exports; OpenSSL never had them.
const BORINGSSL_ONLY: &[&str] = &["SSL_CTX_set_strict_cipher_list", "SSL_get_curve_id"];

/// Identifies the library in `image`. OpenSSL keeps its version banner in
/// libcrypto, so when libssl lacks it the libcrypto next to it is read too.
pub fn detect(image: &ElfImage) -> SslLibrary {
    if BORINGSSL_ONLY.iter().any(|name| image.function(name).is_some()) {
        return SslLibrary::BoringSsl;
    }
    if let Some(version) = openssl_version_in(image) {
        return SslLibrary::OpenSsl(Some(version));
    }
    let from_libcrypto = image.needed_beside("libcrypto").iter().find_map(openssl_version_in);
    SslLibrary::OpenSsl(from_libcrypto)
}

fn openssl_version_in(image: &ElfImage) -> Option<String> {
    image
        .strings_starting_with(b"OpenSSL ")
        .find_map(|banner| parse_banner(std::str::from_utf8(banner).ok()?))
        .or_else(|| provider_version_in(image))
}

/// A program that links OpenSSL 3 statically may leave the banner out (it is
/// only kept when OpenSSL_version is called), but the default provider,
/// always linked, reports the bare version string ("3.0.13"). Trusted only
/// when the provider is there and exactly one such string exists.
fn provider_version_in(image: &ElfImage) -> Option<String> {
    if !image.contains(b"OpenSSL Default Provider") {
        return None;
    }
    let mut candidates: Vec<&[u8]> = image
        .strings_starting_with(b"3.")
        .filter(|s| is_bare_version(s))
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    match candidates.as_slice() {
        [only] => Some(String::from_utf8_lossy(only).into_owned()),
        _ => None,
    }
}

fn is_bare_version(text: &[u8]) -> bool {
    let parts: Vec<&[u8]> = text.split(|&b| b == b'.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.iter().all(u8::is_ascii_digit))
}

/// "OpenSSL 1.1.1w  11 Sep 2023" -> "1.1.1w". Other strings that start with
/// "OpenSSL " (error texts, "OpenSSL PKCS#3 DH method") are not banners.
fn parse_banner(banner: &str) -> Option<String> {
    let version = banner.strip_prefix("OpenSSL ")?.split_whitespace().next()?;
    let mut parts = version.splitn(3, '.');
    let major = parts.next()?;
    let minor = parts.next()?;
    let patch = parts.next()?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // The patch level may carry a letter (1.1.1w) or a pre-release tag (3.0.0-alpha17).
    let patch_digits = &patch[..patch.find(|c: char| !c.is_ascii_digit()).unwrap_or(patch.len())];
    let suffix_ok = patch[patch_digits.len()..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (numeric(major) && numeric(minor) && numeric(patch_digits) && suffix_ok).then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_banners_of_each_family() {
        assert_eq!(parse_banner("OpenSSL 1.0.2u  20 Dec 2019").as_deref(), Some("1.0.2u"));
        assert_eq!(parse_banner("OpenSSL 1.1.1w  11 Sep 2023").as_deref(), Some("1.1.1w"));
        assert_eq!(parse_banner("OpenSSL 3.5.0 8 Apr 2025").as_deref(), Some("3.5.0"));
        assert_eq!(
            parse_banner("OpenSSL 3.0.0-alpha17 3 Jun 2021").as_deref(),
            Some("3.0.0-alpha17")
        );
        assert_eq!(parse_banner("OpenSSL PKCS#3 DH method"), None);
        assert_eq!(parse_banner("OpenSSL"), None);
    }

    #[test]
    fn detects_system_openssl_version_like_the_openssl_command() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")).unwrap();
        let output = std::process::Command::new("openssl").arg("version").output().unwrap();
        // "OpenSSL 3.0.x <date> (Library: OpenSSL 3.0.x <date>)"
        let text = String::from_utf8(output.stdout).unwrap();
        let library_banner = text.split("Library: ").nth(1).unwrap_or(&text);
        let expected = parse_banner(library_banner.trim_end_matches([')', '\n'])).unwrap();
        assert_eq!(detect(&image), SslLibrary::OpenSsl(Some(expected)));
    }

    #[test]
    fn version_overrides() {
        assert_eq!(
            parse_override("openssl 3.0.13").unwrap(),
            SslLibrary::OpenSsl(Some("3.0.13".into()))
        );
        assert_eq!(
            parse_override("1.1.1w").unwrap(),
            SslLibrary::OpenSsl(Some("1.1.1w".into()))
        );
        assert_eq!(parse_override("boringssl_a_13").unwrap(), SslLibrary::BoringSsl);
        assert!(parse_override("latest").is_err());
    }

    #[test]
    fn bare_versions() {
        assert!(is_bare_version(b"3.0.22"));
        assert!(!is_bare_version(b"3.0"));
        assert!(!is_bare_version(b"3.0.x"));
        assert!(!is_bare_version(b"3.0.1.2"));
    }

    #[test]
    fn detects_boringssl() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/android/libssl.so.0")).unwrap();
        assert_eq!(detect(&image), SslLibrary::BoringSsl);
    }
}
