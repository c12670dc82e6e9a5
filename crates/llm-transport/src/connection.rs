//! A connection's place under `max_connections`, and the answer for connections past it.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::{Dialect, Error};
use crate::metrics::ConnectionGuard;

/// A connection's place under the connection limit, and its count in the open-connection
/// gauge. hyper lets go of a connection once it is upgraded to a WebSocket; the session then
/// takes the place over, so that WebSockets count against the limit for as long as they live.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSlot(Arc<Mutex<Option<(OwnedSemaphorePermit, ConnectionGuard)>>>);

impl ConnectionSlot {
    pub(crate) fn new(permit: OwnedSemaphorePermit, open: ConnectionGuard) -> Self {
        Self(Arc::new(Mutex::new(Some((permit, open)))))
    }

    /// Takes the place over; the connection no longer releases it when it ends.
    pub(crate) fn take(&self) -> Option<impl Send + 'static> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Answers a connection over the limit with 503 in OpenAI's shape and closes it, without a
/// task and without waiting: a fresh socket's send buffer takes the few hundred bytes at once,
/// and a peer that cannot take them gets the bare close. A flood of connections past the limit
/// therefore holds no task and no descriptor beyond this call.
pub(crate) fn refuse(stream: TcpStream, limit: usize) {
    let body = Error::TooManyConnections { limit }.body(Dialect::OpenAi);
    let mut response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    match stream.try_write(&response) {
        Ok(written) if written == response.len() => {}
        Ok(_) | Err(_) => tracing::debug!("a refused connection did not take its 503"),
    }
    // Send FIN after the answer rather than leave the close to the drop alone.
    if let Ok(stream) = stream.into_std() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}
