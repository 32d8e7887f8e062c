//! The key log file: NSS key log lines, each session once, flushed as soon as
//! it is known so that Wireshark can follow the file live.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::keys::SessionSecrets;

pub struct KeylogWriter {
    file: File,
    written: HashSet<[u8; 32]>,
}

impl KeylogWriter {
    /// Opens `path` for appending, readable by its owner only: it holds secrets.
    pub fn create(path: &Path) -> io::Result<KeylogWriter> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        // A file that existed keeps its mode through open(); tighten it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(KeylogWriter {
            file,
            written: HashSet::new(),
        })
    }

    /// Writes the session's lines unless they were written already. Returns
    /// whether anything was written.
    pub fn write_session(&mut self, lines: &str, secrets: &SessionSecrets) -> io::Result<bool> {
        if !self.written.insert(secrets.client_random) {
            return Ok(false);
        }
        self.file.write_all(lines.as_bytes())?;
        self.file.flush()?;
        Ok(true)
    }
}
