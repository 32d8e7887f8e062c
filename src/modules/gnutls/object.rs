//! Loading `bpf/gnutls.bpf.c`.

use anyhow::Result;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use super::{GnuTlsObject, ResumedFields};
use crate::probe::{Flavor, LoadedProbes, ProbeSettings, include_skeletons, load_module_object};

include_skeletons!("gnutls");

#[cfg(bpf_core)]
use skel_core::types::gnutls_settings as RawGnutlsSettings;
#[cfg(all(bpf_nocore, not(bpf_core)))]
use skel_nocore::types::gnutls_settings as RawGnutlsSettings;

// SAFETY: a C struct of integers; any bit pattern is valid.
unsafe impl plain::Plain for RawGnutlsSettings {}

pub fn load(flavor: Flavor, settings: &ProbeSettings, layouts: &GnuTlsObject) -> Result<LoadedProbes> {
    let resumed = layouts.resumed.unwrap_or(ResumedFields {
        master_secret: 0,
        version_entry: 0,
        version_id: 0,
    });
    let gnutls = RawGnutlsSettings {
        client_random: layouts.client_random.unwrap_or(0),
        master_secret: resumed.master_secret,
        version_entry: resumed.version_entry,
        version_id: resumed.version_id,
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
