//! Where OpenSSL and BoringSSL keep a session's secrets, per release family,
//! and how the chosen layout is checked against the library actually loaded.
//!
//! The offsets are facts about the libraries' struct definitions (ssl_st,
//! ssl_connection_st from 3.2, ssl_session_st, ssl_cipher_st; BoringSSL's
//! SSL3_STATE and SSL_HANDSHAKE) on 64-bit builds, as published in eCapture's
//! offset tables. Exported accessors read some of the same fields, so their
//! machine code reveals the offsets of the build at hand; a layout is trusted
//! only when they agree.

use std::fmt;

use crate::target::disasm;
use crate::target::elf::ElfImage;

/// Offsets into an SSL object (and the objects it points to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpensslLayout {
    pub name: &'static str,
    /// 3.2+: the object type tag that tells TLS connections from QUIC.
    pub ssl_type: Option<u32>,
    pub version: u32,
    /// In the SSL object, or (`session_in_s3`) in the state `s3_pointer` leads to.
    pub session: u32,
    /// BoringSSL: the established session is `s3->established_session`.
    pub session_in_s3: bool,
    /// BoringSSL: the negotiated version is read from the session (a 16-bit
    /// field), as the SSL object lost its own in Android 16.
    pub session_version: Option<u32>,
    /// Up to 1.1.1 the s3 state is a separate allocation: client_random is
    /// relative to the pointer stored at this offset.
    pub s3_pointer: Option<u32>,
    pub client_random: u32,
    pub session_master_key: u32,
    pub session_cipher: u32,
    /// OpenSSL's copy of the cipher id in the session, for sessions without
    /// a cipher pointer.
    pub session_cipher_id: Option<u32>,
    pub cipher_id: u32,
    /// TLS 1.3 secrets in the SSL object; None before 1.1.1 and in BoringSSL.
    pub tls13: Option<Tls13Offsets>,
    /// BoringSSL's TLS 1.3 secrets, in its handshake object.
    pub handshake_object: Option<HandshakeObjectOffsets>,
}

/// BoringSSL keeps the TLS 1.3 handshake traffic secrets only in its
/// handshake object (SSL_HANDSHAKE), which SSL_do_handshake frees before it
/// returns; they are read while the library writes its Finished flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandshakeObjectOffsets {
    /// SSL_HANDSHAKE *s3->hs
    pub s3_handshake: u32,
    /// s3->write_traffic_secret. When the Finished flight goes out it equals
    /// one of the two application traffic secrets below, which confirms
    /// their offsets at run time: no accessor reads them.
    pub s3_write_traffic_secret: u32,
    pub s3_exporter_secret: u32,
    /// The secrets' length: the low byte of hash_len_ (a size_t up to
    /// Android 15; the size byte of an InplaceVector from Android 16).
    pub hash_len: u32,
    pub client_handshake_secret: u32,
    pub server_handshake_secret: u32,
    pub client_traffic_secret_0: u32,
    pub server_traffic_secret_0: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tls13Offsets {
    pub handshake_secret: u32,
    pub handshake_traffic_hash: u32,
    pub client_app_traffic_secret: u32,
    pub server_app_traffic_secret: u32,
    pub exporter_master_secret: u32,
}

const fn tls13(handshake_secret: u32) -> Option<Tls13Offsets> {
    // In every release with TLS 1.3 these five arrays of EVP_MAX_MD_SIZE
    // bytes sit at the same distances from handshake_secret.
    Some(Tls13Offsets {
        handshake_secret,
        handshake_traffic_hash: handshake_secret + 0x180,
        client_app_traffic_secret: handshake_secret + 0x1c0,
        server_app_traffic_secret: handshake_secret + 0x200,
        exporter_master_secret: handshake_secret + 0x240,
    })
}

/// From 3.2 an SSL object starts with a type tag (0 for a TLS connection)
/// and the connection's fields follow the common header.
const TYPE_TAG: Option<u32> = Some(0);

