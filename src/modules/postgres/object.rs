//! Loading `bpf/postgres.bpf.c`.

use anyhow::Result;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use crate::probe::{Flavor, LoadedProbes, ProbeSettings, include_skeletons, load_module_object};

include_skeletons!("postgres");

pub fn load(flavor: Flavor, settings: &ProbeSettings) -> Result<LoadedProbes> {
    load_module_object!(
        flavor,
        settings,
        [
            PostgresCoreSkelBuilder,
            PostgresNocoreSkelBuilder,
            PostgresCoreLegacySkelBuilder,
            PostgresNocoreLegacySkelBuilder
        ],
        {}
    )
}
