//! Session secrets: from the kernel's record to NSS key log lines (the format
//! of SSLKEYLOGFILE, read by Wireshark and tshark).

use std::fmt::Write as _;

use hkdf::Hkdf;
use sha2::{Sha256, Sha384};

use crate::event::Comm;
use crate::probe::RawMasterSecret;

const TLS1_2_VERSION: u32 = 0x0303;
const TLS1_3_VERSION: u32 = 0x0304;

/// enum handshake_secrets_form in bpf/include/tls_keys.h.
const HANDSHAKE_SECRETS_TO_DERIVE: u8 = 0;
const HANDSHAKE_SECRETS_AS_HELD: u8 = 1;

/// Where a TLS 1.3 session's handshake traffic secrets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeSecrets {
    /// OpenSSL keeps the handshake secret and the transcript hash they are
    /// derived from; the cipher suite sizes them.
    ToDerive {
        handshake_secret: [u8; 64],
        transcript_hash: [u8; 64],
    },
    /// BoringSSL keeps the secrets themselves, `len` bytes long.
    AsHeld {
        client: [u8; 64],
        server: [u8; 64],
        len: usize,
    },
    /// BoringSSL, where the run-time check of the layout failed.
    Contradicted,
}

/// The secrets of one TLS session, as read from the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSecrets {
    pub pid: u32,
    pub comm: Comm,
    pub tls_version: u32,
    pub cipher_id: u32,
    pub client_random: [u8; 32],
    pub master_key: [u8; 48],
    pub handshake: HandshakeSecrets,
    pub client_app_traffic_secret: [u8; 64],
    pub server_app_traffic_secret: [u8; 64],
    pub exporter_master_secret: [u8; 64],
}

impl SessionSecrets {
    pub fn from_raw(raw: &RawMasterSecret) -> Self {
        let handshake = match raw.handshake_form {
            HANDSHAKE_SECRETS_TO_DERIVE => HandshakeSecrets::ToDerive {
                handshake_secret: raw.handshake_secret,
                transcript_hash: raw.handshake_traffic_hash,
            },
            HANDSHAKE_SECRETS_AS_HELD => HandshakeSecrets::AsHeld {
                client: raw.client_handshake_traffic_secret,
                server: raw.server_handshake_traffic_secret,
                len: usize::from(raw.secret_len).min(raw.client_handshake_traffic_secret.len()),
            },
            _ => HandshakeSecrets::Contradicted,
        };
        SessionSecrets {
            pid: raw.pid,
            comm: Comm::from_kernel(&raw.comm),
            tls_version: raw.tls_version,
            cipher_id: raw.cipher_id,
            client_random: raw.client_random,
            master_key: raw.master_key,
            handshake,
            client_app_traffic_secret: raw.client_app_traffic_secret,
            server_app_traffic_secret: raw.server_app_traffic_secret,
            exporter_master_secret: raw.exporter_master_secret,
        }
    }

    /// The key log lines for this session, or an explanation of why none can
    /// be written (an unknown cipher suite, or secrets that read as zero).
    pub fn keylog_lines(&self) -> Result<String, String> {
        let random = hex::encode(self.client_random);
        match self.tls_version {
            TLS1_3_VERSION => {
                let (len, client_handshake, server_handshake) = self.handshake_traffic_secrets()?;
                let secrets = [
                    ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", &client_handshake[..]),
                    ("SERVER_HANDSHAKE_TRAFFIC_SECRET", &server_handshake[..]),
                    ("CLIENT_TRAFFIC_SECRET_0", &self.client_app_traffic_secret[..len]),
                    ("SERVER_TRAFFIC_SECRET_0", &self.server_app_traffic_secret[..len]),
                    ("EXPORTER_SECRET", &self.exporter_master_secret[..len]),
                ];
                let missing = [
                    ("handshake secret", &client_handshake[..]),
                    ("client application secret", &self.client_app_traffic_secret[..len]),
                    ("server application secret", &self.server_app_traffic_secret[..len]),
                ];
                if let Some((name, _)) = missing.iter().find(|(_, secret)| secret.iter().all(|&b| b == 0)) {
                    return Err(format!("the TLS 1.3 {name} reads as zero"));
                }
                let mut lines = String::new();
                for (label, secret) in secrets {
                    let _ = writeln!(lines, "{label} {random} {}", hex::encode(secret));
                }
                Ok(lines)
            }
            version if version <= TLS1_2_VERSION => {
                if self.master_key.iter().all(|&b| b == 0) {
                    return Err("the master secret reads as zero".into());
                }
                Ok(format!("CLIENT_RANDOM {random} {}\n", hex::encode(self.master_key)))
            }
            other => Err(format!("unknown TLS version {other:#x}")),
        }
    }

