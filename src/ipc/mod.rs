//! The wire between processes: framed, typed messages over Unix stream sockets.

mod codec;
mod connection;
mod socket;
pub(crate) mod wire;

pub use codec::FrameCodec;
pub use connection::{Connection, Receiver, Sender, channel, pipe};
pub(crate) use socket::{ReadHalf, SocketFd, WriteHalf};
pub use wire::{DEFAULT_MAX_FRAME_LEN, PassFd};
