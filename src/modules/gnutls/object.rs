//! Loading `bpf/gnutls.bpf.c`.

use anyhow::{Result, anyhow};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use crate::probe::{Flavor, LoadedProbes, ProbeSettings, configure_capture, include_skeletons, load_build};

include_skeletons!("gnutls");

pub fn load(flavor: Flavor, settings: &ProbeSettings) -> Result<LoadedProbes> {
    let skel = load_build!(
        flavor,
        settings.generation,
        [
            GnutlsCoreSkelBuilder,
            GnutlsNocoreSkelBuilder,
            GnutlsCoreLegacySkelBuilder,
            GnutlsNocoreLegacySkelBuilder
        ],
        |open| { configure_capture!(open, settings) }
    );
    LoadedProbes::new(skel, settings)
}
