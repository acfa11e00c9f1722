//! The name this process was given as a function child: set before its function runs,
//! read by `current_process` and by the panic hook.

use std::sync::Mutex;

// Set in a function child before its function runs; a fork-server child overwrites the
// name it inherited from the server.
static OWN_NAME: Mutex<Option<String>> = Mutex::new(None);

pub(crate) fn set_own_name(name: &str) {
    *OWN_NAME.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.to_string());
}

/// The name this process was given as a function child, if it is one.
pub(crate) fn own_name() -> Option<String> {
    OWN_NAME.lock().unwrap_or_else(|p| p.into_inner()).clone()
}
