//! Batched UDP receive and send (`recvmmsg`/`sendmmsg`) on a shard's socket.
//!
//! One system call moves up to [`BATCH`] datagrams each way; the buffers are allocated
//! once per shard and reused for every batch.

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::unix::io::AsRawFd;

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// Receive buffer per datagram: larger than the protocol's 1024-byte limit, so that an
/// oversize datagram is seen as oversize (and `MSG_TRUNC` flags anything larger still).
pub const RECV_BUFFER_SIZE: usize = 2048;

/// A received datagram.
pub struct Datagram<'a> {
    pub bytes: &'a [u8],
    /// The datagram was larger than the receive buffer.
    pub truncated: bool,
    pub from: SocketAddr,
}

/// Reusable receive state for `recvmmsg`.
pub struct Receiver {
    buffers: Vec<[u8; RECV_BUFFER_SIZE]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    received: usize,
}

// SAFETY: the raw pointers inside point into the struct's own heap buffers.
unsafe impl Send for Receiver {}

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    pub fn new() -> Receiver {
        let mut r = Receiver {
            buffers: vec![[0u8; RECV_BUFFER_SIZE]; BATCH],
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
            addrs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; BATCH],
            iovecs: Vec::with_capacity(BATCH),
            // SAFETY: as above for mmsghdr.
            headers: vec![unsafe { MaybeUninit::zeroed().assume_init() }; BATCH],
            received: 0,
        };
        for i in 0..BATCH {
            r.iovecs.push(libc::iovec {
                iov_base: r.buffers[i].as_mut_ptr().cast(),
                iov_len: RECV_BUFFER_SIZE,
            });
        }
        r
    }

    /// Receives up to [`BATCH`] datagrams, blocking until at least one arrives or the
    /// socket's read timeout passes. Returns how many arrived.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        for i in 0..BATCH {
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut self.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self, sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.received = 0;
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        self.received = n as usize;
        Ok(self.received)
    }

    /// The `i`th datagram of the last batch.
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        assert!(i < self.received);
        let h = &self.headers[i];
        let len = (h.msg_len as usize).min(RECV_BUFFER_SIZE);
        let from = sockaddr_to_std(&self.addrs[i])?;
        Some(Datagram {
            bytes: &self.buffers[i][..len],
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            from,
        })
    }
}

/// Replies queued for one `sendmmsg`.
pub struct Sender {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize, SocketAddr)>,
}

impl Default for Sender {
    fn default() -> Self {
        Self::new()
    }
}

impl Sender {
    pub fn new() -> Sender {
        Sender {
            bytes: Vec::with_capacity(BATCH * 1024),
            spans: Vec::with_capacity(BATCH),
        }
    }

    /// Queues a datagram built by `fill` (which appends its bytes to the vector).
    pub fn push(&mut self, to: SocketAddr, fill: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        fill(&mut self.bytes);
        self.spans.push((start, self.bytes.len() - start, to));
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Sends everything queued, [`BATCH`] datagrams per call. Datagrams the kernel
    /// refuses (a full socket buffer) are dropped: the client retries.
    pub fn flush(&mut self, socket: &UdpSocket) -> usize {
        let mut sent = 0;
        for chunk in self.spans.chunks(BATCH) {
            let mut addrs: Vec<(libc::sockaddr_storage, u32)> =
                chunk.iter().map(|s| std_to_sockaddr(&s.2)).collect();
            let mut iovecs: Vec<libc::iovec> = chunk
                .iter()
                .map(|&(start, len, _)| libc::iovec {
                    iov_base: self.bytes[start..].as_ptr() as *mut _,
                    iov_len: len,
                })
                .collect();
            let mut headers: Vec<libc::mmsghdr> = (0..chunk.len())
                .map(|i| {
                    // SAFETY: mmsghdr is plain data; zero is valid.
                    let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
                    h.msg_hdr.msg_name = (&mut addrs[i].0 as *mut libc::sockaddr_storage).cast();
                    h.msg_hdr.msg_namelen = addrs[i].1;
                    h.msg_hdr.msg_iov = &mut iovecs[i];
                    h.msg_hdr.msg_iovlen = 1;
                    h
                })
                .collect();
            let mut done = 0;
            while done < headers.len() {
                // SAFETY: headers point at live iovecs, addresses and bytes.
                let n = unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        headers[done..].as_mut_ptr(),
                        (headers.len() - done) as u32,
                        0,
                    )
                };
                if n <= 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // Skip the datagram that failed (e.g. an unreachable address).
                    done += 1;
                    continue;
                }
                done += n as usize;
                sent += n as usize;
            }
        }
        self.bytes.clear();
        self.spans.clear();
        sent
    }
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let a: &libc::sockaddr_in =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = u32::from_be(a.sin_addr.s_addr);
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip.into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: zeroed sockaddr_storage is valid; we then fill the variant the family names.
    let mut storage: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough for sockaddr_in.
            let s: &mut libc::sockaddr_in =
                unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as u16;
            s.sin_port = a.port().to_be();
            s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (storage, size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough for sockaddr_in6.
            let s: &mut libc::sockaddr_in6 =
                unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            s.sin6_family = libc::AF_INET6 as u16;
            s.sin6_port = a.port().to_be();
            s.sin6_addr.s6_addr = a.ip().octets();
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_scope_id = a.scope_id();
            (storage, size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

/// Sets a socket buffer size, above `net.core.{r,w}mem_max` when the process may
/// (`CAP_NET_ADMIN`, e.g. root), else as large as the limit allows. Bursts of a whole
/// window's replies or requests need more than the usual 208 KiB default.
pub fn set_buffer_size(socket: &impl AsRawFd, bytes: usize, receive: bool) {
    let (force, plain) = if receive {
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)
    } else {
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)
    };
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    for opt in [force, plain] {
        // SAFETY: setsockopt with a pointer to a live c_int and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}
