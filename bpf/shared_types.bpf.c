// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Never loaded. The C types every module's records and settings share, made
 * visible in BTF so that build.rs generates their one Rust definition from
 * here.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "kernel_compat.h"
#include "capture_settings.h"
#include "foreign_tls.h"
#include "keylog_line.h"
#include "shell_event.h"
#include "query_event.h"
#include "tls_event.h"
#include "tls_keys.h"

struct capture_settings capture_settings_type = {};
struct data_event data_event_type = {};
struct master_secret_event master_secret_event_type = {};
struct foreign_tls_event foreign_tls_event_type = {};
struct keylog_line_event keylog_line_event_type = {};
struct shell_event shell_event_type = {};
struct shell_settings shell_settings_type = {};
struct query_event query_event_type = {};

char LICENSE[] SEC("license") = "Dual BSD/GPL";