/// The shape shared by 1.1.1 to 3.5: the TLS 1.3 secrets inline, the cipher
/// id just after the cipher pointer in the session.
const fn modern(
    name: &'static str,
    ssl_type: Option<u32>,
    version: u32,
    session: u32,
    client_random: u32,
    cipher: u32,
    hs: u32,
) -> OpensslLayout {
    OpensslLayout {
        name,
        ssl_type,
        version,
        session,
        session_in_s3: false,
        session_version: None,
        s3_pointer: None,
        client_random,
        session_master_key: 0x50,
        session_cipher: cipher,
        session_cipher_id: Some(cipher + 8),
        cipher_id: 0x18,
        tls13: tls13(hs),
        handshake_object: None,
    }
}

const fn openssl_1_1_1(name: &'static str, session: u32, cipher: u32, hs: u32) -> OpensslLayout {
    OpensslLayout {
        s3_pointer: Some(0xa8),
        ..modern(name, None, 0, session, 0xb8, cipher, hs)
    }
}

/// modern(name, type tag, version, session, client_random, session cipher, handshake_secret)
pub const LAYOUTS: &[OpensslLayout] = &[
    OpensslLayout {
        name: "openssl 1.0.2",
        ssl_type: None,
        version: 0,
        session: 0x130,
        s3_pointer: Some(0x80),
        client_random: 0xc4,
        session_master_key: 0x14,
        session_cipher: 0xe0,
        session_cipher_id: Some(0xe8),
        cipher_id: 0x10,
        tls13: None,
        session_in_s3: false,
        session_version: None,
        handshake_object: None,
    },
    OpensslLayout {
        name: "openssl 1.1.0",
        ssl_type: None,
        version: 0,
        session: 0x178,
        s3_pointer: Some(0x90),
        client_random: 0xb0,
        session_master_key: 0x8,
        session_cipher: 0xd8,
        session_cipher_id: Some(0xe0),
        cipher_id: 0x10,
        tls13: None,
        session_in_s3: false,
        session_version: None,
        handshake_object: None,
    },
    openssl_1_1_1("openssl 1.1.1a", 0x510, 0x1f8, 0x174),
    openssl_1_1_1("openssl 1.1.1b", 0x508, 0x1f8, 0x174),
    openssl_1_1_1("openssl 1.1.1d", 0x510, 0x1f8, 0x17c),
    openssl_1_1_1("openssl 1.1.1j", 0x510, 0x1f0, 0x17c),
    modern("openssl 3.0.0", None, 0, 0x918, 0x160, 0x2f8, 0x584),
    modern("openssl 3.0.12", None, 0, 0x938, 0x160, 0x2f8, 0x584),
    modern("openssl 3.2.0", TYPE_TAG, 0x40, 0x880, 0x140, 0x300, 0x53c),
    modern("openssl 3.2.3", TYPE_TAG, 0x40, 0x880, 0x140, 0x2f8, 0x53c),
    modern("openssl 3.2.4", TYPE_TAG, 0x48, 0x888, 0x148, 0x2f8, 0x544),
    modern("openssl 3.3.0", TYPE_TAG, 0x40, 0x880, 0x140, 0x300, 0x53c),
    modern("openssl 3.3.2", TYPE_TAG, 0x40, 0x880, 0x140, 0x2f8, 0x53c),
    modern("openssl 3.3.3", TYPE_TAG, 0x48, 0x888, 0x148, 0x2f8, 0x544),
    modern("openssl 3.4.0", TYPE_TAG, 0x40, 0x880, 0x140, 0x2f8, 0x53c),
    modern("openssl 3.4.1", TYPE_TAG, 0x48, 0x888, 0x148, 0x2f8, 0x544),
    modern("openssl 3.5.0", TYPE_TAG, 0x48, 0x900, 0x188, 0x2f8, 0x5bc),
];

