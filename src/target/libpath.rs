//! Where libraries live: the dynamic linker's cache, the usual directories,
//! and what a running process actually has mapped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const LD_SO_CACHE: &str = "/etc/ld.so.cache";
const CACHE_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";

/// ld.so.cache entry flags naming a 64-bit library of this machine's kind.
#[cfg(target_arch = "x86_64")]
const CACHE_ARCH_FLAGS: u32 = 0x0303;
#[cfg(target_arch = "aarch64")]
const CACHE_ARCH_FLAGS: u32 = 0x0a03;

#[cfg(target_arch = "x86_64")]
const USUAL_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
];
#[cfg(target_arch = "aarch64")]
const USUAL_DIRS: &[&str] = &[
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
];

/// (soname, path) pairs for this architecture from the dynamic linker's cache.
pub fn ld_cache_entries() -> Vec<(String, PathBuf)> {
    std::fs::read(LD_SO_CACHE)
        .map(|data| parse_ld_cache(&data))
        .unwrap_or_default()
}

/// Parses the "new" glibc cache format (the only one glibc has written since
/// 2.32; older files carry it after the legacy table).
fn parse_ld_cache(data: &[u8]) -> Vec<(String, PathBuf)> {
    const HEADER_LEN: usize = 48;
    const ENTRY_LEN: usize = 24;
    let Some(base) = memchr::memmem::find(data, CACHE_MAGIC) else {
        return Vec::new();
    };
    let cache = &data[base..];
    let u32_at = |off: usize| {
        cache
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let string_at = |off: u32| {
        let rest = cache.get(off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    };
    let Some(count) = u32_at(20) else { return Vec::new() };
    (0..count as usize)
        .filter_map(|i| {
            let entry = HEADER_LEN + i * ENTRY_LEN;
            let flags = u32_at(entry)?;
            if flags & 0xffff != CACHE_ARCH_FLAGS {
                return None;
            }
            Some((
                string_at(u32_at(entry + 4)?)?.to_string(),
                PathBuf::from(string_at(u32_at(entry + 8)?)?),
            ))
        })
        .collect()
}

/// Every distinct library whose soname satisfies `wanted`, from the cache,
/// else from the usual directories.
pub fn find_system_libraries(wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    let cached = ld_cache_entries()
        .into_iter()
        .filter(|(name, _)| wanted(name))
        .map(|(_, path)| path);
    let listed = USUAL_DIRS.iter().flat_map(|dir| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| wanted(&entry.file_name().to_string_lossy()))
            .map(|entry| entry.path())
    });
    for path in cached.chain(listed) {
        if let Ok(real) = path.canonicalize()
            && seen.insert(real.clone())
        {
            found.push(real);
        }
    }
    found
}

/// A file mapped by a process, reachable from our mount namespace through
/// /proc/PID/root so that containers work as well as host processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    /// The path as the process sees it.
    pub path_in_process: PathBuf,
    /// The same file as we can open it.
    pub host_path: PathBuf,
}

pub fn ensure_process_exists(pid: u32) -> Result<()> {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("no process with pid {pid}; check the pid with `ps`");
    }
    Ok(())
}

/// The distinct files the process maps, in the order they first appear
/// (the executable first).
pub fn mapped_files(pid: u32) -> Result<Vec<MappedFile>> {
    ensure_process_exists(pid)?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("cannot read the memory map of pid {pid}"))?;
    let mut seen = BTreeSet::new();
    Ok(parse_maps(&maps)
        .filter(|path| seen.insert(path.clone()))
        .map(|path| MappedFile {
            host_path: Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(&path)),
            path_in_process: path,
        })
        .collect())
}

/// Where process `pid` maps the start of its executable (the mapping of
/// the executable's file at offset 0).
pub fn executable_load_address(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;

    let inode = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?.ino();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (range, offset, file_inode) = (fields.first()?, fields.get(2)?, fields.get(4)?);
        (file_inode.parse::<u64>().ok()? == inode && u64::from_str_radix(offset, 16).ok()? == 0)
            .then(|| u64::from_str_radix(range.split('-').next()?, 16).ok())
            .flatten()
    })
}

/// Every process but ecapture itself, or only `only` when given.
pub fn process_ids(only: Option<u32>) -> Vec<u32> {
    if let Some(pid) = only {
        return vec![pid];
    }
    let own = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|&pid| pid != own)
        .collect()
}

/// The name the kernel gives process `pid` (its comm); empty once it is gone.
pub fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim_end().to_string())
        .unwrap_or_default()
}

