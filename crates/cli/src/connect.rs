//! How the CLI finds its server: the admin API's address and the admin token.
//!
//! Each comes from the first of: a flag, the environment, the configuration file the server runs
//! from (`--config`, `CUTOVER_CONFIG`, or `./cutover.toml` when it exists), the built-in default.
//! Every source tried is remembered, so that an error can say where the CLI looked and how to
//! point it elsewhere: a user whose server listens on another port must not be left with a bare
//! "connection refused" on the default one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9180";

/// Name of the file, under the server's state directory, in which `cutover serve` records the
/// admin API's bound address: the way to a server whose `[admin] listen` asks for port 0.
pub const ADMIN_URL_FILE: &str = "admin.url";

/// The flags of every command that talks to a running server.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// URL of the admin API of `cutover serve` [env: CUTOVER_ADMIN]. Default: `[admin] listen`
    /// of the configuration file, else http://127.0.0.1:9180.
    #[arg(long, value_name = "URL", global = true)]
    pub admin: Option<String>,
    /// File holding the admin token, for commands that change something [default: the variable
    /// CUTOVER_ADMIN_TOKEN, else `[admin] token_file` of the configuration file, else
    /// .cutover/admin.token beside it].
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The server's configuration file, read for the admin address and token file
    /// [env: CUTOVER_CONFIG] [default: ./cutover.toml when it exists].
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

impl ServerArgs {
    /// This command's flags, each falling back to the one given before the command's name
    /// (`cutover --admin URL status web`, as scripts written for older versions do).
    pub fn or(self, before: &ServerArgs) -> ServerArgs {
        ServerArgs {
            admin: self.admin.or_else(|| before.admin.clone()),
            token_file: self.token_file.or_else(|| before.token_file.clone()),
            config: self.config.or_else(|| before.config.clone()),
        }
    }
}

/// Where the token comes from, decided before it is needed: reads never need one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFrom {
    Environment,
    File {
        path: PathBuf,
        /// How the file was chosen, for errors ("--token-file", "[admin] token_file of ./cutover.toml").
        chosen_by: String,
    },
}

/// No admin token to send: not authorised, like a token the server refused (exit 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoToken(pub String);

/// The server the CLI talks to and how it was found.
#[derive(Debug, Clone)]
pub struct Connection {
    pub admin: String,
    /// How `admin` was chosen, e.g. "from [admin] listen in ./cutover.toml".
    pub admin_from: String,
    pub token: TokenFrom,
    /// Every source that was consulted and what it gave, for "cannot reach" errors.
    pub tried: Vec<String>,
}

/// What the environment holds, passed in so that discovery is a pure function to test.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub admin: Option<String>,
    pub config: Option<String>,
    pub token: Option<String>,
    pub current_dir: PathBuf,
}

impl Environment {
    pub fn read() -> Environment {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Environment {
            admin: var("CUTOVER_ADMIN"),
            config: var("CUTOVER_CONFIG"),
            token: var("CUTOVER_ADMIN_TOKEN"),
            current_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }
}

/// The parts of `cutover.toml` the CLI needs. The rest is the server's business: the CLI may run
/// where the server's variables and files are missing, so the file is not validated as a whole.
#[derive(Debug, Default)]
struct AdminSection {
    listen: Option<String>,
    token_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

fn read_admin_section(path: &Path) -> Result<AdminSection> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the configuration file {} (named by --config or CUTOVER_CONFIG)",
            path.display()
        )
    })?;
    let doc: toml::Table = text.parse().with_context(|| {
        format!(
            "{} is not valid TOML; `cutover config check {}` shows every problem",
            path.display(),
            path.display()
        )
    })?;
    let string = |table: &str, key: &str| -> Result<Option<String>> {
        match doc.get(table).and_then(|t| t.get(key)) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => bail!(
                "{}: {table}.{key} must be a string, not {}",
                path.display(),
                other.type_str()
            ),
        }
    };
    Ok(AdminSection {
        listen: string("admin", "listen")?,
        token_file: string("admin", "token_file")?.map(PathBuf::from),
        state_dir: string("server", "state_dir")?.map(PathBuf::from),
    })
}

/// `host:port` as the server writes it in `[admin] listen`, as a URL a client can connect to: an
/// unspecified address (all interfaces) is reached on loopback.
fn listen_to_url(listen: &str) -> Result<String, String> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|_| format!("{listen:?} is not an address such as 127.0.0.1:9180"))?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    Ok(format!("http://{}", std::net::SocketAddr::new(ip, addr.port())))
}

/// A relative path in the configuration is the configuration file's directory's, as the server
/// reads it.
fn beside(config_dir: &Path, path: &Path) -> PathBuf {
    if path.is_relative() {
        config_dir.join(path)
    } else {
        path.to_path_buf()
    }
}

/// The nearest `cutover.toml` in `dir` or a directory above it: run from `releases/v2` of a
/// project, the CLI finds the project's server, not the default address (another project's).
pub fn find_upwards(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .map(|d| d.join("cutover.toml"))
        .find(|p| p.is_file())
}

