//! `cutover serve`: reads the configuration, binds every listener, runs the proxy and the admin
//! API in one process, and stops gracefully.

pub mod admin;
pub mod api;
pub mod checks;
pub mod config;
pub mod controller;
pub mod dashboard;
pub mod flags;
pub mod fleet;
pub mod freeze;
pub mod gates;
pub mod handover;
#[cfg(feature = "kubernetes")]
mod kube_wiring;
pub mod migrations;
pub mod ramps;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cutover_core::rollout::{route_table, AppState};
use cutover_core::{Clock, Timestamp};
use cutover_proxy::{AppProxy, ListenerKind};
use cutover_store::Store;

use crate::controller::{Controller, Deps};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr} ({field}): {source}; is another process using it? choose another address"
    )]
    Bind {
        field: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{field}: {source}")]
    Tls {
        field: String,
        source: cutover_proxy::TlsError,
    },
    #[error("app {app}: {source}")]
    Routes {
        app: String,
        source: cutover_core::ValidationErrors,
    },
    #[error("admin token file {path}: {source}; fix its permissions or set CUTOVER_ADMIN_TOKEN")]
    Token { path: String, source: std::io::Error },
    #[error("admin token file {path} is empty; put a token in it or delete it to have one generated")]
    EmptyToken { path: String },
    #[error(
        "admin token file {path} can be read by {who} (mode {mode:o}); anyone on this host could take \
         over the admin API: run `chmod 600 {path}`"
    )]
    TokenFileOpen {
        path: String,
        who: &'static str,
        mode: u32,
    },
    #[error(
        "the admin token from {source_name} has {len} characters, fewer than the {MIN_TOKEN_LEN} \
         needed to resist guessing; {fix}"
    )]
    ShortToken {
        source_name: String,
        len: usize,
        fix: &'static str,
    },
    #[error(transparent)]
    Store(#[from] cutover_store::StoreError),
    #[error(transparent)]
    Handover(#[from] handover::HandoverError),
    #[error("platform: {0}")]
    Platform(#[from] cutover_platform::PlatformError),
    #[error("app {app}: {source}")]
    Controller {
        app: String,
        source: controller::ControllerError,
    },
    #[error("app {app}: router: {source}")]
    Router {
        app: String,
        source: cutover_router::RouterError,
    },
    /// The app's cluster could not be reached or its settings are unusable.
    #[error("app {app}: {reason}")]
    Kubernetes { app: String, reason: String },
    #[error(
        "state directory {path} is in use by another cutover serve ({holder}); two servers on one \
         state directory would fight over its apps and instances: stop the other one, or give this \
         one another [server] state_dir"
    )]
    StateDirInUse { path: String, holder: String },
    #[error(
        "state directory {path} can be written by every user (mode {mode:o}): anyone on this host \
         could change the instance records whose processes cutover signals; run `chmod 700 {path}`"
    )]
    StateDirOpen { path: String, mode: u32 },
    #[error("state directory {path}: {reason}; check that it is writable")]
    StateDir { path: String, reason: String },
    #[error("store (etcd): {0}")]
    Fleet(String),
    #[error("app {app} has no listen address; set listen in its [[app]] table")]
    NoListener { app: String },
    #[error("app {app}: alert gate: {source}")]
    AlertGate {
        app: String,
        source: cutover_monitoring::GateError,
    },
    #[error(transparent)]
    ApiKeys(#[from] flags::KeysError),
    #[error("flags.prometheus: {source}")]
    FlagsPrometheus {
        source: Box<cutover_monitoring::MetricError>,
    },
    #[error("app {app}: webhooks: {source}")]
    Webhooks {
        app: String,
        source: cutover_notify::NotifyError,
    },
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }
}

/// What `start` needs besides the configuration.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Directory relative paths of the configuration are resolved against.
    pub config_dir: PathBuf,
    pub clock: Arc<dyn Clock>,
}

