//! Where a [`Listener`](crate::Listener) listens and a [`Client`](crate::Client)
//! connects.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The address of a [`Listener`](crate::Listener): TCP or a Unix socket path.
///
/// Like Python's `multiprocessing.connection` addresses: an `(host, port)` pair is TCP,
/// a path is a Unix socket. Parses from and prints as text, so it can be handed to
/// another process on its command line or in its environment: `127.0.0.1:5000`,
/// `[::1]:5000`, `node7:5000` (a host name, resolved when used), `unix:/run/app.sock`
/// or just `/run/app.sock`.
///
/// ```
/// use multiprocess::Address;
///
/// let tcp: Address = "127.0.0.1:5000".parse()?;
/// assert!(matches!(tcp, Address::Tcp(_)));
/// let unix: Address = "/tmp/app.sock".parse()?;
/// assert_eq!(unix.to_string(), "unix:/tmp/app.sock");
/// assert_eq!(unix.to_string().parse::<Address>()?, unix);
/// let host: Address = "node7:5000".parse()?;
/// assert_eq!(host, Address::Host("node7:5000".into()));
/// assert!("no port".parse::<Address>().is_err());
/// # Ok::<(), multiprocess::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Address {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A host name and port, `name:port`, resolved when it is used.
    Host(String),
    /// A Unix socket at this path.
    Unix(PathBuf),
}

impl Address {
    /// Loopback, port chosen by the system: where a listener binds unless told otherwise.
    ///
    /// ```
    /// assert_eq!(multiprocess::Address::loopback().to_string(), "127.0.0.1:0");
    /// ```
    pub fn loopback() -> Address {
        Address::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::Host(host) => f.write_str(host),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Address, Error> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if s.contains('/') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Address::Tcp(addr));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Host(s.to_string()))
            }
            _ => Err(Error::InvalidArgument(format!(
                "{s:?} is not an address: use host:port, or a Unix socket path"
            ))),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Address {
        Address::Tcp(addr)
    }
}

impl From<(IpAddr, u16)> for Address {
    fn from(addr: (IpAddr, u16)) -> Address {
        Address::Tcp(addr.into())
    }
}

impl From<(Ipv4Addr, u16)> for Address {
    fn from(addr: (Ipv4Addr, u16)) -> Address {
        Address::Tcp(addr.into())
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Address {
        Address::Unix(path)
    }
}

impl From<&Path> for Address {
    fn from(path: &Path) -> Address {
        Address::Unix(path.to_path_buf())
    }
}
