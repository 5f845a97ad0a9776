//! The `cgroup/*4` socket address hooks.

use aya_ebpf::bindings::bpf_sock_addr;
use aya_ebpf::helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_set_retval};
use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;
use skiff_abi::{Affinity, AffinityKey, Backend, BackendKey, MemberKey, Origin, Service, ServiceKey};

use crate::maps::{AFFINITY_V1, BACKENDS_V1, MEMBERS_V1, SERVICES_V1, SOCKETS_V2};

/// Let the operation proceed.
const ALLOW: i32 = 1;
/// Fail the operation (with the error set by `bpf_set_retval`).
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// TCP `connect()` and UDP `connect()`: pick a backend for a service address.
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    balance(&ctx)
}

/// UDP `sendto()`/`sendmsg()` on an unconnected socket: pick a backend per message.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    balance(&ctx)
}

/// UDP `recvfrom()`/`recvmsg()`: a reply from the backend appears to come from the service.
#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    ALLOW
}

/// `getpeername()`: a socket connected through a service reports the service address.
#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    ALLOW
}

fn addr_of(sa: *const bpf_sock_addr) -> ([u8; 4], u16) {
    // SAFETY: the kernel passes a valid context; user_ip4 and user_port are read as whole u32 words
    // as the verifier requires.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    (ip.to_ne_bytes(), u16::from_be(port as u16))
}

fn set_addr(sa: *mut bpf_sock_addr, addr: [u8; 4], port: u16) {
    // SAFETY: as in `addr_of`; these fields are writable in every cgroup/*4 sock_addr hook.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(addr);
        (*sa).user_port = u32::from(port.to_be());
    }
}

fn balance(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let (addr, port) = addr_of(sa);
    // SAFETY: as in `addr_of`.
    let protocol = unsafe { (*sa).protocol } as u8;
    let key = ServiceKey {
        addr,
        port,
        protocol,
        pad: 0,
    };
    let Some(service) = SERVICES_V1.get_ptr(&key) else {
        return ALLOW;
    };
    // SAFETY: a map value pointer from a successful lookup; the value is copied out at once.
    let service = unsafe { *service };
    if service.count == 0 {
        // Upstream's conformance tests expect "connection refused", not EPERM or EHOSTUNREACH.
        // SAFETY: a helper call with a plain integer.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    // SAFETY: a helper call with the program's own context (only needed under affinity).
    let client = || unsafe { bpf_get_netns_cookie(sa.cast()) };
    let Some(backend) = pick(&key, &service, client) else {
        // The set was replaced between the two lookups; the old one is being deleted. Leave the
        // address alone: the unreachable route for the service range fails it.
        return ALLOW;
    };
    set_addr(sa, backend.addr, backend.port);
    // Remembered for getpeername() (connected sockets) and recvmsg() (UDP replies), in storage
    // the kernel attaches to the socket and frees with it: no shared table to insert into, evict
    // from or age.
    // SAFETY: the program's own context; the kernel zero-fills a new entry.
    let origin = unsafe { SOCKETS_V2.get_or_insert_ptr_mut(ctx, None) };
    if !origin.is_null() {
        // SAFETY: a non-null storage pointer for this socket, written whole.
        unsafe {
            *origin = Origin {
                addr,
                port,
                pad: 0,
                backend,
            }
        };
    }
    ALLOW
}

/// A backend of `service` (at `key`) for a new connection: the one `client` used last under
/// `sessionAffinity: ClientIP`, else one at random. `client` identifies the client (only called when
/// the service has affinity). `None` when the backend set was replaced meanwhile.
pub(crate) fn pick(key: &ServiceKey, service: &Service, client: impl FnOnce() -> u64) -> Option<Backend> {
    let sticky = if service.affinity_timeout == 0 {
        None
    } else {
        Some(AffinityKey {
            client: client(),
            service: *key,
        })
    };
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let backend = match sticky.as_ref().and_then(|k| remembered(k, service, now)) {
        Some(backend) => backend,
        None => {
            // SAFETY: a helper call without arguments.
            let slot = unsafe { bpf_get_prandom_u32() } % service.count;
            let backend = BACKENDS_V1.get_ptr(&BackendKey { id: service.id, slot })?;
            // SAFETY: a map value pointer from a successful lookup; copied out at once.
            unsafe { *backend }
        }
    };
    if let Some(k) = &sticky {
        let _ = AFFINITY_V1.insert(
            k,
            Affinity {
                backend,
                last_used: now,
            },
            0,
        );
    }
    Some(backend)
}

/// The backend this client used last for the service, if within the affinity timeout and still in
/// the service's current backend set.
fn remembered(key: &AffinityKey, service: &Service, now: u64) -> Option<Backend> {
    let last = AFFINITY_V1.get_ptr(key)?;
    // SAFETY: a map value pointer from a successful lookup; copied out at once.
    let last: Affinity = unsafe { *last };
    if now.saturating_sub(last.last_used) > u64::from(service.affinity_timeout) * 1_000_000_000 {
        return None;
    }
    MEMBERS_V1.get_ptr(&MemberKey {
        id: service.id,
        backend: last.backend,
    })?;
    Some(last.backend)
}

fn restore(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: the program's own context; a lookup only.
    let origin = unsafe { SOCKETS_V2.get_ptr_mut(ctx) };
    if origin.is_null() {
        return;
    }
    // SAFETY: a non-null storage pointer for this socket; copied out at once.
    let origin: Origin = unsafe { *origin };
    let (addr, port) = addr_of(sa);
    if addr == origin.backend.addr && port == origin.backend.port {
        set_addr(sa, origin.addr, origin.port);
    }
}