/// BoringSSL, whose SSL object points to its SSL3_STATE at 0x30, where the
/// client random sits at 0x30 too. `first_secret` is SSL_HANDSHAKE's secret_,
/// followed by early_traffic_secret_, then the four read here, `step` bytes
/// apart: 48-byte arrays, or from Android 16 InplaceVectors of 48 bytes and
/// a size byte.
#[allow(clippy::too_many_arguments)]
const fn boringssl(
    name: &'static str,
    s3_handshake: u32,
    s3_exporter_secret: u32,
    established_session: u32,
    session_secret: u32,
    session_cipher: u32,
    hash_len: u32,
    first_secret: u32,
    step: u32,
) -> OpensslLayout {
    OpensslLayout {
        name,
        ssl_type: None,
        version: 0,
        session: established_session,
        session_in_s3: true,
        session_version: Some(0x4),
        s3_pointer: Some(0x30),
        client_random: 0x30,
        session_master_key: session_secret,
        session_cipher,
        session_cipher_id: None,
        cipher_id: 0x10,
        tls13: None,
        handshake_object: Some(HandshakeObjectOffsets {
            s3_handshake,
            s3_write_traffic_secret: s3_handshake + 8,
            s3_exporter_secret,
            hash_len,
            client_handshake_secret: first_secret + 2 * step,
            server_handshake_secret: first_secret + 3 * step,
            client_traffic_secret_0: first_secret + 4 * step,
            server_traffic_secret_0: first_secret + 5 * step,
        }),
    }
}

/// The BoringSSL layouts, newest first. Android 14 and 15 (and the
/// non-Android builds of that time) agree on every field read here.
/// boringssl(name, s3->hs, s3->exporter_secret, s3->established_session,
/// session->secret, session->cipher, hs hash length, hs secret_, step)
pub const BORINGSSL_LAYOUTS: &[OpensslLayout] = &[
    boringssl("boringssl android 16", 0x118, 0x182, 0x1d0, 0xa, 0xc8, 0x50, 0x20, 49),
    boringssl(
        "boringssl android 14-15",
        0x118,
        0x180,
        0x1d0,
        0xb,
        0xc8,
        0x20,
        0x28,
        48,
    ),
    boringssl("boringssl android 13", 0x110, 0x178, 0x1c8, 0x10, 0xd0, 0x20, 0x28, 48),
];

fn layout(name: &str) -> &'static OpensslLayout {
    LAYOUTS
        .iter()
        .find(|l| l.name == name)
        .expect("layout table names are fixed")
}

/// The release families and the layout each uses. `known_up_to` is the last
/// release whose layout is established; later ones get the nearest layout
/// with a warning.
#[derive(Debug, PartialEq, Eq)]
pub struct LayoutChoice {
    pub layout: &'static OpensslLayout,
    /// False when the version lies outside the known releases.
    pub known: bool,
}

/// Picks the layout for an OpenSSL version string such as "3.0.13" or "1.1.1w".
pub fn for_version(version: &str) -> LayoutChoice {
    let (major, minor, patch, letter) = split_version(version);
    let pick = |name: &str, known: bool| LayoutChoice {
        layout: layout(name),
        known,
    };
    match (major, minor) {
        (1, 0) => pick("openssl 1.0.2", patch == 2),
        (1, 1) if patch == 0 => pick("openssl 1.1.0", true),
        (1, 1) => match letter {
            None | Some('a') => pick("openssl 1.1.1a", patch == 1),
            Some('b' | 'c') => pick("openssl 1.1.1b", true),
            Some('d'..='i') => pick("openssl 1.1.1d", true),
            Some(_) => pick("openssl 1.1.1j", letter <= Some('w')),
        },
        (3, 0) if patch == 12 => pick("openssl 3.0.12", true),
        (3, 0) => pick("openssl 3.0.0", patch <= 21),
        (3, 1) => pick("openssl 3.0.0", patch <= 8),
        (3, 2) => match patch {
            0..=2 => pick("openssl 3.2.0", true),
            3 => pick("openssl 3.2.3", true),
            _ => pick("openssl 3.2.4", patch <= 6),
        },
        (3, 3) => match patch {
            0 | 1 => pick("openssl 3.3.0", true),
            2 => pick("openssl 3.3.2", true),
            _ => pick("openssl 3.3.3", patch <= 7),
        },
        (3, 4) if patch == 0 => pick("openssl 3.4.0", true),
        (3, 4) => pick("openssl 3.4.1", patch <= 6),
        (3, 5) => pick("openssl 3.5.0", patch <= 7),
        (3, 6) => pick("openssl 3.5.0", patch <= 2),
        (4, 0) => pick("openssl 3.5.0", patch <= 1),
        (0..=1, _) => pick("openssl 1.0.2", false),
        _ => pick("openssl 3.5.0", false),
    }
}

