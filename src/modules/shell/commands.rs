//! From the shell probes' records to commands: the lines each shell read,
//! joined until the shell says the command they made is done.

use std::collections::HashMap;
use std::mem::offset_of;
use std::time::{Duration, SystemTime};

use super::Shell;
use crate::audit::{Activity, Assembler, ShellCommand, TextRecord};
use crate::event::{Comm, monotonic_epoch};
use crate::probe::RawShellEvent;

// Values of `enum shell_event_kind` (bpf/include/shell_event.h).
const SHELL_LINE: u16 = 1;
const SHELL_COMMAND_DONE: u16 = 2;
const SHELL_EXIT: u16 = 3;

/// Shells with a command under way; past this, the one idle longest is
/// written out as it stands.
const MAX_SHELLS: usize = 4096;
/// Input kept for one command; the rest is counted as missing.
const MAX_COMMAND_BYTES: usize = 1 << 20;
/// zsh keeps its strings "metafied": this byte, then the next one XOR 32.
const ZSH_META: u8 = 0x83;

/// What a shell has typed for the command it has not finished.
struct PendingCommand {
    first_line_ns: u64,
    last_line_ns: u64,
    uid: u32,
    comm: Comm,
    /// Complete lines, joined by line breaks.
    text: Vec<u8>,
    /// The line whose records are still coming.
    line: Vec<u8>,
    line_open: bool,
    missing: bool,
}

pub struct CommandAssembler {
    shell: Shell,
    /// `-e N`: only commands that exited with N.
    only_status: Option<i32>,
    epoch: SystemTime,
    shells: HashMap<u32, PendingCommand>,
}

type Record<'a> = TextRecord<'a, RawShellEvent>;

impl CommandAssembler {
    pub fn new(shell: Shell, only_status: Option<i32>) -> CommandAssembler {
        CommandAssembler {
            shell,
            only_status,
            epoch: monotonic_epoch(),
            shells: HashMap::new(),
        }
    }

    fn on_line(&mut self, record: &Record<'_>, out: &mut Vec<Activity>) {
        let header = &record.header;
        if !self.shells.contains_key(&header.pid) && self.shells.len() >= MAX_SHELLS {
            self.evict_idlest(out);
        }
        let pending = self.shells.entry(header.pid).or_insert_with(|| PendingCommand {
            first_line_ns: header.timestamp_ns,
            last_line_ns: header.timestamp_ns,
            uid: header.uid,
            comm: Comm::from_kernel(&header.comm),
            text: Vec::new(),
            line: Vec::new(),
            line_open: false,
            missing: false,
        });
        if header.chunk == 0 && pending.line_open {
            // The last line went past what the probe sends of one line.
            pending.missing = true;
            complete_line(self.shell, pending);
        }
        if header.chunk != 0 && !pending.line_open {
            // Its start was lost.
            pending.missing = true;
        }
        pending.last_line_ns = header.timestamp_ns;
        let room = MAX_COMMAND_BYTES.saturating_sub(pending.text.len() + pending.line.len());
        if record.text.len() > room {
            pending.missing = true;
        }
        pending
            .line
            .extend_from_slice(&record.text[..record.text.len().min(room)]);
        pending.line_open = header.more != 0;
        if !pending.line_open {
            complete_line(self.shell, pending);
        }
    }

    /// The command of shell `pid` is done with `status`.
    fn on_done(&mut self, pid: u32, at_ns: u64, status: Option<i32>, out: &mut Vec<Activity>) {
        let Some(mut pending) = self.shells.remove(&pid) else {
            return;
        };
        if pending.line_open {
            pending.missing = true;
            complete_line(self.shell, &mut pending);
        }
        self.write(pid, pending, at_ns, status, out);
    }

    fn write(&self, pid: u32, pending: PendingCommand, at_ns: u64, status: Option<i32>, out: &mut Vec<Activity>) {
        // An empty line runs nothing.
        if pending.text.iter().all(u8::is_ascii_whitespace) && !pending.missing {
            return;
        }
        if self.only_status.is_some_and(|wanted| status != Some(wanted)) {
            return;
        }
        out.push(Activity::Command(ShellCommand {
            time: self.epoch + Duration::from_nanos(pending.first_line_ns),
            pid,
            uid: pending.uid,
            comm: pending.comm,
            line: pending.text,
            missing: pending.missing,
            status,
            duration: Duration::from_nanos(at_ns.saturating_sub(pending.last_line_ns)),
        }));
    }

    fn evict_idlest(&mut self, out: &mut Vec<Activity>) {
        let idlest = self
            .shells
            .iter()
            .min_by_key(|(_, pending)| pending.last_line_ns)
            .map(|(&pid, pending)| (pid, pending.last_line_ns));
        if let Some((pid, at_ns)) = idlest {
            self.on_done(pid, at_ns, None, out);
        }
    }
}

