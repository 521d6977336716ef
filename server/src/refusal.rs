//! A refused request, on its way to becoming a protocol `error` message.

use protocol::{ErrorCode, ErrorMessage, ServerMessage};

use crate::outbox::Frame;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    /// The `to` of the refused `signal`, when there was one.
    pub to: Option<String>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), to: None }
    }

    /// Attaches the `to` of the refused `signal` (the protocol asks for it on every such error).
    pub fn about_signal_to(mut self, to: Option<&str>) -> Self {
        self.to = to.map(str::to_owned);
        self
    }

    pub fn frame(&self) -> Frame {
        ServerMessage::Error(ErrorMessage {
            code: self.code,
            message: self.message.clone(),
            to: self.to.clone(),
        })
        .to_json()
        .into()
    }
}