fn split_version(version: &str) -> (u32, u32, u32, Option<char>) {
    let mut parts = version.split('.');
    let mut number = || {
        parts
            .next()
            .map(|p| p.chars().take_while(char::is_ascii_digit).collect::<String>())
    };
    let major = number().and_then(|n| n.parse().ok()).unwrap_or(0);
    let minor = number().and_then(|n| n.parse().ok()).unwrap_or(0);
    let patch_text = version.split('.').nth(2).unwrap_or("");
    let digits: String = patch_text.chars().take_while(char::is_ascii_digit).collect();
    let letter = patch_text[digits.len()..]
        .chars()
        .next()
        .filter(char::is_ascii_lowercase);
    (major, minor, digits.parse().unwrap_or(0), letter)
}

/// One offset, or a chain of pointers ending in one, compared with what an
/// accessor function reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldCheck {
    pub field: &'static str,
    pub accessor: &'static str,
    /// From the SSL (or session, or cipher) object: each step but the last is
    /// a pointer to follow.
    pub path: Vec<u32>,
    pub outcome: CheckOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    Agrees,
    Disagrees,
    /// The accessor is missing or could not be decoded on this architecture.
    Unverified,
}

impl FieldCheck {
    /// Compares `path` with the fields `accessor` touches in `image`.
    pub fn run(image: &ElfImage, field: &'static str, accessor: &'static str, path: Vec<u32>) -> FieldCheck {
        let wanted: Vec<u64> = path.iter().map(|&step| u64::from(step)).collect();
        let outcome = match disasm::field_paths(image, accessor) {
            Some(paths) if paths.contains(&wanted) => CheckOutcome::Agrees,
            Some(paths) if !paths.is_empty() => CheckOutcome::Disagrees,
            _ => CheckOutcome::Unverified,
        };
        FieldCheck {
            field,
            accessor,
            path,
            outcome,
        }
    }
}

impl fmt::Display for FieldCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.outcome {
            CheckOutcome::Agrees => "confirmed by",
            CheckOutcome::Disagrees => "CONTRADICTED by",
            CheckOutcome::Unverified => "not checked against",
        };
        let steps: Vec<String> = self.path.iter().map(|step| format!("{step:#x}")).collect();
        write!(f, "{} at {} {verdict} {}", self.field, steps.join("->"), self.accessor)
    }
}

/// BoringSSL's accessor of the current traffic secrets, a C++ function.
const BORINGSSL_TRAFFIC_SECRETS: &str = "_ZN4bssl23SSL_get_traffic_secretsEPK6ssl_stPNS_4SpanIKhEES6_";