/// The processes descended from `pid` (children, their children...), with
/// their names, from each process's parent in /proc.
pub fn descendants(pid: u32) -> Vec<(u32, String)> {
    // (pid, parent, name) of every process.
    let processes: Vec<(u32, u32, String)> = process_ids(None)
        .into_iter()
        .filter_map(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // "PID (NAME) STATE PPID ...": the name may hold spaces and parentheses.
            let (head, tail) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            let parent = tail.split_whitespace().nth(1)?.parse().ok()?;
            Some((child, parent, name))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (child, _, name) in processes.iter().filter(|(_, of, _)| *of == parent) {
            if found.iter().all(|(seen, _)| seen != child) {
                found.push((*child, name.clone()));
                frontier.push(*child);
            }
        }
    }
    found.sort_unstable();
    found
}

/// The file paths of a /proc/PID/maps text, skipping anonymous and special
/// mappings and files deleted since they were mapped.
fn parse_maps(maps: &str) -> impl Iterator<Item = PathBuf> + '_ {
    maps.lines().filter_map(|line| {
        let path = line.splitn(6, char::is_whitespace).nth(5)?.trim_start();
        (path.starts_with('/') && !path.ends_with(" (deleted)")).then(|| PathBuf::from(path))
    })
}

/// How often a process that has not mapped its TLS library yet is looked at
/// again.
const MAPPING_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The file process `pid` maps that `find` picks, waiting for the process to
/// map one (a program that loads its TLS library late, or a `--pid` given
/// right after the process started), as eCapture's pid filter does. Says
/// once that it waits; fails if the process exits first.
pub fn wait_for_mapping(
    pid: u32,
    what: &str,
    mut find: impl FnMut(&[MappedFile]) -> Option<PathBuf>,
) -> Result<PathBuf> {
    let mut said = false;
    loop {
        match mapped_files(pid) {
            Ok(files) => {
                if let Some(found) = find(&files) {
                    return Ok(found);
                }
            }
            Err(_) if !Path::new(&format!("/proc/{pid}")).exists() => {
                bail!("process {pid} exited before it mapped {what}")
            }
            Err(err) => return Err(err),
        }
        if !said {
            tracing::info!("process {pid} maps no {what} yet: waiting for it to load one (Ctrl-C to stop)");
            said = true;
        }
        std::thread::sleep(MAPPING_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ld_cache_lists_system_libssl() {
        let entries = ld_cache_entries();
        assert!(
            entries
                .iter()
                .any(|(name, path)| name == "libssl.so.3" && path.ends_with("libssl.so.3"))
        );
    }

    #[test]
    fn finds_system_libssl_but_not_nss_libssl3() {
        let found = find_system_libraries(|name| name.starts_with("libssl.so."));
        assert!(
            found.iter().any(|p| p.to_string_lossy().contains("libssl.so.3")),
            "{found:?}"
        );
        assert!(found.iter().all(|p| !p.ends_with("libssl3.so")));
    }

    #[test]
    fn maps_parsing_keeps_files_only() {
        let maps = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 123 /usr/bin/curl
7f1e2c000000-7f1e2c021000 rw-p 00000000 00:00 0 
7f1e2c200000-7f1e2c260000 r-xp 00020000 08:01 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1e2c300000-7f1e2c301000 r-xp 00000000 08:01 789 /tmp/old lib.so (deleted)
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0 [stack]
";
        let paths: Vec<_> = parse_maps(maps).collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("/usr/bin/curl"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libssl.so.3")
            ]
        );
    }

    #[test]
    fn mapped_files_of_self_include_our_executable() {
        let files = mapped_files(std::process::id()).unwrap();
        let exe = std::env::current_exe().unwrap();
        assert!(files.iter().any(|f| f.path_in_process == exe), "{files:?}");
        assert!(
            files
                .iter()
                .all(|f| f.host_path.starts_with(format!("/proc/{}/root", std::process::id())))
        );
    }

    #[test]
    fn descendants_include_grandchildren() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // The grandchild is named sh from its fork until it execs sleep.
        let both = |found: &[(u32, String)]| {
            let names: Vec<&str> = found.iter().map(|(_, name)| name.as_str()).collect();
            names.contains(&"sh") && names.contains(&"sleep")
        };
        let mut found = Vec::new();
        while !both(&found) && std::time::Instant::now() < deadline {
            found = descendants(std::process::id());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(both(&found), "{found:?}");
    }

    #[test]
    fn missing_pid_is_a_clear_error() {
        let err = mapped_files(u32::MAX - 1).unwrap_err();
        assert!(err.to_string().contains("no process with pid"));
    }
}
