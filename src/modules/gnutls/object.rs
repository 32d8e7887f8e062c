//! Loading `bpf/gnutls.bpf.c`.

use anyhow::Result;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use super::GnuTlsObject;
use crate::probe::{Flavor, LoadedProbes, ProbeSettings, include_skeletons, load_module_object};

include_skeletons!("gnutls");

#[cfg(bpf_core)]
use skel_core::types::gnutls_settings as RawGnutlsSettings;
#[cfg(all(bpf_nocore, not(bpf_core)))]
use skel_nocore::types::gnutls_settings as RawGnutlsSettings;

// SAFETY: a C struct of integers; any bit pattern is valid.
unsafe impl plain::Plain for RawGnutlsSettings {}

pub fn load(flavor: Flavor, settings: &ProbeSettings, layouts: &GnuTlsObject) -> Result<LoadedProbes> {
    let gnutls = RawGnutlsSettings {
        client_random: layouts.client_random.unwrap_or(0),
        ..Default::default()
    };
    load_module_object!(
        flavor,
        settings,
        [
            GnutlsCoreSkelBuilder,
            GnutlsNocoreSkelBuilder,
            GnutlsCoreLegacySkelBuilder,
            GnutlsNocoreLegacySkelBuilder
        ],
        { gnutls_settings: &gnutls }
    )
}
