//! Loading `bpf/openssl.bpf.c`, with where the library keeps its secrets and
//! its sockets.

use anyhow::Result;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use super::OpensslObject;
use super::layout::{HandshakeObjectOffsets, OpensslLayout, Tls13Offsets};
use super::socket_bio::SocketBioLayout;
use crate::probe::{Flavor, LoadedProbes, ProbeSettings, include_skeletons, load_module_object};

include_skeletons!("openssl");

#[cfg(bpf_core)]
use skel_core::types::{openssl_layout as RawOpensslLayout, socket_bio_layout as RawSocketBio};
#[cfg(all(bpf_nocore, not(bpf_core)))]
use skel_nocore::types::{openssl_layout as RawOpensslLayout, socket_bio_layout as RawSocketBio};

// SAFETY: C structs of integers; any bit pattern is valid.
unsafe impl plain::Plain for RawOpensslLayout {}
unsafe impl plain::Plain for RawSocketBio {}

pub fn load(flavor: Flavor, settings: &ProbeSettings, layouts: &OpensslObject) -> Result<LoadedProbes> {
    let layout = raw_layout(layouts.key_layout.as_ref());
    let socket_bio = raw_socket_bio(layouts.socket_bio.as_ref());
    load_module_object!(
        flavor,
        settings,
        [
            OpensslCoreSkelBuilder,
            OpensslNocoreSkelBuilder,
            OpensslCoreLegacySkelBuilder,
            OpensslNocoreLegacySkelBuilder
        ],
        { layout: &layout, socket_bio: &socket_bio }
    )
}

/// Where a socket BIO keeps its fd; zeros leave naming sockets to the
/// syscall tracepoints.
fn raw_socket_bio(socket_bio: Option<&SocketBioLayout>) -> RawSocketBio {
    socket_bio.map_or_else(RawSocketBio::default, |layout| RawSocketBio {
        ssl_rbio: layout.ssl_rbio,
        bio_method: layout.bio_method,
        bio_num: layout.bio_num,
        ssl_type_tagged: u32::from(layout.ssl_type_tagged),
    })
}

/// Where the library keeps session secrets; zeros when keys are not read.
fn raw_layout(key_layout: Option<&OpensslLayout>) -> RawOpensslLayout {
    let mut target = RawOpensslLayout::default();
    let Some(layout) = key_layout else {
        return target;
    };
    const ABSENT: u32 = u32::MAX;
    let tls13 = layout.tls13.unwrap_or(Tls13Offsets {
        handshake_secret: 0,
        handshake_traffic_hash: 0,
        client_app_traffic_secret: 0,
        server_app_traffic_secret: 0,
        exporter_master_secret: 0,
    });
    let hs = layout.handshake_object.unwrap_or(HandshakeObjectOffsets {
        s3_handshake: ABSENT,
        s3_write_traffic_secret: 0,
        s3_exporter_secret: 0,
        hash_len: 0,
        client_handshake_secret: 0,
        server_handshake_secret: 0,
        client_traffic_secret_0: 0,
        server_traffic_secret_0: 0,
    });
    target.ssl_type = layout.ssl_type.unwrap_or(ABSENT);
    target.version = layout.version;
    target.session = layout.session;
    target.session_in_s3 = u32::from(layout.session_in_s3);
    target.session_version = layout.session_version.unwrap_or(ABSENT);
    target.s3_pointer = layout.s3_pointer.unwrap_or(ABSENT);
    target.client_random = layout.client_random;
    target.session_master_key = layout.session_master_key;
    target.session_cipher = layout.session_cipher;
    target.session_cipher_id = layout.session_cipher_id.unwrap_or(ABSENT);
    target.cipher_id = layout.cipher_id;
    target.s3_handshake = hs.s3_handshake;
    target.s3_write_traffic_secret = hs.s3_write_traffic_secret;
    target.s3_exporter_secret = hs.s3_exporter_secret;
    target.hs_hash_len = hs.hash_len;
    target.hs_client_handshake_secret = hs.client_handshake_secret;
    target.hs_server_handshake_secret = hs.server_handshake_secret;
    target.hs_client_traffic_secret_0 = hs.client_traffic_secret_0;
    target.hs_server_traffic_secret_0 = hs.server_traffic_secret_0;
    target.handshake_secret = tls13.handshake_secret;
    target.handshake_traffic_hash = tls13.handshake_traffic_hash;
    target.client_app_traffic_secret = tls13.client_app_traffic_secret;
    target.server_app_traffic_secret = tls13.server_app_traffic_secret;
    target.exporter_master_secret = tls13.exporter_master_secret;
    target
}