    /// The secrets' length and the client's and server's handshake traffic
    /// secrets.
    fn handshake_traffic_secrets(&self) -> Result<(usize, Vec<u8>, Vec<u8>), String> {
        match &self.handshake {
            HandshakeSecrets::ToDerive {
                handshake_secret,
                transcript_hash,
            } => {
                let hash = Tls13Hash::for_cipher(self.cipher_id)
                    .ok_or_else(|| format!("unknown TLS 1.3 cipher suite {:#x}", self.cipher_id))?;
                let len = hash.len();
                let derive = |label| hash.expand_label(&handshake_secret[..len], label, &transcript_hash[..len]);
                Ok((len, derive("c hs traffic"), derive("s hs traffic")))
            }
            HandshakeSecrets::AsHeld { client, server, len } if matches!(len, 32 | 48) => {
                Ok((*len, client[..*len].to_vec(), server[..*len].to_vec()))
            }
            HandshakeSecrets::AsHeld { len, .. } => Err(format!("secrets of {len} bytes fit no TLS 1.3 hash")),
            HandshakeSecrets::Contradicted => Err(
                "the BoringSSL layout does not fit this library: its write traffic secret matches neither application secret (force another with --ssl_version)"
                    .into(),
            ),
        }
    }
}

/// The hash of a TLS 1.3 cipher suite, which sizes its secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls13Hash {
    Sha256,
    Sha384,
}

impl Tls13Hash {
    /// OpenSSL cipher ids are 0x0300XXXX with the IANA suite in the low bits.
    fn for_cipher(cipher_id: u32) -> Option<Self> {
        match cipher_id & 0xffff {
            0x1301 | 0x1303 | 0x1304 | 0x1305 => Some(Tls13Hash::Sha256),
            0x1302 => Some(Tls13Hash::Sha384),
            _ => None,
        }
    }

    fn len(self) -> usize {
        match self {
            Tls13Hash::Sha256 => 32,
            Tls13Hash::Sha384 => 48,
        }
    }

