//! Loading `bpf/mysqld.bpf.c`.

use anyhow::Result;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use crate::probe::{Flavor, LoadedProbes, ProbeSettings, include_skeletons, load_module_object};

include_skeletons!("mysqld");

#[cfg(bpf_core)]
pub use skel_core::types::mysqld_settings as RawMysqldSettings;
#[cfg(all(bpf_nocore, not(bpf_core)))]
pub use skel_nocore::types::mysqld_settings as RawMysqldSettings;

// SAFETY: a C struct of integers; any bit pattern is valid.
unsafe impl plain::Plain for RawMysqldSettings {}

pub fn load(flavor: Flavor, settings: &ProbeSettings, mysqld: &RawMysqldSettings) -> Result<LoadedProbes> {
    load_module_object!(
        flavor,
        settings,
        [
            MysqldCoreSkelBuilder,
            MysqldNocoreSkelBuilder,
            MysqldCoreLegacySkelBuilder,
            MysqldNocoreLegacySkelBuilder
        ],
        { mysqld_settings: mysqld }
    )
}
