//! Loading `bpf/shell.bpf.c`.

use anyhow::Result;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use crate::probe::{Flavor, LoadedProbes, ProbeSettings, RawShellSettings, include_skeletons, load_module_object};

include_skeletons!("shell");

pub fn load(flavor: Flavor, settings: &ProbeSettings, shell: &RawShellSettings) -> Result<LoadedProbes> {
    load_module_object!(
        flavor,
        settings,
        [
            ShellCoreSkelBuilder,
            ShellNocoreSkelBuilder,
            ShellCoreLegacySkelBuilder,
            ShellNocoreLegacySkelBuilder
        ],
        { shell_settings: shell }
    )
}