impl StartOptions {
    pub fn new(config_dir: impl Into<PathBuf>) -> Self {
        StartOptions {
            config_dir: config_dir.into(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// Where the admin token came from; the token itself is never logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Environment,
    File(PathBuf),
    Generated(PathBuf),
}

/// The shortest admin token `serve` accepts. A generated token has 64 hex characters; 16 is a
/// floor against tokens like "secret" that a script could guess, not a recommendation.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin token: `CUTOVER_ADMIN_TOKEN` if given, else the token file, else a new random token
/// written to the token file with mode 0600.
///
/// An existing token file must be private (no group or other permission bits) and every token
/// must have at least [`MIN_TOKEN_LEN`] characters: `serve` refuses to start otherwise, rather
/// than run an admin API that others on the host can read the key to, or guess.
pub fn resolve_admin_token(
    config: &Config,
    config_dir: &Path,
    from_env: Option<String>,
) -> Result<(String, TokenSource), ServeError> {
    let check_len = |token: String, source_name: String, fix: &'static str| {
        let len = token.chars().count();
        if len < MIN_TOKEN_LEN {
            Err(ServeError::ShortToken {
                source_name,
                len,
                fix,
            })
        } else {
            Ok(token)
        }
    };
    if let Some(token) = from_env.filter(|t| !t.trim().is_empty()) {
        let token = check_len(
            token.trim().to_string(),
            "CUTOVER_ADMIN_TOKEN".into(),
            "set a longer one (e.g. `openssl rand -hex 32`), or unset it to use the token file",
        )?;
        return Ok((token, TokenSource::Environment));
    }
    let path = config
        .admin
        .token_file
        .clone()
        .map(|p| if p.is_relative() { config_dir.join(p) } else { p })
        .unwrap_or_else(|| config_dir.join(".cutover").join("admin.token"));
    let err = |source| ServeError::Token {
        path: path.display().to_string(),
        source,
    };
    let display = path.display().to_string();
    match read_secret_file(&path).map_err(err)? {
        SecretFile::Open { mode } => {
            let who = if mode & 0o007 != 0 {
                "every user"
            } else {
                "its group"
            };
            Err(ServeError::TokenFileOpen {
                path: display,
                who,
                mode,
            })
        }
        SecretFile::Text(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(ServeError::EmptyToken { path: display });
            }
            let token = check_len(
                token,
                format!("token file {display}"),
                "put a longer one in it (e.g. `openssl rand -hex 32`), or delete it to have one generated",
            )?;
            Ok((token, TokenSource::File(path)))
        }
        SecretFile::Missing => {
            let token = random_secret();
            create_secret_file(&path, &token).map_err(err)?;
            Ok((token, TokenSource::Generated(path)))
        }
    }
}

/// A file of secrets cutover reads (the admin token, the flag service's API keys).
pub(crate) enum SecretFile {
    Missing,
    /// It exists but its group or others may read it (`mode`): refused, never read.
    Open {
        mode: u32,
    },
    Text(String),
}

pub(crate) fn read_secret_file(path: &Path) -> std::io::Result<SecretFile> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SecretFile::Missing),
        Err(e) => return Err(e),
    };
    let mode = metadata.permissions().mode() & 0o777;
    // A directory or the like: reading it gives the error that says so.
    if metadata.is_file() && mode & 0o077 != 0 {
        return Ok(SecretFile::Open { mode });
    }
    std::fs::read_to_string(path).map(SecretFile::Text)
}

/// A new random secret: 64 hex characters, 256 bits.
pub(crate) fn random_secret() -> String {
    format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>())
}

/// Writes a new secret file, 0600, in a directory created 0700 if missing.
pub(crate) fn create_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    write_private(path, contents)
}

/// Creates `dir` (and its missing parents) as 0700 whatever the umask; an existing directory
/// is left as it is (it may be the user's own).
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}

/// Addresses actually bound (ports may have been 0 in the configuration).
#[derive(Debug, Clone, Serialize)]
pub struct Bound {
    pub admin: SocketAddr,
    pub apps: BTreeMap<String, BoundApp>,
    /// The OFREP listener of the flag service, when `[flags]` is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BoundApp {
    pub listen: SocketAddr,
    pub preview: Option<SocketAddr>,
}

