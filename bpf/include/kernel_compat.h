/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What differs between the objects built for current kernels and those built
 * with ECAPTURE_LEGACY_KERNEL for Linux 4.18 to 5.12. Userspace probes the
 * kernel at start and loads one or the other.
 *
 * Settings. Current objects keep them in read-only global data (Linux 5.2),
 * which the verifier treats as constants: it prunes every branch a setting
 * disables. Legacy objects keep them in a one-entry array map that userspace
 * fills after load, and look them up where they are used (an array lookup
 * the verifier inlines).
 *
 * Records. Current objects reserve each record in a BPF ring buffer (5.8) and
 * fill it in place. Legacy objects fill a per-CPU slot and copy it into a
 * per-CPU perf event array. On the kernels they are made for, nothing else
 * can use that slot meanwhile: uprobe and tracepoint programs run through
 * trace_call_bpf, which runs no second program on a CPU while one is running
 * there (bpf_prog_active). Newer kernels run uprobe programs without that
 * guard: forced onto one with a preemptible kernel, legacy objects are for
 * testing only.
 */
#ifndef ECAPTURE_KERNEL_COMPAT_H
#define ECAPTURE_KERNEL_COMPAT_H

#include <bpf/bpf_helpers.h>

#ifdef ECAPTURE_LEGACY_KERNEL

#define DECLARE_SETTINGS(T, name)                         \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_ARRAY);         \
		__uint(max_entries, 1);                   \
		__type(key, __u32);                       \
		__type(value, T);                         \
	} name SEC(".maps")

/* Zero when the map could not be read, which userspace's fill rules out. */
#define SETTING(name, field)                                              \
	({                                                                \
		__u32 zero_ = 0;                                          \
		__typeof__(name.value) settings_ = bpf_map_lookup_elem(&name, &zero_); \
		settings_ ? settings_->field : 0;                         \
	})

#define EVENT_CHANNEL(name, bytes)                                \
	struct {                                                  \
		__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);      \
		__uint(key_size, sizeof(__u32));                  \
		__uint(value_size, sizeof(__u32));                \
	} name SEC(".maps")

/* Where a record too large for the stack is built before it is copied out. */
#define RECORD_SLOT(name, T)                              \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);  \
		__uint(max_entries, 1);                   \
		__type(key, __u32);                       \
		__type(value, T);                         \
	} name##_slot SEC(".maps")

static __always_inline void *record_slot(void *slots)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(slots, &zero);
}

#define RESERVE_RECORD(name, size) record_slot(&name##_slot)
/* Non-zero when the perf buffer had no room. */
#define SUBMIT_RECORD(ctx, name, record, size, flags) \
	bpf_perf_event_output(ctx, &name, BPF_F_CURRENT_CPU, record, size)
#define DISCARD_RECORD(record) ((void)(record))
#define OUTPUT_RECORD(ctx, name, data, size, flags) \
	bpf_perf_event_output(ctx, &name, BPF_F_CURRENT_CPU, data, size)
#define SHARED_WORD_FLAGS 0

#else /* current kernels */

#define DECLARE_SETTINGS(T, name) const volatile T name = {}
#define SETTING(name, field) ((name).field)

#define EVENT_CHANNEL(name, bytes)                        \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_RINGBUF);       \
		__uint(max_entries, bytes);               \
	} name SEC(".maps")

#define RECORD_SLOT(name, T)
#define RESERVE_RECORD(name, size) bpf_ringbuf_reserve(&name, size, 0)
#define SUBMIT_RECORD(ctx, name, record, size, flags) ({ bpf_ringbuf_submit(record, flags); 0L; })
#define DISCARD_RECORD(record) bpf_ringbuf_discard(record, 0)
#define OUTPUT_RECORD(ctx, name, data, size, flags) bpf_ringbuf_output(&name, data, size, flags)
/* BPF_F_MMAPABLE (Linux 5.5): userspace maps the word instead of asking. */
#define SHARED_WORD_FLAGS BPF_F_MMAPABLE

#endif

/* One word shared with userspace. */
#define SHARED_WORD(name)                                 \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_ARRAY);         \
		__uint(max_entries, 1);                   \
		__uint(map_flags, SHARED_WORD_FLAGS);     \
		__type(key, __u32);                       \
		__type(value, __u32);                     \
	} name SEC(".maps")

/* Types userspace decodes, made visible in BTF, hence in the generated Rust
 * types. Global variables need Linux 5.2; the legacy objects go without, as
 * userspace takes the types from the current ones. */
#ifdef ECAPTURE_LEGACY_KERNEL
#define BTF_ANCHOR(T, name)
#else
#define BTF_ANCHOR(T, name) T name = {}
#endif

#endif
