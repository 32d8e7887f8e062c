//! Loading `bpf/gnutls.bpf.c`.

use anyhow::{Result, anyhow};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use super::GnuTlsObject;
use crate::probe::{
    Flavor, Generation, LoadedProbes, ProbeSettings, configure_capture, copy_c_struct, include_skeletons, load_build,
    write_settings_map,
};

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
    let skel = load_build!(
        flavor,
        settings.generation,
        [
            GnutlsCoreSkelBuilder,
            GnutlsNocoreSkelBuilder,
            GnutlsCoreLegacySkelBuilder,
            GnutlsNocoreLegacySkelBuilder
        ],
        |open| {
            configure_capture!(open, settings);
            let rodata = open
                .maps
                .rodata_data
                .as_deref_mut()
                .ok_or_else(|| anyhow!("BPF object has no .rodata"))?;
            copy_c_struct(&gnutls, &mut rodata.gnutls_settings);
        }
    );
    let probes = LoadedProbes::new(skel, settings)?;
    if settings.generation == Generation::Legacy {
        write_settings_map(probes.object(), "gnutls_settings", &gnutls)?;
    }
    Ok(probes)
}
