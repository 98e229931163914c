//! Zero-downtime upgrades of cutover itself: a new `cutover serve --upgrade` takes the listening
//! sockets of the running one, as HAProxy and Pingora do, so that no connection is refused and no
//! request fails while the binary or the configuration changes.
//!
//! The running server listens on a Unix socket in its state directory ([`SOCKET_FILE`], mode
//! 0600 in a 0700 directory, and only a peer of the same user is answered). The exchange, one
//! JSON line each way at a time:
//!
//! 1. the successor says `{"take":{"pid":N}}`;
//! 2. the running server answers with its listeners (`{"pid":..,"listeners":[..]}`) and, in the
//!    same message, their descriptors (`SCM_RIGHTS`). Both processes now hold the same sockets;
//!    the running one still serves. The successor checks everything that can fail (the
//!    configuration, TLS files, new addresses) before it goes on; if it gives up, nothing changed;
//! 3. the successor says `{"stop":true}`: the running server stops accepting (the sockets stay
//!    open in the successor, so connections wait in the kernel's queue instead of being
//!    refused), stops its controllers, closes its store to writes ([`cutover_store::Fenced`]),
//!    releases the state directory's lock and answers `{"released":true}`; then it drains its
//!    open connections and exits;
//! 4. the successor takes the lock, opens the store, serves the inherited sockets and resumes
//!    every rollout from the stored state, as after a restart (instances are adopted, not
//!    restarted).
//!
//! A configuration reload is the same exchange with the same binary (SIGHUP makes the server
//! start its successor), so adding, changing or removing apps and listeners has the same
//! guarantees as an upgrade, and a file that does not load changes nothing.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::{UnixListener, UnixStream};

/// The hand-over socket's name in the state directory.
pub const SOCKET_FILE: &str = "handover.sock";

/// Most listeners one server hands over (the kernel passes at most 253 descriptors in one
/// message): an app has at most two, plus the admin API and the flag service.
const MAX_LISTENERS: usize = 250;

/// Longest the running server may take to stop its controllers and release the state.
const RELEASE_DEADLINE: Duration = Duration::from_secs(30);

/// Longest a successor may take, once it holds the sockets, to say `stop` or give up.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// A listening socket being handed over, named by what it listens for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSpec {
    /// `admin.listen`, `flags.listen`, `app.<name>.listen`, `app.<name>.preview_listen`.
    pub name: String,
    /// The address in the configuration (its port may be 0)...
    pub configured: SocketAddr,
    /// ...and the one actually bound.
    pub bound: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(
        "--upgrade: no running cutover serve answers at {path} ({source}); start without --upgrade, \
         or check that [server] state_dir is the running server's"
    )]
    NoServer { path: String, source: io::Error },
    #[error("--upgrade: the running cutover serve (at {path}) broke off the hand-over: {reason}")]
    Broken { path: String, reason: String },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Request {
    Take { pid: u32 },
    Stop,
}

#[derive(Serialize, Deserialize)]
struct Offer {
    pid: u32,
    listeners: Vec<ListenerSpec>,
}

#[derive(Serialize, Deserialize)]
struct Released {
    released: bool,
}

/// The successor's side: the running server's sockets, held until the configuration has been
/// checked and the running server told to stop.
#[derive(Debug)]
pub struct Successor {
    stream: BufReader<UnixStream>,
    path: PathBuf,
    /// The running server's pid.
    pub predecessor: u32,
    listeners: Vec<(ListenerSpec, Option<std::net::TcpListener>)>,
}

