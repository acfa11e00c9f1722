//! Connections by address between processes that did not start one another, like
//! Python's `multiprocessing.connection`: a [`Listener`] accepts, a [`Client`] connects,
//! both over TCP or a Unix socket, and each side proves to the other that it holds the
//! same [`AuthKey`] before a single frame is read. What comes out is the crate's typed
//! [`Connection`](crate::Connection).

mod address;
mod auth;
mod client;
mod listener;

pub use address::Address;
pub use auth::AuthKey;
pub use client::Client;
pub use listener::{Listener, ListenerBuilder};