/// A running server. Dropping it does not stop it; call [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    pub bound: Bound,
    pub apps: BTreeMap<String, Arc<AppProxy>>,
    pub controllers: BTreeMap<String, Arc<Controller>>,
    shutdown: CancellationToken,
    /// Cancelled once a successor (`cutover serve --upgrade`) has taken over: this server has
    /// stopped accepting and only drains.
    handed_over: CancellationToken,
    tasks: JoinSet<()>,
    /// Held while serving: released (by the kernel, too, if the process dies) when dropped, or
    /// when a successor takes over.
    _state_lock: StateLock,
}

type StateLock = Arc<std::sync::Mutex<Option<nix::fcntl::Flock<std::fs::File>>>>;

impl Running {
    /// Stops accepting, lets open requests finish (up to each app's drain timeout), and returns
    /// when everything has stopped.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        for app in self.apps.values() {
            app.retire_all();
        }
    }

    /// Waits until `signal` completes or a successor has taken over, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        tokio::select! {
            // Both may be ready at once (a successor took over as SIGTERM came): say the first.
            biased;
            _ = self.handed_over.cancelled() => {
                tracing::info!("taken over by a new cutover serve: finishing open requests, then exiting");
            }
            _ = signal => {
                tracing::info!("shutting down: no new connections, finishing open requests");
            }
        }
        self.shutdown().await;
    }
}

/// A listener on `addr` whose queue of connections waiting to be accepted holds `backlog` (the
/// kernel caps it at `net.core.somaxconn`); `TcpListener::bind` always asks for 128.
pub(crate) fn bind_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do for listeners: a restart may bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves an API of cutover's own (`name`: the admin API, the flag service) over HTTP/1.1 until
/// `shutdown`, then lets open requests finish (event streams are cut after a few seconds).
///
/// Not `axum::serve`: that has no timer, so a client trickling a request head holds a connection
/// (and a task) forever. Here a head must arrive whole within `header_read_timeout`.
pub(crate) async fn serve_api(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    header_read_timeout: std::time::Duration,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    // A keep-alive connection whose next request is already buffered is served again without
    // the task ever waiting, until tokio's budget of 128 operations runs out: on one worker,
    // with many connections, some wait for thousands of others' requests (a p99 of 24 ms at 32
    // connections in bench/flags.py). Yielding once per request serves the connections in turn.
    let router = router.layer(axum::middleware::from_fn(
        |request: axum::extract::Request, next: axum::middleware::Next| async move {
            tokio::task::yield_now().await;
            next.run(request).await
        },
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(5), finished)
        .await
        .is_err()
    {
        tracing::info!(
            listener = name,
            "connections still open after 5 s of shutdown; cut"
        );
        connections.shutdown().await;
    }
}

/// Takes the state directory for this process with an exclusive `flock` on `<dir>/lock`, which
/// holds the pid of the holder for the error message of the next one.
fn lock_state_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, ServeError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("lock");
    let error = |reason: String| ServeError::StateDir {
        path: dir.display().to_string(),
        reason,
    };
    create_private_dir(dir).map_err(|e| error(format!("cannot create it: {e}")))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)
            .map_err(|e| error(format!("cannot read it: {e}")))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o002 != 0 {
            return Err(ServeError::StateDirOpen {
                path: dir.display().to_string(),
                mode,
            });
        }
        if mode & 0o020 != 0 {
            tracing::warn!(path = %dir.display(), mode = format!("{mode:o}"),
                "the state directory is writable by its group: its members can change the instance records cutover acts on");
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| error(format!("cannot open {}: {e}", path.display())))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let _ = lock.set_len(0);
            let _ = lock.rewind();
            let _ = write!(lock, "{}", std::process::id());
            Ok(lock)
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(ServeError::StateDirInUse {
                path: dir.display().to_string(),
                holder: match pid.trim() {
                    "" => "pid unknown".to_string(),
                    pid => format!("pid {pid}"),
                },
            })
        }
        Err((_, errno)) => Err(error(format!("cannot lock {}: {errno}", path.display()))),
    }
}