impl Successor {
    /// Asks the server running on `state_dir` for its listening sockets. It keeps serving.
    pub async fn connect(state_dir: &Path) -> Result<Successor, HandoverError> {
        let path = state_dir.join(SOCKET_FILE);
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| HandoverError::NoServer {
                path: path.display().to_string(),
                source,
            })?;
        let broken = |reason: String| HandoverError::Broken {
            path: path.display().to_string(),
            reason,
        };
        let mut line = serde_json::to_vec(&Request::Take {
            pid: std::process::id(),
        })
        .map_err(|e| broken(e.to_string()))?;
        line.push(b'\n');
        let mut stream = stream;
        stream
            .write_all(&line)
            .await
            .map_err(|e| broken(format!("sending the request: {e}")))?;
        let (text, fds) = tokio::time::timeout(RELEASE_DEADLINE, receive_offer(&stream))
            .await
            .map_err(|_| broken("no answer within 30 s".into()))?
            .map_err(|e| broken(format!("receiving the sockets: {e}")))?;
        let offer: Offer =
            serde_json::from_slice(&text).map_err(|e| broken(format!("unreadable answer: {e}")))?;
        if offer.listeners.len() != fds.len() {
            return Err(broken(format!(
                "{} listeners announced, {} sockets received",
                offer.listeners.len(),
                fds.len()
            )));
        }
        let listeners = offer
            .listeners
            .into_iter()
            .zip(fds)
            .map(|(spec, fd)| (spec, Some(std::net::TcpListener::from(fd))))
            .collect();
        Ok(Successor {
            stream: BufReader::new(stream),
            path,
            predecessor: offer.pid,
            listeners,
        })
    }

    /// The running server's socket for `name` if it listens where the configuration now says:
    /// the same name and configured address (a port 0 keeps the port it was given), or any
    /// socket bound to exactly `configured` (an app renamed, a listener moved between apps).
    pub fn take(&mut self, name: &str, configured: SocketAddr) -> Option<std::net::TcpListener> {
        let by_name = self
            .listeners
            .iter()
            .position(|(spec, l)| l.is_some() && spec.name == name && spec.configured == configured);
        let by_address = || {
            self.listeners
                .iter()
                .position(|(spec, l)| l.is_some() && configured.port() != 0 && spec.bound == configured)
        };
        let index = by_name.or_else(by_address)?;
        self.listeners[index].1.take()
    }

    /// Tells the running server to stop accepting, stop its controllers and release the state,
    /// and waits until it has. The sockets not taken are closed here; the running server closes
    /// its own copies when it exits.
    pub async fn release_predecessor(mut self) -> Result<u32, HandoverError> {
        self.listeners.clear();
        let broken = |reason: String| HandoverError::Broken {
            path: self.path.display().to_string(),
            reason,
        };
        let mut line = serde_json::to_vec(&Request::Stop).map_err(|e| broken(e.to_string()))?;
        line.push(b'\n');
        self.stream
            .get_mut()
            .write_all(&line)
            .await
            .map_err(|e| broken(format!("sending stop: {e}")))?;
        let mut answer = String::new();
        let read = tokio::time::timeout(RELEASE_DEADLINE, self.stream.read_line(&mut answer))
            .await
            .map_err(|_| broken("it did not release the state within 30 s".into()))?
            .map_err(|e| broken(format!("waiting for the release: {e}")))?;
        if read == 0 {
            return Err(broken(
                "it closed the connection before releasing the state".into(),
            ));
        }
        match serde_json::from_str::<Released>(&answer) {
            Ok(Released { released: true }) => Ok(self.predecessor),
            _ => Err(broken(format!("unexpected answer {:?}", answer.trim()))),
        }
    }
}

/// Reads the offer line and the descriptors that come with its first byte.
async fn receive_offer(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut text = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        stream.readable().await?;
        let received = stream.try_io(Interest::READABLE, || {
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let msg = rustix::net::recvmsg(stream.as_fd(), &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
            let mut got = Vec::new();
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    got.extend(received);
                }
            }
            Ok((msg.bytes, got))
        });
        let (n, got) = match received {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        fds.extend(got);
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        text.extend_from_slice(&chunk[..n]);
        if text.ends_with(b"\n") {
            return Ok((text, fds));
        }
        if text.len() > 1 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "offer too long"));
        }
    }
}

