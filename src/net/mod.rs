//! Connections by address between processes that did not start one another, like
//! Python's `multiprocessing.connection`: a [`Listener`] accepts, a [`Client`] connects,
//! both over TCP or a Unix socket, and each side proves to the other that it holds the
//! same [`AuthKey`] before a single frame is read. What comes out is the crate's typed
//! [`Connection`](crate::Connection). With the `tls` feature, a connection can run
//! inside TLS (rustls), the key handshake with it.

mod address;
mod auth;
mod client;
mod listener;
#[cfg(feature = "tls")]
mod tls;

pub use address::Address;
pub use auth::AuthKey;
pub use client::Client;
pub use listener::{Listener, ListenerBuilder};

use std::os::fd::OwnedFd;

use crate::error::Result;
use crate::ipc::Connection;

/// The descriptor of an authenticated connection.
#[derive(Debug)]
enum Authenticated {
    /// The socket itself.
    Direct(OwnedFd),
    /// One end of a socket pair; a relay task copies the other end to and from TLS.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Relayed(OwnedFd),
}

impl Authenticated {
    fn into_connection<S, R>(self) -> Result<Connection<S, R>> {
        match self {
            Authenticated::Direct(fd) => Connection::from_fd(fd),
            Authenticated::Relayed(fd) => Ok(Connection::from_relayed_fd(fd)),
        }
    }
}