/// Binds every listener and starts serving. Fails before serving anything if any listener cannot
/// be bound.
pub async fn start(
    config: Config,
    admin_token: String,
    options: StartOptions,
) -> Result<Running, ServeError> {
    if config.store.is_etcd() {
        return fleet::start_controller(config, admin_token, options).await;
    }
    start_inner(config, admin_token, options, None).await
}

/// `cutover proxy`: a proxy of a fleet, routing by the tables the elected controller keeps in
/// etcd (see [`fleet`]).
pub async fn start_proxy(
    config: Config,
    admin_token: String,
    options: StartOptions,
    proxy: fleet::ProxyOptions,
) -> Result<Running, ServeError> {
    fleet::start_proxy(config, admin_token, options, proxy).await
}

/// [`start`] as the successor of the server running on the same state directory: its listening
/// sockets are taken over wherever the configuration still listens at their address, and it is
/// told to stop (see [`handover`]) only once everything that can fail before serving has passed.
/// An error before that leaves the running server as it was.
pub async fn start_upgrade(
    config: Config,
    admin_token: String,
    options: StartOptions,
) -> Result<Running, ServeError> {
    if config.store.is_etcd() {
        return Err(ServeError::Fleet(
            "a fleet's controller is upgraded by restarting it: a standby takes over meanwhile;              `cutover serve --upgrade` is for the single-host SQLite installation"
                .into(),
        ));
    }
    let state_dir = state_dir(&config, &options.config_dir);
    let successor = handover::Successor::connect(&state_dir).await?;
    tracing::info!(
        predecessor = successor.predecessor,
        "took the listening sockets of the running cutover serve"
    );
    start_inner(config, admin_token, options, Some(successor)).await
}

/// The state directory `[server] state_dir` names, relative to the configuration's directory.
pub fn state_dir(config: &Config, config_dir: &Path) -> PathBuf {
    if config.server.state_dir.is_relative() {
        config_dir.join(&config.server.state_dir)
    } else {
        config.server.state_dir.clone()
    }
}

/// The listener named `name` in a hand-over (see [`handover::ListenerSpec`]): the predecessor's
/// socket when it listens at `addr`, else a new one. Errors name the configuration's `field`.
fn listener_for(
    successor: &mut Option<handover::Successor>,
    name: &str,
    field: String,
    addr: SocketAddr,
    backlog: u32,
) -> Result<TcpListener, ServeError> {
    let error = |source| ServeError::Bind {
        field: field.clone(),
        addr,
        source,
    };
    if let Some(inherited) = successor.as_mut().and_then(|s| s.take(name, addr)) {
        // The backlog may have changed with the configuration; listen() again updates it.
        rustix::net::listen(&inherited, i32::try_from(backlog).unwrap_or(i32::MAX))
            .map_err(|e| error(e.into()))?;
        inherited.set_nonblocking(true).map_err(error)?;
        return TcpListener::from_std(inherited).map_err(error);
    }
    bind_listener(addr, backlog).map_err(error)
}

