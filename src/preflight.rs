//! Checks made before touching the kernel, each failing with one line that
//! says what to do.

use anyhow::{Result, bail};

/// The oldest kernels whose uprobes, tracepoints and BPF helpers we rely on.
#[cfg(target_arch = "x86_64")]
const MIN_KERNEL: (u32, u32) = (4, 18);
#[cfg(target_arch = "aarch64")]
const MIN_KERNEL: (u32, u32) = (5, 5);

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub fn check() -> Result<()> {
    check_kernel_version(&kernel_release()?)?;
    check_capabilities(effective_capabilities()?)
}

fn kernel_release() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_string())
}

fn parse_kernel_version(release: &str) -> (u32, u32) {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

fn check_kernel_version(release: &str) -> Result<()> {
    if parse_kernel_version(release) < MIN_KERNEL {
        bail!(
            "kernel {release} is too old: ecapture needs Linux {}.{} or later on {}; upgrade the kernel",
            MIN_KERNEL.0,
            MIN_KERNEL.1,
            std::env::consts::ARCH
        );
    }
    Ok(())
}

fn effective_capabilities() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .unwrap_or("0")
        .trim();
    Ok(u64::from_str_radix(hex, 16)?)
}

fn check_capabilities(effective: u64) -> Result<()> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!("ecapture needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN: run it as root (sudo ecapture ...)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert!(check_kernel_version("6.18.44-fc-v769").is_ok());
        assert!(check_kernel_version("5.10.0-28-amd64").is_ok());
        let old = check_kernel_version("3.10.0-1160.el7.x86_64").unwrap_err();
        assert!(old.to_string().contains("too old"), "{old}");
    }

    #[test]
    fn capabilities() {
        assert!(check_capabilities(1 << CAP_SYS_ADMIN).is_ok());
        assert!(check_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
        assert!(check_capabilities(1 << CAP_BPF).is_err());
        assert!(
            check_capabilities(0)
                .unwrap_err()
                .to_string()
                .contains("run it as root")
        );
    }
}
