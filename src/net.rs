//! Batched UDP receive and send (`recvmmsg`/`sendmmsg`), shared by the server's shards
//! and the load tool.
//!
//! One system call moves up to [`BATCH`] datagrams each way; the buffers are allocated
//! once per socket owner and reused for every batch. The shards wait for datagrams and
//! send blocking; the load tool polls many sockets and sends without blocking, keeping
//! what did not fit for its next turn.

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::unix::io::{AsRawFd, RawFd};

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
        self.recv_with(socket.as_raw_fd(), libc::MSG_WAITFORONE)
    }

    /// Receives up to [`BATCH`] datagrams that are already waiting, without blocking.
    pub fn recv_nonblocking(&mut self, socket: RawFd) -> io::Result<usize> {
        self.recv_with(socket, libc::MSG_DONTWAIT)
    }

    fn recv_with(&mut self, socket: RawFd, flags: libc::c_int) -> io::Result<usize> {
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
                socket,
                self.headers.as_mut_ptr(),
                BATCH as u32,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.received = 0;
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN | libc::ETIMEDOUT | libc::EINTR) => Ok(0),
                // ICMP errors of earlier sends surface here on some kernels: they carry
                // no datagram, and what they answer times out like any lost packet.
                Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH) => Ok(0),
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

/// A destination in the form `sendmmsg` takes, converted once.
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    pub fn new(addr: &SocketAddr) -> RawAddr {
        let (storage, len) = std_to_sockaddr(addr);
        RawAddr { storage, len }
    }
}

/// Datagrams queued for `sendmmsg`, with the system call's arrays kept between calls.
pub struct Sender {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
    addrs: Vec<RawAddr>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    /// The address of the last queued datagram when that datagram was begun by
    /// [`Sender::push_coalesced`] and may take more items.
    open: Option<SocketAddr>,
}

