/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* What userspace tells every TLS capture object before its programs run
 * (see kernel_compat.h for where it is kept). */
#ifndef ECAPTURE_CAPTURE_SETTINGS_H
#define ECAPTURE_CAPTURE_SETTINGS_H

struct capture_settings {
	__u32 target_pid; /* tgid to keep, 0 = all */
	__u32 target_uid;
	__u8 filter_by_uid;
	/* bpf_loop (Linux 5.17) lets one call send any number of records;
	 * older kernels get an unrolled loop of UNROLLED_MAX_CHUNKS. */
	__u8 have_bpf_loop;
	/* bpf_get_attach_cookie (Linux 5.15): a probe's cookie can say what its
	 * site alone knows, as gotls's where net.(*TCPConn).Close is. */
	__u8 have_attach_cookies;
	__u8 _pad[5];
};

#endif