    /// HKDF-Expand-Label (RFC 8446 §7.1) with an output as long as the hash.
    fn expand_label(self, secret: &[u8], label: &str, context: &[u8]) -> Vec<u8> {
        let len = self.len();
        let full_label = format!("tls13 {label}");
        let mut info = Vec::with_capacity(4 + full_label.len() + context.len());
        info.extend_from_slice(&(len as u16).to_be_bytes());
        info.push(full_label.len() as u8);
        info.extend_from_slice(full_label.as_bytes());
        info.push(context.len() as u8);
        info.extend_from_slice(context);
        let mut out = vec![0; len];
        let expanded = match self {
            Tls13Hash::Sha256 => Hkdf::<Sha256>::from_prk(secret).map(|h| h.expand(&info, &mut out)),
            Tls13Hash::Sha384 => Hkdf::<Sha384>::from_prk(secret).map(|h| h.expand(&info, &mut out)),
        };
        expanded
            .expect("secret and output sizes match the hash")
            .expect("output fits HKDF");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    // RFC 8448 §3, simple 1-RTT handshake (TLS_AES_128_GCM_SHA256).
    const HANDSHAKE_SECRET: &str = "1dc826e93606aa6fdc0aadc12f741b01046aa6b99f691ed221a9f0ca043fbeac";
    const HELLO_HASH: &str = "860c06edc07858ee8e78f0e7428c58edd6b43f2ca3e6e95f02ed063cf0e1cad8";
    const CLIENT_HS: &str = "b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21";
    const SERVER_HS: &str = "b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38";
    const MASTER_SECRET: &str = "18df06843d13a08bf2a449844c5f8a478001bc4d4c627984d5a41da8d0402919";
    const FINISHED_HASH: &str = "9608102a0f1ccc6db6250b7b7e417b1a000eaada3daae4777a7686c9ff83df13";
    const CLIENT_AP: &str = "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5";
    const EXPORTER: &str = "fe22f881176eda18eb8f44529e6792c50c9a3f89452f68d8ae311b4309d3cf50";

    #[test]
    fn hkdf_expand_label_matches_rfc_8448() {
        let h = Tls13Hash::Sha256;
        let (secret, hash) = (unhex(HANDSHAKE_SECRET), unhex(HELLO_HASH));
        assert_eq!(hex::encode(h.expand_label(&secret, "c hs traffic", &hash)), CLIENT_HS);
        assert_eq!(hex::encode(h.expand_label(&secret, "s hs traffic", &hash)), SERVER_HS);
        let (master, finished) = (unhex(MASTER_SECRET), unhex(FINISHED_HASH));
        assert_eq!(
            hex::encode(h.expand_label(&master, "c ap traffic", &finished)),
            CLIENT_AP
        );
        assert_eq!(hex::encode(h.expand_label(&master, "exp master", &finished)), EXPORTER);
    }

    fn padded(hex_text: &str) -> [u8; 64] {
        let mut out = [0; 64];
        let bytes = unhex(hex_text);
        out[..bytes.len()].copy_from_slice(&bytes);
        out
    }

    fn secrets(tls_version: u32, cipher_id: u32) -> SessionSecrets {
        SessionSecrets {
            pid: 1,
            comm: "curl".into(),
            tls_version,
            cipher_id,
            client_random: [0xab; 32],
            master_key: [0x11; 48],
            handshake: HandshakeSecrets::ToDerive {
                handshake_secret: padded(HANDSHAKE_SECRET),
                transcript_hash: padded(HELLO_HASH),
            },
            client_app_traffic_secret: padded(CLIENT_AP),
            server_app_traffic_secret: [0x22; 64],
            exporter_master_secret: padded(EXPORTER),
        }
    }

    #[test]
    fn tls13_lines_have_the_suite_hash_length() {
        let lines = secrets(TLS1_3_VERSION, 0x0300_1301).keylog_lines().unwrap();
        let random = "ab".repeat(32);
        let expected = format!(
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET {random} {CLIENT_HS}\nSERVER_HANDSHAKE_TRAFFIC_SECRET {random} {SERVER_HS}\n\
             CLIENT_TRAFFIC_SECRET_0 {random} {CLIENT_AP}\nSERVER_TRAFFIC_SECRET_0 {random} {}\nEXPORTER_SECRET {random} {EXPORTER}\n",
            "22".repeat(32)
        );
        assert_eq!(lines, expected);
        // SHA-384 suites carry 48-byte secrets.
        let sha384 = secrets(TLS1_3_VERSION, 0x0300_1302).keylog_lines().unwrap();
        assert!(
            sha384.lines().all(|l| l.split(' ').nth(2).unwrap().len() == 96),
            "{sha384}"
        );
        assert!(secrets(TLS1_3_VERSION, 0x0300_c02f).keylog_lines().is_err());
    }

    #[test]
    fn boringssl_handshake_secrets_are_used_as_held() {
        let mut session = secrets(TLS1_3_VERSION, 0);
        session.handshake = HandshakeSecrets::AsHeld {
            client: padded(CLIENT_HS),
            server: padded(SERVER_HS),
            len: 32,
        };
        let lines = session.keylog_lines().unwrap();
        let random = "ab".repeat(32);
        assert!(
            lines.starts_with(&format!(
                "CLIENT_HANDSHAKE_TRAFFIC_SECRET {random} {CLIENT_HS}\nSERVER_HANDSHAKE_TRAFFIC_SECRET {random} {SERVER_HS}\n"
            )),
            "{lines}"
        );
        session.handshake = HandshakeSecrets::Contradicted;
        assert!(session.keylog_lines().unwrap_err().contains("does not fit"));
    }

    #[test]
    fn tls12_line_is_client_random() {
        let line = secrets(TLS1_2_VERSION, 0x0300_c02f).keylog_lines().unwrap();
        assert_eq!(line, format!("CLIENT_RANDOM {} {}\n", "ab".repeat(32), "11".repeat(48)));
        let mut empty = secrets(TLS1_2_VERSION, 0);
        empty.master_key = [0; 48];
        assert!(empty.keylog_lines().is_err());
    }
}
