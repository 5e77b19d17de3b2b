//! A WebSocket's token over the connection's life (`docs/protocol.md`, "Tokens"): what
//! it allows, the `auth_expiring` warning `auth_expiry_warning_secs` before it expires,
//! the close with [`EXPIRED`] (4001) when it does, and `{"t":"auth"}` refreshes.
//!
//! The session waits on one timer for it, [`TokenState::due`], and only when tokens are
//! on: a connection wakes for its token twice at most per token (the warning, the
//! expiry). A refresh whose token is already inside the warning window is not warned
//! again, and `{"t":"auth"}` frames share the connection's `publish_rate` bucket, so
//! neither the broker nor a client can drive a refresh loop.

use std::time::Duration;

use rewind_protocol::frame::ServerFrame;
use rewind_protocol::ErrorCode;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::auth::Grant;

/// The close code of a connection whose token expired without a refresh.
pub(crate) const EXPIRED: u16 = 4001;

/// The connection's grant and its deadlines.
pub(super) struct TokenState {
    grant: Grant,
    /// When the token stops being taken (`exp` plus the leeway); `None` without tokens.
    expires: Option<Instant>,
    /// `auth_expiring` was sent for this token.
    warned: bool,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl TokenState {
    pub(super) fn new(grant: Grant) -> TokenState {
        let expires = grant.remaining().map(|left| Instant::now() + left);
        TokenState {
            grant,
            expires,
            warned: false,
        }
    }

    /// What the token allows.
    pub(super) fn grant(&self) -> &Grant {
        &self.grant
    }

    /// When the session should next call [`TokenState::on_due`]: the warning, then the
    /// expiry; `None` without tokens.
    pub(super) fn due(&self) -> Option<Instant> {
        let expires = self.expires?;
        if self.warned {
            return Some(expires);
        }
        Some(
            expires
                .checked_sub(self.grant.warning())
                .unwrap_or_else(Instant::now),
        )
    }

    /// At [`TokenState::due`] (or any time before: then nothing): the `auth_expiring`
    /// frame to send, or the close the connection ends with once the token has expired.
    pub(super) fn on_due(&mut self) -> Result<Option<ServerFrame>, (CloseCode, String)> {
        let (Some(expires), Some(due)) = (self.expires, self.due()) else {
            return Ok(None);
        };
        let now = Instant::now();
        if now < due {
            return Ok(None);
        }
        if now >= expires {
            return Err((
                CloseCode::from(EXPIRED),
                "token expired; reconnect with a new one".to_owned(),
            ));
        }
        if self.warned {
            return Ok(None);
        }
        self.warned = true;
        Ok(Some(ServerFrame::AuthExpiring {
            in_ms: millis(expires - now),
        }))
    }

    /// Takes `token` in place of the connection's: `auth_ok` with its lifetime, or the
    /// `error` (`unauthorized`) to answer, the old token staying in force.
    pub(super) fn refresh(&mut self, token: &str) -> Result<ServerFrame, ServerFrame> {
        match self.grant.refreshed(token) {
            Ok(grant) => {
                let left = grant.remaining().unwrap_or_default();
                let mut next = TokenState::new(grant);
                // A token already inside the warning window gets no `auth_expiring`:
                // its `auth_ok` says how long it has, and a warning now would ask at once
                // for another refresh, which a client refreshing with such tokens would
                // answer, and so on without end (the refresh loop).
                next.warned = left <= next.grant.warning();
                *self = next;
                Ok(ServerFrame::AuthOk {
                    in_ms: millis(left),
                })
            }
            Err(e) => Err(ServerFrame::error(
                ErrorCode::Unauthorized,
                e.to_string(),
                None,
                None,
            )),
        }
    }

    /// Those of the `open` namespaces the token no longer allows to subscribe to.
    pub(super) fn revoked<'a>(&self, open: impl Iterator<Item = &'a String>) -> Vec<String> {
        open.filter(|ns| self.grant.may_subscribe(ns).is_err())
            .cloned()
            .collect()
    }
}