/// Moves the line read into the command's text.
fn complete_line(shell: Shell, pending: &mut PendingCommand) {
    let mut line = std::mem::take(&mut pending.line);
    if shell == Shell::Zsh {
        line = unmetafy(&line);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if !pending.text.is_empty() {
        pending.text.push(b'\n');
    }
    pending.text.extend_from_slice(&line);
    pending.line_open = false;
}

/// zsh's internal form of a string back to its bytes.
fn unmetafy(line: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(line.len());
    let mut escaped = false;
    for &byte in line {
        match (escaped, byte) {
            (true, _) => {
                bytes.push(byte ^ 32);
                escaped = false;
            }
            (false, ZSH_META) => escaped = true,
            (false, _) => bytes.push(byte),
        }
    }
    bytes
}

impl Assembler for CommandAssembler {
    fn on_record(&mut self, bytes: &[u8], out: &mut Vec<Activity>) {
        let Some(record) = Record::parse(bytes, offset_of!(RawShellEvent, text), |header| {
            usize::from(header.length)
        }) else {
            return;
        };
        let header = &record.header;
        let status = (header.status_known != 0).then_some(header.status);
        match header.kind {
            SHELL_LINE => self.on_line(&record, out),
            SHELL_COMMAND_DONE | SHELL_EXIT => self.on_done(header.pid, header.timestamp_ns, status, out),
            _ => {}
        }
    }

    fn finish(&mut self, out: &mut Vec<Activity>) {
        let mut pids: Vec<u32> = self.shells.keys().copied().collect();
        pids.sort_unstable();
        for pid in pids {
            if let Some(pending) = self.shells.remove(&pid) {
                let at_ns = pending.last_line_ns;
                self.write(pid, pending, at_ns, None, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32, kind: u16, chunk: u8, more: bool, text: &[u8], status: Option<i32>) -> Vec<u8> {
        let mut header = RawShellEvent {
            timestamp_ns: 1_000,
            pid,
            uid: 1000,
            status: status.unwrap_or(0),
            kind,
            length: text.len() as u16,
            more: u8::from(more),
            chunk,
            status_known: u8::from(status.is_some()),
            ..Default::default()
        };
        header.text[..text.len()].copy_from_slice(&text.iter().map(|&b| b as _).collect::<Vec<_>>());
        // SAFETY: a C struct of integers and byte arrays.
        let bytes = unsafe { plain::as_bytes(&header) };
        bytes[..offset_of!(RawShellEvent, text) + text.len()].to_vec()
    }

    fn commands(shell: Shell, only: Option<i32>, records: &[Vec<u8>]) -> Vec<ShellCommand> {
        crate::audit::assemble(CommandAssembler::new(shell, only), records)
            .into_iter()
            .filter_map(|activity| match activity {
                Activity::Command(command) => Some(command),
                Activity::Query(_) => None,
            })
            .collect()
    }

    #[test]
    fn lines_until_the_next_prompt_make_one_command_with_its_status() {
        let got = commands(
            Shell::Bash,
            None,
            &[
                record(7, SHELL_LINE, 0, false, b"for i in 1 2; do", None),
                record(7, SHELL_LINE, 0, false, b"echo $i; done", None),
                record(7, SHELL_COMMAND_DONE, 0, false, b"", Some(0)),
                record(7, SHELL_LINE, 0, false, b"", None),
                record(7, SHELL_COMMAND_DONE, 0, false, b"", Some(0)),
                record(7, SHELL_LINE, 0, false, b"exit 3", None),
                record(7, SHELL_EXIT, 0, false, b"", Some(3)),
            ],
        );
        let summary: Vec<(&[u8], Option<i32>)> = got.iter().map(|c| (&c.line[..], c.status)).collect();
        assert_eq!(
            summary,
            [
                (&b"for i in 1 2; do\necho $i; done"[..], Some(0)),
                (&b"exit 3"[..], Some(3))
            ]
        );
    }

    #[test]
    fn a_long_line_comes_in_pieces_and_a_cut_one_says_so() {
        let got = commands(
            Shell::Bash,
            None,
            &[
                record(7, SHELL_LINE, 0, true, b"echo aaaa", None),
                record(7, SHELL_LINE, 1, false, b"bbbb", None),
                record(7, SHELL_COMMAND_DONE, 0, false, b"", Some(0)),
                record(8, SHELL_LINE, 0, true, b"cut", None),
                record(8, SHELL_COMMAND_DONE, 0, false, b"", Some(1)),
            ],
        );
        assert_eq!(got[0].line, b"echo aaaabbbb");
        assert!(!got[0].missing);
        assert_eq!((&got[1].line[..], got[1].missing), (&b"cut"[..], true));
    }

    #[test]
    fn errnumber_keeps_only_that_status_and_unfinished_commands_have_none() {
        let got = commands(
            Shell::Bash,
            Some(3),
            &[
                record(7, SHELL_LINE, 0, false, b"true", None),
                record(7, SHELL_COMMAND_DONE, 0, false, b"", Some(0)),
                record(7, SHELL_LINE, 0, false, b"(exit 3)", None),
                record(7, SHELL_COMMAND_DONE, 0, false, b"", Some(3)),
                record(7, SHELL_LINE, 0, false, b"sleep 100", None),
            ],
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].line, b"(exit 3)");
        let running = commands(
            Shell::Bash,
            None,
            &[record(7, SHELL_LINE, 0, false, b"sleep 100", None)],
        );
        assert_eq!(running[0].status, None);
    }

    #[test]
    fn zsh_lines_are_unmetafied_and_lose_their_line_break() {
        // "é" is 0xc3 0xa9; zsh stores 0xa9 as Meta, 0xa9 ^ 32.
        let got = commands(
            Shell::Zsh,
            None,
            &[
                record(9, SHELL_LINE, 0, false, b"echo caf\xc3\x83\x89\n", None),
                record(9, SHELL_COMMAND_DONE, 0, false, b"", Some(0)),
            ],
        );
        assert_eq!(got[0].line, "echo café".as_bytes());
    }

    #[test]
    fn records_too_short_or_lying_about_their_length_are_dropped() {
        let mut lying = record(7, SHELL_LINE, 0, false, b"abc", None);
        lying.truncate(lying.len() - 1);
        let got = commands(Shell::Bash, None, &[lying, vec![1, 2, 3]]);
        assert!(got.is_empty());
    }
}
