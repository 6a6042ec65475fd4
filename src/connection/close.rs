//! Why a connection ends ([`Close`]), and what each reason means on the
//! wire: the reason code a v5 client is told, and whether the will goes.

use crate::codec::ReasonCode;
use crate::session::{Flags, Session, signal};

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// The client sent DISCONNECT; `will` says whether to publish the will
    /// anyway (v5 reason 0x04).
    ClientDisconnect {
        /// Publish the will despite the DISCONNECT.
        will: bool,
    },
    /// The socket closed or failed without DISCONNECT.
    ConnectionLost,
    /// The client broke the protocol; v5 clients are told why.
    Protocol(ReasonCode, &'static str),
    /// No packet within 1.5 times the keep alive.
    KeepAliveTimeout,
    /// Another connection took over the session.
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
    /// An operator disconnected the client (admin API).
    Kicked,
    /// A write did not complete within `limits.write_timeout_ms`: the
    /// client stopped reading.
    WriteTimeout,
}

impl Close {
    /// The reason code a v5 DISCONNECT from the server carries, if any.
    pub(super) fn server_reason(self) -> Option<ReasonCode> {
        match self {
            Close::Protocol(code, _) => Some(code),
            Close::KeepAliveTimeout => Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
            Close::TakenOver => Some(ReasonCode::SESSION_TAKEN_OVER),
            Close::Shutdown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
            Close::Kicked => Some(ReasonCode::ADMINISTRATIVE_ACTION),
            Close::WriteTimeout => Some(ReasonCode::QUOTA_EXCEEDED),
            Close::ClientDisconnect { .. } | Close::ConnectionLost => None,
        }
    }

    /// Whether the will is published [MQTT-3.1.2-8], [MQTT-3.14.4-3].
    pub(super) fn publishes_will(self) -> bool {
        !matches!(self, Close::ClientDisconnect { will: false })
    }
}

impl From<std::io::Error> for Close {
    fn from(_: std::io::Error) -> Close {
        Close::ConnectionLost
    }
}

/// Why the connection was told to leave, if `bits` tell it to.
pub(super) fn leave_reason(bits: u8, session: &Session) -> Option<Close> {
    if bits & signal::KICK != 0 {
        Some(if session.lock().flags.contains(Flags::KICKED_BY_ADMIN) { Close::Kicked } else { Close::TakenOver })
    } else if bits & signal::SHUTDOWN != 0 {
        Some(Close::Shutdown)
    } else {
        None
    }
}
