//! A loopback TCP proxy a test puts between a NATS client and the server, to cut the client off
//! (a network partition) and heal it again.
//!
//! ```text
//!  client ──▶ 127.0.0.1:<proxy port> ──▶ upstream (nats-server)
//! ```
//!
//! * [`TcpProxy::cut`]: every open connection is closed at once (the client sees the disconnect
//!   immediately) and new connections are accepted but held without forwarding a byte until
//!   [`TcpProxy::heal`] — nothing gets through in either direction.
//! * [`TcpProxy::blackhole`]: a *silent* partition. Open connections stay open but no byte is
//!   forwarded in either direction (data waits in the socket buffers), so the client notices only
//!   through its own timeouts; new connections are held as with `cut`. `heal` resumes forwarding
//!   on the open connections, as when a real partition ends.
//! * [`TcpProxy::heal`]: forward again; connections held during the cut are connected upstream.
//! * Dropping the proxy closes the listener and every connection.
//!
//! Every connection is two tasks copying through a 16 KiB buffer each; they wait on a watch
//! channel while the proxy is cut, so nothing spins.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const BUFFER: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    /// Nothing is forwarded; open connections stay open.
    Paused,
}

#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    /// Bumped by `cut`: connections accepted under an older generation close.
    generation: u64,
}

/// A loopback TCP proxy owned by a test (see the module docs).
pub struct TcpProxy {
    local: SocketAddr,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    open_connections: Arc<AtomicUsize>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpProxy")
            .field("local", &self.local)
            .field("upstream", &self.upstream)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl TcpProxy {
    /// Starts a proxy on `127.0.0.1:<random port>` forwarding to `upstream` (`"host:port"`, a
    /// `SocketAddr`, or a `nats://host:port` URL). Must be called inside a Tokio runtime; panics
    /// if the upstream cannot be resolved or no port can be bound.
    pub fn start(upstream: impl fmt::Display) -> Self {
        Self::try_start(upstream).unwrap_or_else(|error| panic!("cannot start TcpProxy: {error}"))
    }

    /// [`TcpProxy::start`] returning the error instead of panicking.
    pub fn try_start(upstream: impl fmt::Display) -> io::Result<Self> {
        let text = upstream.to_string();
        let host_port = text
            .strip_prefix("nats://")
            .or_else(|| text.strip_prefix("tcp://"))
            .unwrap_or(&text);
        let upstream = host_port.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("'{text}' resolves to nothing"),
            )
        })?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let listener = TcpListener::from_std(listener)?;
        let (state, _) = watch::channel(State {
            mode: Mode::Open,
            generation: 0,
        });
        let open_connections = Arc::new(AtomicUsize::new(0));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            upstream,
            state.subscribe(),
            open_connections.clone(),
        ));
        Ok(Self {
            local,
            upstream,
            state,
            open_connections,
            accept_task,
        })
    }

    /// URL to hand to a NATS client: `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.local)
    }

    /// The proxy's listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Client connections currently open through the proxy (held ones included).
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::SeqCst)
    }

    /// Whether the proxy is currently cut or blackholed.
    pub fn is_cut(&self) -> bool {
        self.state.borrow().mode == Mode::Paused
    }

    /// Partition: closes every open connection at once and holds new ones without forwarding
    /// anything until [`TcpProxy::heal`].
    pub fn cut(&self) {
        self.state.send_modify(|state| {
            state.mode = Mode::Paused;
            state.generation += 1;
        });
    }

    /// Silent partition: open connections stay open but nothing is forwarded in either
    /// direction; new connections are held. [`TcpProxy::heal`] resumes forwarding.
    pub fn blackhole(&self) {
        self.state.send_modify(|state| state.mode = Mode::Paused);
    }

    /// Ends a cut or blackhole: forwarding resumes and held connections are connected upstream.
    pub fn heal(&self) {
        self.state.send_modify(|state| state.mode = Mode::Open);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Dropping the listener stops new connections; the connection tasks see the watch sender
        // gone (once `self.state` drops) and close their sockets.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mut state: watch::Receiver<State>,
    open_connections: Arc<AtomicUsize>,
) {
    loop {
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let _ = client.set_nodelay(true);
                let generation = state.borrow().generation;
                let counter = ConnectionCount::new(open_connections.clone());
                tokio::spawn(serve(client, upstream, state.clone(), generation, counter));
            }
        }
    }
}

/// Decrements the open-connection count when a connection task ends, however it ends.
struct ConnectionCount(Arc<AtomicUsize>);

impl ConnectionCount {
    fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a connection task should do given the proxy state.
enum Verdict {
    Forward,
    Wait,
    Close,
}

fn verdict(state: &State, generation: u64) -> Verdict {
    if state.generation != generation {
        Verdict::Close
    } else if state.mode == Mode::Paused {
        Verdict::Wait
    } else {
        Verdict::Forward
    }
}

/// Waits until forwarding is allowed; `false` if the connection must close instead.
async fn until_open(state: &mut watch::Receiver<State>, generation: u64) -> bool {
    loop {
        match verdict(&state.borrow_and_update(), generation) {
            Verdict::Forward => return true,
            Verdict::Close => return false,
            Verdict::Wait => {}
        }
        if state.changed().await.is_err() {
            return false;
        }
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    mut state: watch::Receiver<State>,
    mut generation: u64,
    _count: ConnectionCount,
) {
    // A connection accepted during a cut is held; it belongs to the generation after the cut.
    generation = generation.max(state.borrow().generation);
    if !until_open(&mut state, generation).await {
        return;
    }
    let server = tokio::select! {
        connected = TcpStream::connect(upstream) => match connected {
            Ok(server) => server,
            Err(_) => return,
        },
        () = closed(state.clone(), generation) => return,
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, state.clone(), generation);
    let down = pump(server_read, client_write, state, generation);
    // When either direction ends (EOF, error, cut), drop both: the sockets close.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Resolves when the connection must close (cut, or the proxy dropped).
async fn closed(mut state: watch::Receiver<State>, generation: u64) {
    loop {
        if matches!(
            verdict(&state.borrow_and_update(), generation),
            Verdict::Close
        ) {
            return;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// Copies `from` → `to`, pausing while the proxy is blackholed and stopping when it is cut.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    generation: u64,
) {
    let mut buffer = vec![0u8; BUFFER];
    loop {
        if !until_open(&mut state, generation).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read just as a blackhole started are held until it heals, not leaked through.
        if !until_open(&mut state, generation).await {
            return;
        }
        tokio::select! {
            written = to.write_all(&buffer[..n]) => {
                if written.is_err() {
                    return;
                }
            }
            () = closed(state.clone(), generation) => return,
        }
    }
}