/// Compares `layout` with the accessors in `image`.
pub fn check(layout: &OpensslLayout, image: &ElfImage) -> Vec<FieldCheck> {
    let fields = match (&layout.handshake_object, layout.s3_pointer) {
        (Some(hs), Some(s3)) => vec![
            ("client random", "SSL_get_client_random", vec![s3, layout.client_random]),
            ("handshake object", "SSL_get_session", vec![s3, hs.s3_handshake]),
            ("established session", "SSL_get_session", vec![s3, layout.session]),
            (
                "session version",
                "SSL_SESSION_get_protocol_version",
                vec![layout.session_version.unwrap_or(0)],
            ),
            (
                "master key",
                "SSL_SESSION_get_master_key",
                vec![layout.session_master_key],
            ),
            ("cipher", "SSL_SESSION_get0_cipher", vec![layout.session_cipher]),
            (
                "write traffic secret",
                BORINGSSL_TRAFFIC_SECRETS,
                vec![s3, hs.s3_write_traffic_secret],
            ),
            (
                "exporter secret",
                "SSL_export_keying_material",
                vec![s3, hs.s3_exporter_secret],
            ),
        ],
        _ => {
            let mut fields = vec![
                ("session", "SSL_get_session", vec![layout.session]),
                (
                    "client random",
                    "SSL_get_client_random",
                    vec![layout.s3_pointer.unwrap_or(layout.client_random)],
                ),
                (
                    "master key",
                    "SSL_SESSION_get_master_key",
                    vec![layout.session_master_key],
                ),
                ("cipher", "SSL_SESSION_get0_cipher", vec![layout.session_cipher]),
                ("cipher id", "SSL_CIPHER_get_id", vec![layout.cipher_id]),
            ];
            if layout.ssl_type.is_none() {
                // From 3.2 SSL_version goes through a type check; before, it is one load.
                fields.push(("version", "SSL_version", vec![layout.version]));
            }
            fields
        }
    };
    fields
        .into_iter()
        .map(|(field, accessor, path)| FieldCheck::run(image, field, accessor, path))
        .collect()
}

/// The BoringSSL layout `--ssl_version` names, in eCapture's spelling
/// (boringssl_a_13 to boringssl_a_16, boringssl_na for non-Android builds);
/// None for plain "boringssl", which leaves the choice to the accessors.
pub fn boringssl_for_override(text: &str) -> Result<Option<&'static OpensslLayout>, String> {
    let lower = text.trim().to_ascii_lowercase();
    let name = match lower.as_str() {
        "boringssl" => return Ok(None),
        "boringssl_a_13" => "boringssl android 13",
        "boringssl_a_14" | "boringssl_a_15" | "boringssl_na" => "boringssl android 14-15",
        "boringssl_a_16" => "boringssl android 16",
        _ => {
            return Err(format!(
                "--ssl_version {text:?} is not a BoringSSL layout: use boringssl, boringssl_a_13 to boringssl_a_16, or boringssl_na"
            ));
        }
    };
    Ok(BORINGSSL_LAYOUTS.iter().find(|l| l.name == name))
}