// SAFETY: the raw pointers inside `iovecs` and `headers` point into the sender's own
// buffers; they are rebuilt right before every system call that reads them.
unsafe impl Send for Sender {}

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
            addrs: Vec::with_capacity(BATCH),
            iovecs: Vec::with_capacity(BATCH),
            headers: Vec::with_capacity(BATCH),
            open: None,
        }
    }

    /// Queues a datagram to `to` built by `fill` (which appends its bytes to the vector).
    pub fn push(&mut self, to: SocketAddr, fill: impl FnOnce(&mut Vec<u8>)) {
        self.push_raw(RawAddr::new(&to), fill);
    }

    /// Queues a datagram to an address converted beforehand.
    pub fn push_raw(&mut self, to: RawAddr, fill: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        fill(&mut self.bytes);
        self.spans.push((start, self.bytes.len() - start));
        self.addrs.push(to);
        self.open = None;
    }

    /// Queues one item of `item_len` bytes to `to`, in the last queued datagram if that
    /// one was begun here for the same address and stays within `limit` bytes, else in a
    /// new datagram that `begin` starts. `append` adds the item's bytes, given the vector
    /// and where its datagram starts (to update a length in the datagram's header).
    pub fn push_coalesced(
        &mut self,
        to: SocketAddr,
        limit: usize,
        item_len: usize,
        begin: impl FnOnce(&mut Vec<u8>),
        append: impl FnOnce(&mut Vec<u8>, usize),
    ) {
        let fits = |&(_, len): &(usize, usize)| len + item_len <= limit;
        let reuse = self.open == Some(to) && self.spans.last().is_some_and(fits);
        if !reuse {
            let start = self.bytes.len();
            begin(&mut self.bytes);
            self.spans.push((start, self.bytes.len() - start));
            self.addrs.push(RawAddr::new(&to));
            self.open = Some(to);
        }
        if let Some(span) = self.spans.last_mut() {
            append(&mut self.bytes, span.0);
            span.1 = self.bytes.len() - span.0;
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Sends everything queued, [`BATCH`] datagrams per call, blocking while the socket's
    /// buffer is full. A datagram the kernel refuses (an unreachable address) is dropped:
    /// the client retries. Returns how many went out.
    pub fn flush(&mut self, socket: &UdpSocket) -> usize {
        self.prepare();
        let mut sent = 0;
        let mut done = 0;
        while done < self.headers.len() {
            match self.send_some(socket.as_raw_fd(), done, 0) {
                Ok(0) => done += 1,
                Ok(n) => {
                    done += n;
                    sent += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Skip the datagram that failed.
                Err(_) => done += 1,
            }
        }
        self.clear();
        sent
    }

    /// Sends queued datagrams in order without blocking, until the socket's buffer is
    /// full. A datagram refused for its address (unreachable, of the other family) counts
    /// as sent: it is lost, as on the wire, and what it carried times out. Returns how
    /// many were consumed; the queue is emptied either way (the caller still holds what
    /// the rest carried, and queues it again later).
    pub fn send_nonblocking(&mut self, socket: RawFd) -> io::Result<usize> {
        self.prepare();
        let mut done = 0;
        let result = loop {
            if done == self.headers.len() {
                break Ok(done);
            }
            match self.send_some(socket, done, libc::MSG_DONTWAIT) {
                Ok(0) => break Ok(done),
                Ok(n) => done += n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::ENOBUFS) => break Ok(done),
                    Some(libc::EINTR) => {}
                    Some(
                        libc::EAFNOSUPPORT
                        | libc::EINVAL
                        | libc::ENETUNREACH
                        | libc::EHOSTUNREACH
                        | libc::ECONNREFUSED
                        | libc::EPERM
                        | libc::EADDRNOTAVAIL
                        | libc::EMSGSIZE,
                    ) => done += 1,
                    _ => break Err(e),
                },
            }
        };
        self.clear();
        result
    }

    /// Points the system call's arrays at the queued datagrams and addresses.
    fn prepare(&mut self) {
        self.iovecs.clear();
        self.headers.clear();
        let base = self.bytes.as_mut_ptr();
        for &(start, len) in &self.spans {
            self.iovecs.push(libc::iovec {
                // SAFETY: `start` is an offset into `bytes` (a span pushed above).
                iov_base: unsafe { base.add(start) }.cast(),
                iov_len: len,
            });
        }
        for (iov, addr) in self.iovecs.iter_mut().zip(self.addrs.iter_mut()) {
            // SAFETY: mmsghdr is plain data; all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            h.msg_hdr.msg_name = (&mut addr.storage as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = addr.len;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            self.headers.push(h);
        }
    }

    /// One `sendmmsg` of up to [`BATCH`] prepared datagrams from `from` on.
    fn send_some(&mut self, socket: RawFd, from: usize, flags: libc::c_int) -> io::Result<usize> {
        let count = (self.headers.len() - from).min(BATCH);
        // SAFETY: `prepare` pointed these headers at live iovecs, addresses and bytes,
        // none of which moved or changed since; `from + count` is within `headers`.
        let n = unsafe {
            libc::sendmmsg(
                socket,
                self.headers.as_mut_ptr().add(from),
                count as libc::c_uint,
                flags,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn clear(&mut self) {
        self.open = None;
        self.bytes.clear();
        self.spans.clear();
        self.addrs.clear();
        self.iovecs.clear();
        self.headers.clear();
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

/// A UDP socket bound to `addr` with `SO_REUSEPORT` (so several, one per thread, share
/// the port and the kernel spreads datagrams over them), `buffer_bytes` buffers each way
/// and a `read_timeout` on receives: how a shard's socket is set up, and the load tool's
/// UDP ceiling responder's.
pub fn bind_reuse_port(
    addr: SocketAddr,
    buffer_bytes: usize,
    read_timeout: std::time::Duration,
) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_port(true)?;
    set_buffer_size(&s, buffer_bytes, true);
    set_buffer_size(&s, buffer_bytes, false);
    s.bind(&addr.into())?;
    s.set_read_timeout(Some(read_timeout))?;
    Ok(s.into())
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
