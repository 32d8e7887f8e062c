//! TCP sockets as /proc describes them: which inode an fd is, and the
//! addresses of each socket in a network namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::event::SocketPair;
use crate::target::libpath::{process_ids, process_name};

/// The socket inode behind a process's fd, if the fd is a socket.
pub fn socket_inode(pid: u32, fd: i32) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The inodes of the sockets process `pid` holds.
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| socket_inode(pid, fd.file_name().to_str()?.parse().ok()?))
        .collect()
}

/// Whether process `pid` holds an open TCP connection.
pub fn holds_tcp_connection(pid: u32) -> bool {
    let inodes = socket_inodes(pid);
    !inodes.is_empty() && tcp_sockets(pid).iter().any(|(inode, _)| inodes.contains(inode))
}

/// Every TCP socket (IPv4 and IPv6) in the network namespace of `pid`, with
/// its inode.
pub fn tcp_sockets(pid: u32) -> Vec<(u64, SocketPair)> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| parse_tcp_table(&text))
        .collect()
}

fn parse_tcp_table(table: &str) -> Vec<(u64, SocketPair)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let pair = SocketPair {
                local: parse_proc_addr(fields.get(1)?)?,
                remote: parse_proc_addr(fields.get(2)?)?,
            };
            Some((fields.get(9)?.parse().ok()?, pair))
        })
        .collect()
}

/// "0100007F:1F90" (IPv4) or 32 hex digits and a port (IPv6). The kernel
/// prints each 32-bit word of the address in host order.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (addr_hex, port_hex) = text.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in addr_hex.as_bytes().chunks(8) {
        let value = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&value.to_ne_bytes());
    }
    let ip: IpAddr = match bytes.len() {
        4 => Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into(),
        // Dual-stack sockets carry IPv4 peers as ::ffff:a.b.c.d.
        16 => Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_canonical(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The process that owns each TCP connection open now, across network
/// namespaces: (pid, comm, connection as that process sees it).
pub fn connection_owners() -> Vec<(u32, String, SocketPair)> {
    let mut tables: std::collections::HashMap<String, std::collections::HashMap<u64, SocketPair>> =
        std::collections::HashMap::new();
    let mut owners = Vec::new();
    for pid in process_ids(None) {
        let inodes = socket_inodes(pid);
        if inodes.is_empty() {
            continue;
        }
        // One read of the TCP tables per network namespace.
        let Ok(netns) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let table = tables
            .entry(netns.to_string_lossy().into_owned())
            .or_insert_with(|| tcp_sockets(pid).into_iter().collect());
        let comm = process_name(pid);
        for inode in inodes {
            if let Some(pair) = table.get(&inode) {
                owners.push((pid, comm.clone(), *pair));
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn parses_ipv6_table_addresses() {
        let addr = parse_proc_addr("00000000000000000000000001000000:20FB").unwrap();
        assert_eq!(addr, "[::1]:8443".parse().unwrap());
    }

    #[test]
    fn dual_stack_addresses_read_as_ipv4() {
        let addr = parse_proc_addr("0000000000000000FFFF00000100007F:1F90").unwrap();
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn finds_our_own_connection_and_its_owner() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let inode = socket_inode(std::process::id(), client.as_raw_fd()).unwrap();
        let sockets = tcp_sockets(std::process::id());
        let pair = sockets.iter().find(|(i, _)| *i == inode).map(|(_, p)| *p).unwrap();
        assert_eq!(pair.local, client.local_addr().unwrap());
        assert_eq!(pair.remote, listener.local_addr().unwrap());
        assert_eq!(socket_inode(std::process::id(), -1), None);
    }
}
