//! Code that processes bring in while the capture runs (a program started,
//! a library loaded), looked at on a thread of its own. Reading a large
//! executable takes 50-300 ms; on the reader's thread that stalled the
//! draining of the kernel's buffers, which overflowed meanwhile (a build
//! starting rustup's proxies beside a 256 MB/s capture lost 260 records).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};

use tracing::warn;

use crate::cli::Config;
use crate::modules::{HookTarget, Module};
use crate::target::libpath;

/// A file's device and inode: its identity, whatever path reaches it.
pub type FileIdentity = (u64, u64);

pub fn file_identity(path: &Path) -> Option<FileIdentity> {
    std::fs::metadata(path)
        .ok()
        .map(|metadata| (metadata.dev(), metadata.ino()))
}

/// What the reader asks of the inspector.
pub enum Request {
    /// A process the probes reported.
    Look(u32),
    /// Hooking that program failed (its process may have exited first):
    /// look at it again in its next process.
    Retry(FileIdentity),
}

/// What the inspector found, in the order the reader must act on it.
pub enum Finding<L> {
    /// Hook `target`, which process `pid` `brought` in ("started" or
    /// "loaded"); `program` is the executable's identity when it is one.
    Hook {
        pid: u32,
        target: HookTarget<L>,
        brought: &'static str,
        program: Option<FileIdentity>,
    },
    /// Everything process `pid` brought in has been handed on.
    Looked(u32),
}

/// The files already looked at: executables, and library files hooked or
/// looked at. The targets hooked at start are in both.
#[derive(Default)]
pub struct Seen {
    pub programs: HashSet<FileIdentity>,
    pub libraries: HashSet<FileIdentity>,
}

/// Looks at each reported process until the reader hangs up: an executable
/// with the library linked in, or a copy of the library from a file not
/// seen yet.
pub fn inspect_reported<M: Module>(
    module: &M,
    config: &Config,
    mut seen: Seen,
    requests: &Receiver<Request>,
    findings: &Sender<Finding<M::Layouts>>,
) {
    while let Ok(request) = requests.recv() {
        let pid = match request {
            Request::Look(pid) => pid,
            Request::Retry(program) => {
                seen.programs.remove(&program);
                continue;
            }
        };
        let executable = PathBuf::from(format!("/proc/{pid}/exe"));
        let identity = file_identity(&executable);
        if let Some(program) = identity.filter(|identity| seen.programs.insert(*identity))
            && let Some(target) = module.inspect_program(&executable, config)
        {
            let brought = "started";
            let hook = Finding::Hook {
                pid,
                target,
                brought,
                program: Some(program),
            };
            if findings.send(hook).is_err() {
                return;
            }
        }
        for target in library_targets(module, config, &mut seen, pid) {
            let hook = Finding::Hook {
                pid,
                target,
                brought: "loaded",
                program: None,
            };
            if findings.send(hook).is_err() {
                return;
            }
        }
        if findings.send(Finding::Looked(pid)).is_err() {
            return;
        }
    }
}

/// The module's libraries that process `pid` maps from files not seen yet.
fn library_targets<M: Module>(module: &M, config: &Config, seen: &mut Seen, pid: u32) -> Vec<HookTarget<M::Layouts>> {
    let Ok(files) = libpath::mapped_files(pid) else {
        return Vec::new();
    };
    let mut targets = Vec::new();
    for file in files {
        let Some(identity) = file_identity(&file.host_path) else {
            continue;
        };
        if seen.libraries.contains(&identity) {
            continue;
        }
        let Some(found) = module.inspect_library(&file.host_path, config) else {
            continue;
        };
        seen.libraries.insert(identity);
        match found {
            Ok(found) => targets.extend(found),
            Err(err) => warn!(
                "pid {pid} loaded {}, which cannot be hooked: {err:#}",
                file.host_path.display()
            ),
        }
    }
    targets
}
