//! Loading `bpf/nss.bpf.c`.

use anyhow::Result;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use super::{NssObject, SecretFields};
use crate::probe::{Flavor, LoadedProbes, ProbeSettings, include_skeletons, load_module_object};

include_skeletons!("nss");

#[cfg(bpf_core)]
use skel_core::types::nss_settings as RawNssSettings;
#[cfg(all(bpf_nocore, not(bpf_core)))]
use skel_nocore::types::nss_settings as RawNssSettings;

// SAFETY: a C struct of integers; any bit pattern is valid.
unsafe impl plain::Plain for RawNssSettings {}

pub fn load(flavor: Flavor, settings: &ProbeSettings, layouts: &NssObject) -> Result<LoadedProbes> {
    // PRFileDesc (prio.h, a public ABI): methods, secret, lower, higher,
    // dtor, identity.
    let secrets = layouts.secrets.unwrap_or(SecretFields {
        client_random: 0,
        key_handle: 0,
    });
    let nss = RawNssSettings {
        layer_secret: layouts.descriptor.secret,
        layer_lower: 16,
        layer_identity: 40,
        secret_osfd: layouts.descriptor.osfd,
        client_random: secrets.client_random,
        key_handle: secrets.key_handle,
    };
    load_module_object!(
        flavor,
        settings,
        [
            NssCoreSkelBuilder,
            NssNocoreSkelBuilder,
            NssCoreLegacySkelBuilder,
            NssNocoreLegacySkelBuilder
        ],
        { nss_settings: &nss }
    )
}
