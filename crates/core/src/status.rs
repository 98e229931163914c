//! What a response status says about a release, and whose fault a failed request was.
//!
//! The judge compares the canary with the baseline on every failure a user sees: 5xx answers, and
//! 4xx answers beyond the baseline's own background (a release that logs everyone out answers
//! 401s, not 500s). The proxy counts the common 4xx and 5xx codes one by one, so a decision can
//! name them ("401: canary 38 % against baseline 0.2 %") and an app can tell the judge to ignore
//! some.
//!
//! A request that failed because of the *client* (a malformed body, an upload the client gave up
//! on or sent too slowly, a body over the limit) is a [`ClientFault`]: counted apart, logged, and
//! never part of a slot's requests or errors, so no client can make a release look bad by failing
//! its own requests.

use serde::{Deserialize, Serialize};

/// Status codes counted one by one; every other 4xx or 5xx is counted only in its class.
pub const TRACKED_CODES: [u16; 17] = [
    400, 401, 403, 404, 405, 408, 409, 410, 413, 415, 422, 429, 500, 501, 502, 503, 504,
];

/// Index of `code` in [`TRACKED_CODES`].
pub fn tracked_index(code: u16) -> Option<usize> {
    TRACKED_CODES.iter().position(|c| *c == code)
}

/// Why a request failed on the client's side. None of these counts against a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientFault {
    /// The request could not be read: an invalid chunk size, a broken framing. Answered 400.
    Malformed,
    /// The client went away before its request was complete (an aborted upload). Logged as 499,
    /// nginx's code for it; the client is gone and gets no answer.
    Aborted,
    /// The client sent its request too slowly to finish in time. Answered 408.
    TooSlow,
    /// The request body was over the app's limit. Answered 413.
    TooLarge,
}

impl ClientFault {
    pub const ALL: [ClientFault; 4] = [
        ClientFault::Malformed,
        ClientFault::Aborted,
        ClientFault::TooSlow,
        ClientFault::TooLarge,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The status logged (and, where the client still listens, sent).
    pub fn status(self) -> u16 {
        match self {
            ClientFault::Malformed => 400,
            ClientFault::Aborted => 499,
            ClientFault::TooSlow => 408,
            ClientFault::TooLarge => 413,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientFault::Malformed => "malformed",
            ClientFault::Aborted => "aborted",
            ClientFault::TooSlow => "too_slow",
            ClientFault::TooLarge => "too_large",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_codes_are_sorted_failures() {
        assert!(TRACKED_CODES.windows(2).all(|w| w[0] < w[1]));
        assert!(TRACKED_CODES.iter().all(|c| (400..600).contains(c)));
        assert_eq!(tracked_index(401), Some(1));
        assert_eq!(tracked_index(418), None);
        for (i, f) in ClientFault::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
    }
}