/// BoringSSL has no version string: the layout is the one whose every
/// checked field the library's accessors confirm.
pub fn select_boringssl(image: &ElfImage) -> Result<Selection, String> {
    let candidates: Vec<(&'static OpensslLayout, Vec<FieldCheck>)> = BORINGSSL_LAYOUTS
        .iter()
        .map(|layout| (layout, check(layout, image)))
        .collect();
    let confirmed = candidates
        .iter()
        .find(|(_, checks)| checks.iter().all(|c| c.outcome == CheckOutcome::Agrees));
    if let Some((layout, checks)) = confirmed {
        return Ok(Selection {
            layout,
            checks: checks.clone(),
            reason: format!(
                "BoringSSL: its accessors match layout {}; the TLS 1.3 handshake secrets are checked against the write traffic secret at run time",
                layout.name
            ),
            expected: true,
        });
    }
    let uncontradicted = candidates
        .iter()
        .find(|(_, checks)| checks.iter().all(|c| c.outcome != CheckOutcome::Disagrees));
    match uncontradicted {
        Some((layout, checks)) => Ok(Selection {
            layout,
            checks: checks.clone(),
            reason: format!(
                "BoringSSL: its accessors could not all be read; newest layout not contradicted: {}",
                layout.name
            ),
            expected: false,
        }),
        None => Err(
            "no known BoringSSL layout fits this build; no keys will be written for it (pass --ssl_version boringssl_a_NN to force one)"
                .to_string(),
        ),
    }
}

/// The outcome of choosing a layout for one library.
#[derive(Debug)]
pub struct Selection {
    pub layout: &'static OpensslLayout,
    pub checks: Vec<FieldCheck>,
    /// Why this layout, for the user.
    pub reason: String,
    /// False when the layout is a guess (a version newer than the known
    /// releases whose accessors could not all confirm it), or a layout
    /// other than the version's own.
    pub expected: bool,
}

/// Chooses the layout for `version`, trusting it only if no accessor
/// contradicts it; otherwise looks for the layout the accessors confirm.
pub fn select(version: &str, image: &ElfImage) -> Result<Selection, String> {
    let choice = for_version(version);
    let checks = check(choice.layout, image);
    if checks.iter().all(|c| c.outcome != CheckOutcome::Disagrees) {
        let reason = if choice.known {
            format!("OpenSSL {version} uses layout {}", choice.layout.name)
        } else {
            format!(
                "OpenSSL {version} is newer than the known releases; nearest layout {}",
                choice.layout.name
            )
        };
        // A release newer than the tables is no guess when every accessor
        // confirms its nearest layout.
        let confirmed = checks.iter().all(|c| c.outcome == CheckOutcome::Agrees);
        return Ok(Selection {
            expected: choice.known || confirmed,
            layout: choice.layout,
            checks,
            reason,
        });
    }
    let contradicted: Vec<String> = checks
        .iter()
        .filter(|c| c.outcome == CheckOutcome::Disagrees)
        .map(ToString::to_string)
        .collect();
    let confirmed = LAYOUTS.iter().find_map(|candidate| {
        let checks = check(candidate, image);
        let all_agree = checks.iter().all(|c| c.outcome == CheckOutcome::Agrees);
        all_agree.then_some((candidate, checks))
    });
    match confirmed {
        Some((layout, checks)) => Ok(Selection {
            expected: false,
            layout,
            checks,
            reason: format!(
                "OpenSSL {version} would use layout {}, but {}; its accessors match layout {} instead",
                choice.layout.name,
                contradicted.join(", "),
                layout.name
            ),
        }),
        None => Err(format!(
            "no known layout fits OpenSSL {version}: layout {}: {}; no keys will be written for it (pass --ssl_version to force one)",
            choice.layout.name,
            contradicted.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn version_families() {
        assert_eq!(for_version("1.0.2u").layout.name, "openssl 1.0.2");
        assert_eq!(for_version("1.1.0l").layout.name, "openssl 1.1.0");
        assert_eq!(for_version("1.1.1a").layout.name, "openssl 1.1.1a");
        assert_eq!(for_version("1.1.1c").layout.name, "openssl 1.1.1b");
        assert_eq!(for_version("1.1.1g").layout.name, "openssl 1.1.1d");
        assert_eq!(for_version("1.1.1w").layout.name, "openssl 1.1.1j");
        assert_eq!(for_version("3.0.12").layout.name, "openssl 3.0.12");
        assert_eq!(for_version("3.0.13").layout.name, "openssl 3.0.0");
        assert_eq!(for_version("3.1.4").layout.name, "openssl 3.0.0");
        assert_eq!(for_version("3.2.3").layout.name, "openssl 3.2.3");
        assert_eq!(for_version("3.2.5").layout.name, "openssl 3.2.4");
        assert_eq!(for_version("3.3.2").layout.name, "openssl 3.3.2");
        assert_eq!(for_version("3.4.0").layout.name, "openssl 3.4.0");
        assert_eq!(
            for_version("3.5.0"),
            LayoutChoice {
                layout: layout("openssl 3.5.0"),
                known: true
            }
        );
        assert_eq!(
            for_version("3.9.0"),
            LayoutChoice {
                layout: layout("openssl 3.5.0"),
                known: false
            }
        );
        assert!(!for_version("3.0.99").known);
    }

    #[test]
    fn tls13_offsets_follow_the_tables() {
        let l = for_version("3.0.1").layout.tls13.unwrap();
        assert_eq!((l.handshake_traffic_hash, l.exporter_master_secret), (0x704, 0x7c4));
        let l = for_version("3.5.0").layout.tls13.unwrap();
        assert_eq!(
            (l.client_app_traffic_secret, l.server_app_traffic_secret),
            (0x77c, 0x7bc)
        );
        assert!(for_version("1.1.0h").layout.tls13.is_none());
    }

    #[test]
    fn system_libssl_layout_is_confirmed_by_its_accessors() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")).unwrap();
        let version = match super::super::version::detect(&image) {
            super::super::version::SslLibrary::OpenSsl(Some(v)) => v,
            other => panic!("{other:?}"),
        };
        let selection = select(&version, &image).unwrap();
        assert!(
            selection.checks.iter().all(|c| c.outcome == CheckOutcome::Agrees),
            "{:?}",
            selection.checks
        );
        // The two 3.0 layouts differ only in where the session pointer is:
        // exactly one of them fits this build.
        let fits = |name| {
            check(layout(name), &image)
                .iter()
                .all(|c| c.outcome == CheckOutcome::Agrees)
        };
        assert_ne!(fits("openssl 3.0.0"), fits("openssl 3.0.12"));
        assert!(!fits("openssl 1.1.1j"));
    }

    #[test]
    fn boringssl_handshake_offsets_follow_the_tables() {
        let by_name = |name: &str| {
            BORINGSSL_LAYOUTS
                .iter()
                .find(|l| l.name == name)
                .and_then(|l| l.handshake_object)
                .unwrap()
        };
        // Android 13: offsetof in the Debian 13.0.0+r24 sources.
        let a13 = by_name("boringssl android 13");
        assert_eq!((a13.client_handshake_secret, a13.server_handshake_secret), (0x88, 0xb8));
        assert_eq!(
            (a13.client_traffic_secret_0, a13.server_traffic_secret_0),
            (0xe8, 0x118)
        );
        assert_eq!(a13.s3_write_traffic_secret, 0x118);
        // Android 16 packs each secret with its size byte.
        let a16 = by_name("boringssl android 16");
        assert_eq!((a16.hash_len, a16.client_handshake_secret), (0x50, 0x82));
        assert_eq!(a16.server_traffic_secret_0, 0x115);
        assert_eq!(a16.s3_write_traffic_secret, 0x120);
    }

    #[test]
    fn boringssl_layout_is_chosen_by_its_accessors() {
        let image = ElfImage::open(Path::new("/usr/lib/x86_64-linux-gnu/android/libssl.so.0")).unwrap();
        let selection = select_boringssl(&image).unwrap();
        assert_eq!(selection.layout.name, "boringssl android 13");
        assert!(selection.expected);
        // The newer layouts are contradicted by this build.
        for newer in &BORINGSSL_LAYOUTS[..2] {
            assert!(
                check(newer, &image)
                    .iter()
                    .any(|c| c.outcome == CheckOutcome::Disagrees),
                "{}",
                newer.name
            );
        }
    }

    #[test]
    fn boringssl_overrides_use_ecaptures_names() {
        let name = |text| boringssl_for_override(text).unwrap().map(|l| l.name);
        assert_eq!(name("boringssl"), None);
        assert_eq!(name("boringssl_a_13"), Some("boringssl android 13"));
        assert_eq!(name("BoringSSL_na"), Some("boringssl android 14-15"));
        assert_eq!(name("boringssl_a_16"), Some("boringssl android 16"));
        assert!(boringssl_for_override("boringssl_a_12").is_err());
    }
}