async fn start_inner(
    config: Config,
    admin_token: String,
    options: StartOptions,
    mut successor: Option<handover::Successor>,
) -> Result<Running, ServeError> {
    let shutdown = CancellationToken::new();
    let handed_over = CancellationToken::new();
    let named_tokens = match &config.admin.tokens_file {
        Some(p) if p.is_relative() => flags::load_named_tokens(&options.config_dir.join(p))?,
        Some(p) => flags::load_named_tokens(p)?,
        None => Vec::new(),
    };
    let state_dir = state_dir(&config, &options.config_dir);

    // First everything that can fail without the state: routers, listeners, TLS files, keys.
    // A successor that fails here leaves its predecessor serving as before.
    struct AppListeners {
        public: TcpListener,
        preview: Option<TcpListener>,
        tls: Option<cutover_proxy::TlsAcceptor>,
    }
    let mut routers: BTreeMap<String, Arc<dyn cutover_router::Router>> = BTreeMap::new();
    let mut app_listeners: BTreeMap<String, AppListeners> = BTreeMap::new();
    #[cfg(feature = "kubernetes")]
    let mut clusters = kube_wiring::Clusters::default();
    for (i, app_config) in config.apps.iter().enumerate() {
        #[cfg(feature = "kubernetes")]
        if let Some(router) = clusters.router(app_config, &options.config_dir).await? {
            routers.insert(app_config.name.clone(), router);
            continue;
        }
        let external = app_config
            .router
            .external(&app_config.name)
            .map_err(|source| ServeError::Router {
                app: app_config.name.clone(),
                source,
            })?;
        if let Some(router) = external {
            routers.insert(app_config.name.clone(), router);
            continue;
        }
        let Some(listen) = app_config.listen else {
            return Err(ServeError::NoListener {
                app: app_config.name.clone(),
            });
        };
        let backlog = app_config.listen_backlog;
        let name = &app_config.name;
        // Errors name the configuration's field; the hand-over names listeners by app.
        let mut bind = |field: &str, addr: SocketAddr| {
            let listener_name = format!("app.{name}.{field}");
            listener_for(
                &mut successor,
                &listener_name,
                format!("app[{i}].{field}"),
                addr,
                backlog,
            )
        };
        let public = bind("listen", listen)?;
        let preview = match app_config.preview_listen {
            Some(addr) => Some(bind("preview_listen", addr)?),
            None => None,
        };
        let tls = match &app_config.tls {
            Some(t) => Some(
                cutover_proxy::tls_acceptor(&t.cert_path, &t.key_path).map_err(|source| ServeError::Tls {
                    field: format!("app[{i}].tls"),
                    source,
                })?,
            ),
            None => None,
        };
        app_listeners.insert(app_config.name.clone(), AppListeners { public, preview, tls });
    }
    let admin_listener = listener_for(
        &mut successor,
        "admin.listen",
        "admin.listen".into(),
        config.admin.listen,
        1024,
    )?;
    let admin_addr = admin_listener.local_addr().unwrap_or(config.admin.listen);
    let flags_setup = match &config.flags {
        Some(flags_config) => {
            let keys_path = match &flags_config.api_keys_file {
                Some(p) if p.is_relative() => options.config_dir.join(p),
                Some(p) => p.clone(),
                None => flags::default_keys_path(&options.config_dir),
            };
            let (keys, generated) = flags::load_api_keys(&keys_path)?;
            if generated {
                tracing::info!(file = %keys_path.display(), "generated an API key for OFREP clients");
            }
            let listener = listener_for(
                &mut successor,
                "flags.listen",
                "flags.listen".into(),
                flags_config.listen,
                4096,
            )?;
            let addr = listener.local_addr().unwrap_or(flags_config.listen);
            Some((keys, listener, addr))
        }
        None => None,
    };

    // Now the state: a predecessor stops and lets go of it first.
    let is_successor = successor.is_some();
    if let Some(successor) = successor.take() {
        let predecessor = successor.release_predecessor().await?;
        tracing::info!(
            predecessor,
            "the previous cutover serve stopped accepting and released the state"
        );
    }
    let state_lock: StateLock = Arc::new(std::sync::Mutex::new(None));
    let managed = config.apps.iter().any(|a| a.platform.is_some());
    let fenced: Option<Arc<cutover_store::Fenced<cutover_store::SqliteStore>>> =
        if managed || config.flags.is_some() {
            let lock = lock_state_dir(&state_dir)?;
            *state_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(lock);
            Some(Arc::new(cutover_store::Fenced::new(
                cutover_store::SqliteStore::open(&state_dir.join("state.db"))?,
            )))
        } else {
            None
        };
    let store: Option<Arc<dyn Store>> = fenced.clone().map(|f| f as Arc<dyn Store>);
    let managed_deps = if let (true, Some(store)) = (managed, &store) {
        let store = Arc::clone(store);
        Some(Deps {
            clock: Arc::clone(&options.clock),
            store,
            platform: Arc::new(cutover_platform::LocalProcessPlatform::new(
                state_dir.join("platform"),
            )?),
            tick: std::time::Duration::from_millis(config.server.tick_ms),
            shutdown: shutdown.clone(),
            gates: Arc::new(gates::NoGates),
        })
    } else {
        None
    };
    let mut apps = BTreeMap::new();
    let mut bound_apps = BTreeMap::new();
    let mut listeners = Vec::new();
    // Descriptors a successor may take over, duplicated: the accept loops own the originals.
    let mut offered = Vec::new();
    let mut offer = |name: String, configured: SocketAddr, listener: &TcpListener| {
        use std::os::fd::AsFd;
        let bound = listener.local_addr().unwrap_or(configured);
        match listener.as_fd().try_clone_to_owned() {
            Ok(fd) => offered.push((
                handover::ListenerSpec {
                    name,
                    configured,
                    bound,
                },
                fd,
            )),
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "cannot keep this listener for an upgrade")
            }
        }
    };
    for app_config in &config.apps {
        let Some(AppListeners { public, preview, tls }) = app_listeners.remove(&app_config.name) else {
            continue;
        };
        let initial_routes = match (&managed_deps, app_config.platform) {
            (Some(deps), Some(_)) => {
                let state = deps
                    .store
                    .load(&app_config.name)?
                    .unwrap_or_else(|| AppState::new(&app_config.name));
                route_table(&state)
            }
            _ => app_config.routes.clone(),
        };
        let app = AppProxy::new(app_config.name.clone(), app_config.proxy.clone(), initial_routes).map_err(
            |source| ServeError::Routes {
                app: app_config.name.clone(),
                source,
            },
        )?;
        let name = &app_config.name;
        if let Some(listen) = app_config.listen {
            offer(format!("app.{name}.listen"), listen, &public);
        }
        if let (Some(preview), Some(addr)) = (&preview, app_config.preview_listen) {
            offer(format!("app.{name}.preview_listen"), addr, preview);
        }
        let local = |l: &TcpListener| l.local_addr().ok();
        bound_apps.insert(
            app_config.name.clone(),
            BoundApp {
                listen: local(&public)
                    .or(app_config.listen)
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
                preview: preview.as_ref().and_then(local).or(app_config.preview_listen),
            },
        );
        listeners.push((Arc::clone(&app), public, ListenerKind::Public, tls.clone()));
        if let Some(preview) = preview {
            listeners.push((Arc::clone(&app), preview, ListenerKind::Preview, tls));
        }
        routers.insert(
            app_config.name.clone(),
            Arc::new(cutover_router::BuiltinRouter::new(Arc::clone(&app))),
        );
        apps.insert(app_config.name.clone(), app);
    }
    offer("admin.listen".into(), config.admin.listen, &admin_listener);
    let flags = match (flags_setup, &store) {
        (Some((keys, listener, addr)), Some(store)) => {
            if let Some(flags_config) = &config.flags {
                offer("flags.listen".into(), flags_config.listen, &listener);
            }
            let service = flags::FlagService::load(Arc::clone(store), Arc::clone(&options.clock), keys)?;
            Some((service, listener, addr))
        }
        _ => None,
    };

    // Forwarding is set up before any listener serves a request: every request of an app with
    // [app.flags] gets its variants.
    let mut forwarding = Vec::new();
    if let Some((service, _, _)) = &flags {
        for app_config in &config.apps {
            let (Some(app_flags), Some(app)) = (&app_config.flags, apps.get(&app_config.name)) else {
                continue;
            };
            let source: Arc<dyn cutover_proxy::FlagSource> = Arc::clone(service) as _;
            let f = Arc::new(cutover_proxy::FlagForwarding::new(
                source,
                app_flags.forward.clone(),
                &app_flags.header,
            ));
            app.forward_flags(Arc::clone(&f));
            forwarding.push((app_config.name.clone(), f));
        }
    }

    // The proxies serve before the controllers start: after an upgrade, connections waiting in
    // the inherited sockets' queues are taken at once, by the stored route tables.
    let mut tasks = JoinSet::new();
    for (app, listener, kind, tls) in listeners {
        let drain = app.settings.drain_timeout();
        tasks.spawn(cutover_proxy::serve(
            listener,
            app,
            kind,
            tls,
            shutdown.clone(),
            drain,
        ));
    }

    let mut controllers = BTreeMap::new();
    if let Some(deps) = &managed_deps {
        for app_config in &config.apps {
            let (Some(mut managed), Some(router)) = (app_config.managed(), routers.get(&app_config.name))
            else {
                continue;
            };
            if let Some(migrations) = &mut managed.migrations {
                // Relative paths are the configuration file's, like the token files'.
                migrations.base_dir = Some(options.config_dir.clone());
            }
            let alert_gate = match &app_config.alert_gate {
                Some(c) => Some(cutover_monitoring::AlertGate::new(c.clone()).map_err(|source| {
                    ServeError::AlertGate {
                        app: app_config.name.clone(),
                        source,
                    }
                })?),
                None => None,
            };
            let gates = gates::ConfiguredGates::new(app_config.webhooks.clone())
                .map_err(|source| ServeError::Webhooks {
                    app: app_config.name.clone(),
                    source,
                })?
                .with_alert_gate(alert_gate);
            let platform: Arc<dyn cutover_platform::Platform> = match (app_config.platform, &app_config.hosts)
            {
                (Some(config::PlatformKind::Static), Some(hosts)) => Arc::new(
                    cutover_platform::StaticHostsPlatform::new(&app_config.name, hosts.clone(), &state_dir)?,
                ),
                #[cfg(feature = "kubernetes")]
                (Some(config::PlatformKind::Kubernetes), _) => clusters.platform(app_config)?,
                _ => Arc::clone(&deps.platform),
            };
            let deps = Deps {
                gates: Arc::new(gates),
                platform,
                ..deps.clone()
            };
            let controller = Controller::start(&app_config.name, managed, Arc::clone(router), deps)
                .await
                .map_err(|source| ServeError::Controller {
                    app: app_config.name.clone(),
                    source,
                })?;
            controllers.insert(app_config.name.clone(), controller);
        }
    }

    let header_read_timeout = std::time::Duration::from_millis(config.admin.header_read_timeout_ms);
    let mut flags_addr = None;
    let mut ramp_runner = None;
    let flag_service = match (flags, &store) {
        (Some((service, listener, addr)), Some(store)) => {
            flags_addr = Some(addr);
            let flags_config = config.flags.clone().unwrap_or_default();
            let notifier = if flags_config.webhooks.is_empty() {
                None
            } else {
                Some(
                    cutover_notify::Notifier::from_env(flags_config.webhooks.clone()).map_err(|source| {
                        ServeError::Webhooks {
                            app: "flags".into(),
                            source,
                        }
                    })?,
                )
            };
            let runner = ramps::RampRunner::load(
                Arc::clone(&service),
                Arc::clone(store),
                Arc::clone(&options.clock),
                forwarding,
                flags_config
                    .prometheus
                    .as_ref()
                    .map(|p| p.source().map_err(Box::new))
                    .transpose()
                    .map_err(|source| ServeError::FlagsPrometheus { source })?,
                notifier,
                flags_config.stale_after_days,
            )
            .await?;
            tasks.spawn(Arc::clone(&runner).run(
                std::time::Duration::from_millis(config.server.tick_ms),
                shutdown.clone(),
            ));
            ramp_runner = Some(runner);
            tasks.spawn(serve_api(
                "flags",
                listener,
                flags::ofrep_router(Arc::clone(&service)),
                header_read_timeout,
                shutdown.clone(),
            ));
            Some(service)
        }
        _ => None,
    };
    let live = dashboard::Live::new(Arc::clone(&options.clock), shutdown.clone());
    tasks.spawn(dashboard::sample(
        Arc::clone(&live),
        controllers.clone(),
        Arc::clone(&options.clock),
    ));
    let state = Arc::new(admin::AdminState {
        apps: apps.clone(),
        controllers: controllers.clone(),
        token: admin_token,
        named_tokens,
        flags: flag_service,
        ramps: ramp_runner,
        live,
        loopback_only: admin_addr.ip().is_loopback(),
        fleet: None,
    });
    tasks.spawn(serve_api(
        "admin",
        admin_listener,
        admin::router(state),
        header_read_timeout,
        shutdown.clone(),
    ));

    // Last, the door for the next upgrade.
    match handover::bind(&state_dir, is_successor) {
        Ok(socket) => {
            let release: handover::Release = {
                let (shutdown, handed_over, state_lock) =
                    (shutdown.clone(), handed_over.clone(), Arc::clone(&state_lock));
                let fenced = fenced.clone();
                Box::new(move |successor| {
                    let (shutdown, handed_over, state_lock) =
                        (shutdown.clone(), handed_over.clone(), Arc::clone(&state_lock));
                    let fenced = fenced.clone();
                    Box::pin(async move {
                        // No more accepts, no more controller steps, then no more writes: after
                        // fence() returns, nothing this process does reaches the state.
                        shutdown.cancel();
                        if let Some(fenced) = fenced {
                            let _ = tokio::task::spawn_blocking(move || fenced.fence(successor)).await;
                        }
                        state_lock
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .take();
                        handed_over.cancel();
                    })
                })
            };
            tasks.spawn(handover::serve(
                socket,
                handover::Offered { listeners: offered },
                release,
                shutdown.clone(),
            ));
        }
        Err(e) => tracing::warn!(dir = %state_dir.display(), error = %e,
            "cannot open the hand-over socket: `cutover serve --upgrade` and reloads will not work"),
    }
    Ok(Running {
        bound: Bound {
            admin: admin_addr,
            apps: bound_apps,
            flags: flags_addr,
        },
        apps,
        controllers,
        shutdown,
        handed_over,
        tasks,
        _state_lock: state_lock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config_with_token_file(path: &Path) -> Config {
        let text = format!(
            "[admin]\ntoken_file = {:?}\n\n[[app]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n",
            path.display().to_string()
        );
        Config::parse(&text, "test.toml").unwrap()
    }

    fn token_file(dir: &Path, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join("admin.token");
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_token_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, who) in [(0o644, "every user"), (0o640, "its group"), (0o604, "every user")] {
            let path = token_file(dir.path(), "0123456789abcdef0123456789abcdef\n", mode);
            let config = config_with_token_file(&path);
            let error = resolve_admin_token(&config, dir.path(), None)
                .unwrap_err()
                .to_string();
            assert!(error.contains(who), "{mode:o}: {error}");
            assert!(
                error.contains(&format!("chmod 600 {}", path.display())),
                "{error}"
            );
        }
        let path = token_file(dir.path(), "0123456789abcdef0123456789abcdef\n", 0o600);
        let (token, source) = resolve_admin_token(&config_with_token_file(&path), dir.path(), None).unwrap();
        assert_eq!(token, "0123456789abcdef0123456789abcdef");
        assert_eq!(source, TokenSource::File(path));
    }

    #[test]
    fn a_short_token_is_refused_wherever_it_comes_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_file(dir.path(), "secret\n", 0o600);
        let config = config_with_token_file(&path);
        let error = resolve_admin_token(&config, dir.path(), None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("6 characters") && error.contains("token file"),
            "{error}"
        );
        let error = resolve_admin_token(&config, dir.path(), Some("hunter2".into()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("CUTOVER_ADMIN_TOKEN"), "{error}");
        assert!(
            !error.contains("hunter2"),
            "the token itself is never shown: {error}"
        );
    }

    #[test]
    fn a_state_directory_every_user_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = lock_state_dir(&state).unwrap_err().to_string();
        assert!(
            error.contains(&format!("chmod 700 {}", state.display())),
            "{error}"
        );
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(lock_state_dir(&state).is_ok());
    }

    #[test]
    fn a_generated_token_is_long_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("admin.token");
        let config = config_with_token_file(&path);
        let (token, source) = resolve_admin_token(&config, dir.path(), None).unwrap();
        assert!(token.len() >= MIN_TOKEN_LEN);
        assert_eq!(source, TokenSource::Generated(path.clone()));
        // and it is accepted on the next start
        assert_eq!(resolve_admin_token(&config, dir.path(), None).unwrap().0, token);
    }
}
