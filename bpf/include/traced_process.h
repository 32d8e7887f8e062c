/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* What every capture object shares: the --pid/--uid filter userspace sets,
 * and the count of records the kernel could not deliver. */
#ifndef ECAPTURE_TRACED_PROCESS_H
#define ECAPTURE_TRACED_PROCESS_H

#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include "kernel_compat.h"
#include "capture_settings.h"

DECLARE_SETTINGS(struct capture_settings, capture_settings);

/* Records, and their payload bytes, that the ring buffer could not take or
 * the kernel could not read; userspace sums the CPUs. */
struct lost_counts {
	__u64 records;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lost_counts);
} lost_records SEC(".maps");

static __always_inline bool process_is_traced(__u64 pid_tgid)
{
	__u32 target_pid = SETTING(capture_settings, target_pid);

	if (target_pid && (__u32)(pid_tgid >> 32) != target_pid)
		return false;
	if (SETTING(capture_settings, filter_by_uid) &&
	    (__u32)bpf_get_current_uid_gid() != SETTING(capture_settings, target_uid))
		return false;
	return true;
}

/* Atomic adds: on a preemptible kernel another task may run the same
 * program on this CPU in the middle of this one. */
static __always_inline void count_lost(__u64 records, __u64 bytes)
{
	__u32 zero = 0;
	struct lost_counts *lost = bpf_map_lookup_elem(&lost_records, &zero);

	if (lost) {
		__sync_fetch_and_add(&lost->records, records);
		__sync_fetch_and_add(&lost->bytes, bytes);
	}
}

#endif