/// `127.0.0.1:9180` as `http://127.0.0.1:9180`: the scheme is what people leave out.
fn with_scheme(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// Finds the server from the flags, the environment and the configuration file.
pub fn discover(args: &ServerArgs, env: &Environment) -> Result<Connection> {
    let mut tried = Vec::new();
    let config = match (&args.config, &env.config) {
        (Some(path), _) => Some((path.clone(), "--config".to_string())),
        (None, Some(path)) => Some((PathBuf::from(path), "CUTOVER_CONFIG".to_string())),
        (None, None) => match find_upwards(&env.current_dir) {
            Some(found) => {
                let name = if found.parent() == Some(env.current_dir.as_path()) {
                    "./cutover.toml".to_string()
                } else {
                    found.display().to_string()
                };
                Some((found, name))
            }
            None => {
                tried.push(format!(
                    "no cutover.toml in {} or a directory above it",
                    env.current_dir.display()
                ));
                None
            }
        },
    };
    let (section, config_dir) = match &config {
        Some((path, _)) => {
            let path = beside(&env.current_dir, path);
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (read_admin_section(&path)?, Some((path, dir)))
        }
        None => (AdminSection::default(), None),
    };
    let config_name = config.as_ref().map(|(_, by)| by.clone()).unwrap_or_default();

    let (admin, admin_from) = if let Some(url) = &args.admin {
        (url.clone(), "--admin".to_string())
    } else if let Some(url) = &env.admin {
        (url.clone(), "CUTOVER_ADMIN".to_string())
    } else if let (Some(listen), Some((path, dir))) = (&section.listen, &config_dir) {
        let url =
            listen_to_url(listen).map_err(|e| anyhow::anyhow!("{}: admin.listen: {e}", path.display()))?;
        if url.ends_with(":0") {
            // Port 0: the server picked one, and recorded it in its state directory.
            let state_dir = beside(dir, section.state_dir.as_deref().unwrap_or(Path::new(".cutover")));
            let file = state_dir.join(ADMIN_URL_FILE);
            match std::fs::read_to_string(&file) {
                Ok(text) if !text.trim().is_empty() => (
                    text.trim().to_string(),
                    format!("{} (admin.listen in {config_name} asks for any port)", file.display()),
                ),
                _ => bail!(
                    "{}: admin.listen {listen} lets the server pick its port, and {} does not say which: is `cutover serve --config {}` running? Or pass --admin URL",
                    path.display(),
                    file.display(),
                    path.display()
                ),
            }
        } else {
            (url, format!("[admin] listen in {config_name}"))
        }
    } else {
        (DEFAULT_ADMIN.to_string(), "the default".to_string())
    };
    tried.push(format!("admin API {admin} from {admin_from}"));

    let token = if let Some(path) = &args.token_file {
        TokenFrom::File {
            path: path.clone(),
            chosen_by: "--token-file".into(),
        }
    } else if env.token.is_some() {
        TokenFrom::Environment
    } else if let Some((_, dir)) = &config_dir {
        match &section.token_file {
            Some(p) => TokenFrom::File {
                path: beside(dir, p),
                chosen_by: format!("[admin] token_file in {config_name}"),
            },
            None => TokenFrom::File {
                path: dir.join(".cutover").join("admin.token"),
                chosen_by: format!("the default beside {config_name}"),
            },
        }
    } else {
        TokenFrom::File {
            path: PathBuf::from(".cutover/admin.token"),
            chosen_by: "the default (no cutover.toml found)".into(),
        }
    };
    Ok(Connection {
        admin: with_scheme(&admin),
        admin_from,
        token,
        tried,
    })
}

impl Connection {
    /// What to tell a user whose server could not be reached.
    pub fn how_to_point_elsewhere(&self) -> String {
        format!(
            "looked at: {}. Is `cutover serve` running? Point the CLI at it with --admin URL, CUTOVER_ADMIN=URL, \
             or --config path/to/cutover.toml (run from the directory of cutover.toml, it is found by itself)",
            self.tried.join("; ")
        )
    }

    /// The admin token, read now: only commands that change something need it.
    pub fn token(&self, env_token: Option<String>) -> Result<String, NoToken> {
        match &self.token {
            TokenFrom::Environment => match env_token {
                Some(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
                _ => Err(NoToken(
                    "CUTOVER_ADMIN_TOKEN is empty; set it to the admin token or unset it to use the token file".into(),
                )),
            },
            TokenFrom::File { path, chosen_by } => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    NoToken(format!(
                        "cannot read the admin token from {} ({chosen_by}): {e}; set CUTOVER_ADMIN_TOKEN, pass --token-file FILE, \
                         or run where the server's cutover.toml is (or pass --config FILE)",
                        path.display()
                    ))
                })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(NoToken(format!(
                        "the admin token file {} ({chosen_by}) is empty",
                        path.display()
                    )));
                }
                Ok(token.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn env_in(dir: &Path) -> Environment {
        Environment {
            current_dir: dir.to_path_buf(),
            ..Environment::default()
        }
    }

    #[test]
    fn without_anything_the_default_is_used_and_said() {
        let dir = tempfile::tempdir().unwrap();
        let c = discover(&ServerArgs::default(), &env_in(dir.path())).unwrap();
        assert_eq!(c.admin, DEFAULT_ADMIN);
        let hint = c.how_to_point_elsewhere();
        assert!(hint.contains("no cutover.toml in"), "{hint}");
        assert!(hint.contains("or a directory above it"), "{hint}");
        assert!(
            hint.contains("--admin URL") && hint.contains("CUTOVER_ADMIN"),
            "{hint}"
        );
    }

    #[test]
    fn the_config_file_here_gives_the_address_and_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cutover.toml"),
            "[admin]\nlisten = \"0.0.0.0:9300\"\ntoken_file = \"secrets/token\"\n",
        )
        .unwrap();
        let c = discover(&ServerArgs::default(), &env_in(dir.path())).unwrap();
        assert_eq!(c.admin, "http://127.0.0.1:9300");
        assert!(c.admin_from.contains("./cutover.toml"), "{}", c.admin_from);
        assert_eq!(
            c.token,
            TokenFrom::File {
                path: dir.path().join("secrets/token"),
                chosen_by: "[admin] token_file in ./cutover.toml".into()
            }
        );
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cutover.toml"),
            "[admin]\nlisten = \"127.0.0.1:9300\"\n",
        )
        .unwrap();
        let mut env = env_in(dir.path());
        env.admin = Some("http://127.0.0.1:9400".into());
        env.token = Some("from-env".into());
        let c = discover(&ServerArgs::default(), &env).unwrap();
        assert_eq!(c.admin, "http://127.0.0.1:9400");
        assert_eq!(c.token, TokenFrom::Environment);
        let args = ServerArgs {
            admin: Some("http://127.0.0.1:9500/".into()),
            token_file: Some(PathBuf::from("/tmp/t")),
            config: None,
        };
        let c = discover(&args, &env).unwrap();
        assert_eq!(c.admin, "http://127.0.0.1:9500");
        assert!(matches!(c.token, TokenFrom::File { .. }));
    }

    #[test]
    fn the_nearest_config_above_is_found_and_a_bare_address_gets_its_scheme() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cutover.toml"),
            "[admin]\nlisten = \"127.0.0.1:9301\"\n",
        )
        .unwrap();
        let deep = dir.path().join("releases/v2/src");
        std::fs::create_dir_all(&deep).unwrap();
        let c = discover(&ServerArgs::default(), &env_in(&deep)).unwrap();
        assert_eq!(c.admin, "http://127.0.0.1:9301");
        let args = ServerArgs {
            admin: Some("127.0.0.1:9400/".into()),
            ..ServerArgs::default()
        };
        assert_eq!(
            discover(&args, &env_in(&deep)).unwrap().admin,
            "http://127.0.0.1:9400"
        );
    }

    #[test]
    fn port_zero_is_read_from_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cutover.toml"),
            "[server]\nstate_dir = \"state\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        let err = discover(&ServerArgs::default(), &env_in(dir.path())).unwrap_err();
        assert!(
            format!("{err:#}").contains("is `cutover serve --config"),
            "{err:#}"
        );
        std::fs::create_dir(dir.path().join("state")).unwrap();
        std::fs::write(dir.path().join("state/admin.url"), "http://127.0.0.1:41234\n").unwrap();
        let c = discover(&ServerArgs::default(), &env_in(dir.path())).unwrap();
        assert_eq!(c.admin, "http://127.0.0.1:41234");
    }

    #[test]
    fn a_named_config_that_is_missing_or_broken_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let args = ServerArgs {
            config: Some(dir.path().join("nope.toml")),
            ..ServerArgs::default()
        };
        let err = format!("{:#}", discover(&args, &env_in(dir.path())).unwrap_err());
        assert!(err.contains("nope.toml"), "{err}");
        std::fs::write(dir.path().join("bad.toml"), "[admin\n").unwrap();
        let args = ServerArgs {
            config: Some(dir.path().join("bad.toml")),
            ..ServerArgs::default()
        };
        let err = format!("{:#}", discover(&args, &env_in(dir.path())).unwrap_err());
        assert!(err.contains("bad.toml is not valid TOML"), "{err}");
        std::fs::write(dir.path().join("odd.toml"), "[admin]\nlisten = 9180\n").unwrap();
        let args = ServerArgs {
            config: Some(dir.path().join("odd.toml")),
            ..ServerArgs::default()
        };
        let err = format!("{:#}", discover(&args, &env_in(dir.path())).unwrap_err());
        assert!(err.contains("admin.listen must be a string"), "{err}");
    }

    #[test]
    fn a_missing_token_file_says_what_was_tried() {
        let c = Connection {
            admin: DEFAULT_ADMIN.into(),
            admin_from: "the default".into(),
            token: TokenFrom::File {
                path: PathBuf::from("/nonexistent/token"),
                chosen_by: "--token-file".into(),
            },
            tried: vec![],
        };
        let err = format!("{:#}", c.token(None).unwrap_err());
        assert!(err.contains("/nonexistent/token (--token-file)"), "{err}");
        assert!(err.contains("CUTOVER_ADMIN_TOKEN"), "{err}");
    }
}
