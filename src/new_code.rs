//! Code that processes bring in while the capture runs (a program started,
//! a library loaded), looked at on a thread of its own. Reading a large
//! executable takes 50-300 ms; on the reader's thread that stalled the
//! draining of the kernel's buffers, which overflowed meanwhile (a build
//! starting rustup's proxies beside a 256 MB/s capture lost 260 records).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};

use tracing::{error, warn};

use crate::cli::Config;
use crate::modules::{HookTarget, Module};
use crate::probe::readiness::Waker;
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
    reader: &Waker,
) {
    while let Ok(request) = requests.recv() {
        let pid = match request {
            Request::Look(pid) => pid,
            Request::Retry(program) => {
                seen.programs.remove(&program);
                continue;
            }
        };
        // The files are anyone's: a bug their bytes find in the readers
        // costs that process, not the capture.
        let looked = std::panic::catch_unwind(AssertUnwindSafe(|| look_at(module, config, &mut seen, pid)));
        let found = looked.unwrap_or_else(|_| {
            error!("a bug in ecapture stopped it reading what pid {pid} runs: please report it");
            Vec::new()
        });
        for finding in found.into_iter().chain([Finding::Looked(pid)]) {
            if findings.send(finding).is_err() {
                return;
            }
        }
        // The process runs on meanwhile: its first TLS calls may come
        // before the reader's next round.
        reader.wake();
    }
}

/// What process `pid` brought in that is new: its executable, when it has
/// the library linked in, and copies of the library it maps.
fn look_at<M: Module>(module: &M, config: &Config, seen: &mut Seen, pid: u32) -> Vec<Finding<M::Layouts>> {
    let executable = PathBuf::from(format!("/proc/{pid}/exe"));
    let identity = file_identity(&executable);
    let program = identity
        .filter(|identity| seen.programs.insert(*identity))
        .and_then(|program| Some((program, module.inspect_program(&executable, config)?)))
        .map(|(program, target)| Finding::Hook {
            pid,
            target,
            brought: "started",
            program: Some(program),
        });
    let libraries = library_targets(module, config, seen, pid)
        .into_iter()
        .map(|target| Finding::Hook {
            pid,
            target,
            brought: "loaded",
            program: None,
        });
    program.into_iter().chain(libraries).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::probe::{Flavor, LoadedProbes, ProbeSettings};
    use anyhow::Result;
    use clap::Parser;
    use std::sync::mpsc;

    /// Finds a "library" in every program and panics on its first look.
    struct Fragile {
        looks: std::sync::atomic::AtomicU32,
    }

    impl Module for Fragile {
        type Layouts = u8;

        fn name(&self) -> &'static str {
            "fragile"
        }
        fn discover(&self, _: &Config) -> Result<Vec<HookTarget<u8>>> {
            Ok(Vec::new())
        }
        fn load(&self, _: Flavor, _: &ProbeSettings, _: &u8) -> Result<LoadedProbes> {
            unreachable!("the inspector loads nothing")
        }
        fn tracepoints(&self, _: crate::cli::Mode, _: &u8) -> crate::modules::Tracepoints {
            crate::modules::Tracepoints::None
        }
        fn inspect_program(&self, executable: &Path, _: &Config) -> Option<HookTarget<u8>> {
            if self.looks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                panic!("a bug the file found");
            }
            Some(HookTarget {
                binary: executable.to_path_buf(),
                description: "test".into(),
                hooks: Vec::new(),
                layouts: 0,
            })
        }
        fn inspect_library(&self, _: &Path, _: &Config) -> Option<Result<Vec<HookTarget<u8>>>> {
            None
        }
    }

    #[test]
    fn a_panic_in_reading_a_program_costs_that_look_only() {
        let config = Cli::parse_from(["ecapture", "tls"]).into_config().unwrap();
        let module = Fragile {
            looks: Default::default(),
        };
        let (requests, inspector_requests) = mpsc::channel();
        let (inspector_findings, findings) = mpsc::channel();
        let me = std::process::id();
        let own = file_identity(Path::new("/proc/self/exe")).unwrap();
        requests.send(Request::Look(me)).unwrap();
        // Seen once, our executable is looked at again only when handed back.
        requests.send(Request::Look(me)).unwrap();
        requests.send(Request::Retry(own)).unwrap();
        requests.send(Request::Look(me)).unwrap();
        drop(requests);
        let readiness = crate::probe::readiness::Readiness::new(&[], &[]).unwrap();
        inspect_reported(
            &module,
            &config,
            Seen::default(),
            &inspector_requests,
            &inspector_findings,
            &readiness.waker(),
        );
        // Each look woke the reader: its wait returns at once.
        let started = std::time::Instant::now();
        readiness.wait(std::time::Duration::from_secs(60)).unwrap();
        assert!(started.elapsed().as_secs() < 30, "the reader was not woken");
        drop(inspector_findings);
        let found: Vec<_> = findings
            .iter()
            .map(|finding| match finding {
                Finding::Hook { program, .. } => ("hook", program),
                Finding::Looked(pid) => {
                    assert_eq!(pid, me);
                    ("looked", None)
                }
            })
            .collect();
        assert_eq!(
            found,
            [
                ("looked", None),
                ("looked", None),
                ("hook", Some(own)),
                ("looked", None)
            ]
        );
    }
}
