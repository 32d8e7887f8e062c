//! Loading `bpf/gotls.bpf.c`, which needs no settings of its own.

use anyhow::Result;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use crate::probe::{Flavor, LoadedProbes, ProbeSettings, include_skeletons, load_module_object};

include_skeletons!("gotls");

pub fn load(flavor: Flavor, settings: &ProbeSettings) -> Result<LoadedProbes> {
    load_module_object!(
        flavor,
        settings,
        [
            GotlsCoreSkelBuilder,
            GotlsNocoreSkelBuilder,
            GotlsCoreLegacySkelBuilder,
            GotlsNocoreLegacySkelBuilder
        ],
        {}
    )
}
