//! The key log file: NSS key log lines, flushed as soon as a session's are
//! known so that Wireshark can follow the file live.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub struct KeylogWriter {
    file: File,
}

impl KeylogWriter {
    /// Opens `path` for appending, readable by its owner only: it holds secrets.
    pub fn create(path: &Path) -> io::Result<KeylogWriter> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        // A file that existed keeps its mode through open(); tighten it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(KeylogWriter { file })
    }

    /// Appends one session's lines and flushes them.
    pub fn write(&mut self, lines: &str) -> io::Result<()> {
        self.file.write_all(lines.as_bytes())?;
        self.file.flush()
    }
}