/// The running server's side: what it offers, and what it does when told to stop.
pub(crate) struct Offered {
    pub listeners: Vec<(ListenerSpec, OwnedFd)>,
}

/// What the running server does on `stop`: stop accepting and its controllers, close its store
/// to writes, release the state directory; returns once done.
pub(crate) type Release = Box<dyn Fn(u32) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// Binds the hand-over socket in `state_dir`, replacing a stale one (left by a server that
/// died), never one another server still answers on, unless this server is its successor
/// (`successor`): the predecessor may still be closing its socket when this one gets here.
pub(crate) fn bind(state_dir: &Path, successor: bool) -> io::Result<UnixListener> {
    crate::create_private_dir(state_dir)?;
    let path = state_dir.join(SOCKET_FILE);
    if !successor && std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another cutover serve answers on {}", path.display()),
        ));
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers successors until one has taken over (then returns) or `shutdown`. One at a time; a
/// successor that gives up before `stop` changes nothing.
pub(crate) async fn serve(
    listener: UnixListener,
    offered: Offered,
    release: Release,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "hand-over socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let me = rustix::process::getuid().as_raw();
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == me || cred.uid() == 0 => {}
            Ok(cred) => {
                tracing::warn!(uid = cred.uid(), "hand-over refused to a process of another user");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "hand-over refused: the peer's credentials are unknown");
                continue;
            }
        }
        match exchange(stream, &offered, &release).await {
            Ok(successor) => {
                tracing::info!(successor, "handed over to the new cutover serve; draining");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "a hand-over was broken off; still serving"),
        }
    }
}

async fn exchange(stream: UnixStream, offered: &Offered, release: &Release) -> io::Result<u32> {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut line)).await??;
    if read == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let Ok(Request::Take { pid }) = serde_json::from_str(&line) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected request {:?}", line.trim()),
        ));
    };
    tracing::info!(
        successor = pid,
        "a new cutover serve asks for the listening sockets"
    );
    let offer = Offer {
        pid: std::process::id(),
        listeners: offered.listeners.iter().map(|(spec, _)| spec.clone()).collect(),
    };
    let mut text = serde_json::to_vec(&offer).map_err(io::Error::other)?;
    text.push(b'\n');
    send_offer(stream.get_ref(), &text, offered).await?;
    // The successor now checks its configuration, TLS files and new addresses. A successor that
    // neither goes on nor gives up within STOP_DEADLINE is dropped, so it cannot hold the door
    // shut for the next upgrade.
    line.clear();
    let read = tokio::time::timeout(STOP_DEADLINE, stream.read_line(&mut line))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the new server (pid {pid}) neither took over nor gave up within {} s",
                    STOP_DEADLINE.as_secs()
                ),
            )
        })??;
    if read == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the new server (pid {pid}) gave up before taking over"),
        ));
    }
    let Ok(Request::Stop) = serde_json::from_str(&line) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected request {:?}", line.trim()),
        ));
    };
    release(pid).await;
    let mut answer = serde_json::to_vec(&Released { released: true }).map_err(io::Error::other)?;
    answer.push(b'\n');
    stream.get_mut().write_all(&answer).await?;
    Ok(pid)
}

async fn send_offer(stream: &UnixStream, text: &[u8], offered: &Offered) -> io::Result<()> {
    let fds: Vec<_> = offered.listeners.iter().map(|(_, fd)| fd.as_fd()).collect();
    let mut sent = 0;
    while sent < text.len() {
        stream.writable().await?;
        let result = stream.try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(&text[sent..])];
            if sent == 0 {
                let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                    return Err(io::Error::other("too many sockets for one message"));
                }
                Ok(rustix::net::sendmsg(
                    stream.as_fd(),
                    &iov,
                    &mut control,
                    SendFlags::empty(),
                )?)
            } else {
                Ok(rustix::net::sendmsg(
                    stream.as_fd(),
                    &iov,
                    &mut SendAncillaryBuffer::default(),
                    SendFlags::empty(),
                )?)
            }
        });
        match result {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
